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
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Helpers that make the Services and EndpointSlices of a test and delete
// them when it ends.

// service creates a ClusterIP Service with an EndpointSlice of ready
// endpoints at the given pods (none: an empty slice; pods == nil and
// noSlice: no slice at all), and deletes both when the test ends.
func (c *tc) service(namespace, name string, ports []harness.Port, pods ...*harness.Pod) *v1.Service {
	c.Helper()
	svc, err := env.CreateService(c.ctx, namespace, name, ports...)
	if err != nil {
		c.Fatalf("create Service %s/%s: %v", namespace, name, err)
	}
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteService(ctx, namespace, name); err != nil {
			c.Errorf("delete Service %s/%s: %v", namespace, name, err)
		}
	})
	c.Logf("Service %s/%s has ClusterIP %s", namespace, name, svc.Spec.ClusterIP)
	return svc
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

// createService creates svc (a Service of the "features" namespace) and
// deletes it and its EndpointSlice when the test ends.
func (c *tc) createService(svc *v1.Service) *v1.Service {
	c.Helper()
	svc.Namespace = "features"
	if err := env.EnsureNamespace(c.ctx, svc.Namespace); err != nil {
		c.Fatal(err)
	}
	if len(svc.Spec.Ports) == 0 {
		svc.Spec.Ports = []v1.ServicePort{{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}}
	}
	created, err := env.Client.CoreV1().Services(svc.Namespace).Create(c.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		c.Fatalf("create Service %s: %v", svc.Name, err)
	}
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteService(ctx, svc.Namespace, svc.Name); err != nil {
			c.Errorf("delete Service %s: %v", svc.Name, err)
		}
	})
	c.Logf("Service %s/%s: ClusterIP %s, NodePort %d, health-check node port %d", created.Namespace, created.Name,
		created.Spec.ClusterIP, created.Spec.Ports[0].NodePort, created.Spec.HealthCheckNodePort)
	return created
}

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
	slices := env.Client.DiscoveryV1().EndpointSlices(svc.Namespace)
	old, err := slices.Get(c.ctx, es.Name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = slices.Update(c.ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = slices.Create(c.ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		c.Fatalf("write EndpointSlice of %s: %v", svc.Name, err)
	}
}

func target(svc *v1.Service, port int32) string {
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(port)))
}

func nodePortTarget(svc *v1.Service) string {
	return net.JoinHostPort(harness.NodeIP, strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
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
