package e2e

import (
	"context"
	"net"
	"sort"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Helpers that make a test's Services and EndpointSlices, and what some
// tests need around them (routes from outside, the node's zone, a pod on
// the second node); all of it goes when the test ends.

// service creates a ClusterIP Service with ports. Given pods, it writes an
// EndpointSlice of ready endpoints at them and waits until every port
// DNATs to exactly them.
func (c *tc) service(namespace, name string, ports []harness.Port, pods ...*harness.Pod) *v1.Service {
	c.Helper()
	svc := c.create(harness.NewService(namespace, name, ports...))
	if len(pods) > 0 {
		c.endpoints(svc, pods...)
		for _, p := range svc.Spec.Ports {
			c.waitDNATs(svc, p.Name, pods...)
		}
	}
	return svc
}

// createService creates a Service called name with spec (harness.TCP
// unless it has ports) in namespace "features", and deletes it and its
// EndpointSlice when the test ends.
func (c *tc) createService(name string, spec v1.ServiceSpec) *v1.Service {
	c.Helper()
	if len(spec.Ports) == 0 {
		spec.Ports = ports(harness.TCP)
	}
	return c.create(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "features", Name: name}, Spec: spec})
}

// create creates svc (and its namespace) and deletes it and its
// EndpointSlice when the test ends.
func (c *tc) create(svc *v1.Service) *v1.Service {
	c.Helper()
	if err := env.EnsureNamespace(c.ctx, svc.Namespace); err != nil {
		c.Fatal(err)
	}
	created, err := env.Client.CoreV1().Services(svc.Namespace).Create(c.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		c.Fatalf("create Service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	c.deleteAtEnd(created)
	return created
}

// deleteAtEnd logs svc's addresses, and deletes it and its EndpointSlice
// when the test ends (after the node's state is logged, if it failed).
func (c *tc) deleteAtEnd(svc *v1.Service) {
	c.Helper()
	c.Logf("Service %s/%s: ClusterIP %s, NodePort %d, health-check node port %d", svc.Namespace, svc.Name,
		svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort, svc.Spec.HealthCheckNodePort)
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteService(ctx, svc.Namespace, svc.Name); err != nil {
			c.Errorf("delete Service %s/%s: %v", svc.Namespace, svc.Name, err)
		}
	})
}

// update writes svc's new spec.
func (c *tc) update(svc *v1.Service) *v1.Service {
	c.Helper()
	updated, err := env.Client.CoreV1().Services(svc.Namespace).Update(c.ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		c.Fatalf("update Service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return updated
}

// setIngress writes svc's load-balancer ingress points into its status,
// as a cloud provider's controller would.
func (c *tc) setIngress(svc *v1.Service, ingress ...v1.LoadBalancerIngress) *v1.Service {
	c.Helper()
	svc.Status.LoadBalancer.Ingress = ingress
	updated, err := env.Client.CoreV1().Services(svc.Namespace).UpdateStatus(c.ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		c.Fatalf("ingress of Service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return updated
}

// ports are the Service ports of harness port shorthands (harness.TCP,
// harness.UDP).
func ports(ps ...harness.Port) []v1.ServicePort {
	return harness.NewService("", "", ps...).Spec.Ports
}

// endpoints writes the Service's EndpointSlice with ready endpoints at
// pods.
func (c *tc) endpoints(svc *v1.Service, pods ...*harness.Pod) {
	c.Helper()
	if _, err := env.SetEndpoints(c.ctx, svc, ips(pods)...); err != nil {
		c.Fatalf("write EndpointSlice of %s/%s: %v", svc.Namespace, svc.Name, err)
	}
}

// otherNode is where an EndpointSlice may place a pod of this node's
// bridge: svcproxy decides locality from the slice alone, so such an
// endpoint is remote to it while still answering.
const otherNode = "node-2"

// slice writes the Service's EndpointSlice.
func (c *tc) slice(svc *v1.Service, eps ...harness.Endpoint) {
	c.Helper()
	if _, err := env.SetEndpointSlice(c.ctx, svc, eps); err != nil {
		c.Fatalf("write EndpointSlice of %s: %v", svc.Name, err)
	}
}

func at(p *harness.Pod, node string) harness.Endpoint {
	return harness.Endpoint{IP: p.IP, NodeName: node}
}

// atNode is a ready endpoint on node for each of pods.
func atNode(node string, pods ...*harness.Pod) []harness.Endpoint {
	eps := make([]harness.Endpoint, len(pods))
	for i, p := range pods {
		eps[i] = at(p, node)
	}
	return eps
}

// removeEndpoint takes backend name out of svc's EndpointSlice (its server
// still running), leaving the other backends on this node, and waits until
// port DNATs to exactly those; it returns them.
func (c *tc) removeEndpoint(svc *v1.Service, port, name string) []*harness.Pod {
	c.Helper()
	rest := except(backends, name)
	c.slice(svc, atNode(harness.NodeName, rest...)...)
	c.waitDNATs(svc, port, rest...)
	return rest
}

// except is pods without the one called name.
func except(pods []*harness.Pod, name string) []*harness.Pod {
	var out []*harness.Pod
	for _, p := range pods {
		if p.Name != name {
			out = append(out, p)
		}
	}
	return out
}

func readyEndpoint(ip, node string) discovery.Endpoint {
	return discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node),
		Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}
}

// hintedEndpoint is a ready endpoint on node with topology hints.
func hintedEndpoint(ip, node string, forNodes, forZones []string) discovery.Endpoint {
	e := readyEndpoint(ip, node)
	if len(forNodes) > 0 || len(forZones) > 0 {
		e.Hints = &discovery.EndpointHints{}
		for _, n := range forNodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: n})
		}
		for _, z := range forZones {
			e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: z})
		}
	}
	return e
}

// writeSlice creates or replaces the Service's EndpointSlice (named as
// harness.SetEndpointSlice names it, so the test's cleanup deletes it) with
// one "tcp" port at the echo port.
func (c *tc) writeSlice(svc *v1.Service, typ discovery.AddressType, eps []discovery.Endpoint) {
	c.Helper()
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: harness.SliceName(svc.Name), Namespace: svc.Namespace,
			Labels: map[string]string{discovery.LabelServiceName: svc.Name, discovery.LabelManagedBy: "svcproxy-e2e"}},
		AddressType: typ,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("tcp"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](harness.EchoPort)}},
		Endpoints:   eps,
	}
	if _, err := env.ApplyEndpointSlice(c.ctx, es); err != nil {
		c.Fatalf("write EndpointSlice of %s: %v", svc.Name, err)
	}
}

// routeToNode makes the outside network send traffic for each of ips (an
// external or load-balancer IP) to the node, as a load balancer would.
func (c *tc) routeToNode(ips ...string) {
	c.Helper()
	for _, ip := range ips {
		if err := env.RouteToNode(c.ctx, ip); err != nil {
			c.Fatal(err)
		}
	}
}

// remotePod adds a pod, running the echo server, on the second node.
func (c *tc) remotePod(name string) *harness.Pod {
	c.Helper()
	p, err := env.AddRemotePod(c.ctx, name)
	if err != nil {
		c.Fatalf("remote pod %s: %v", name, err)
	}
	return p
}

// setZone puts this node in a topology zone (its Node label, which
// svcproxy reads) until the test ends.
func (c *tc) setZone(zone string) {
	c.Helper()
	label := func(ctx context.Context, zone string) error {
		nodes := env.Client.CoreV1().Nodes()
		n, err := nodes.Get(ctx, harness.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if zone == "" {
			delete(n.Labels, v1.LabelTopologyZone)
		} else {
			n.Labels[v1.LabelTopologyZone] = zone
		}
		_, err = nodes.Update(ctx, n, metav1.UpdateOptions{})
		return err
	}
	if err := label(c.ctx, zone); err != nil {
		c.Fatalf("put node %s in zone %s: %v", harness.NodeName, zone, err)
	}
	c.Cleanup(func() {
		if err := label(context.Background(), ""); err != nil {
			c.Errorf("remove the zone label: %v", err)
		}
	})
}

func target(svc *v1.Service, port int32) string {
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(port)))
}

// nodePortTarget is the Service's first NodePort on the node's address.
func nodePortTarget(svc *v1.Service) string {
	return nodePortOn(harness.NodeIP, svc)
}

// nodePortOn is the Service's first NodePort on address ip.
func nodePortOn(ip string, svc *v1.Service) string {
	return net.JoinHostPort(ip, strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
}

func ips(pods []*harness.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.IP
	}
	return out
}

func names(pods []*harness.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.Name
	}
	sort.Strings(out)
	return out
}
