package e2e

import (
	"net"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestIPv6 (dual-stack node): an IPv6 Service works through its ClusterIP
// from a pod (not masqueraded) and through its NodePort from outside
// (masqueraded), with the IPv6 proxier next to the IPv4 one.
func TestIPv6(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ipv6"}, Spec: v1.ServiceSpec{
		Type:           v1.ServiceTypeNodePort,
		IPFamilyPolicy: ptr.To(v1.IPFamilyPolicySingleStack),
		IPFamilies:     []v1.IPFamily{v1.IPv6Protocol},
	}})
	var eps []discovery.Endpoint
	for _, p := range backends {
		eps = append(eps, readyEndpoint(p.IP6, harness.NodeName))
	}
	c.writeSlice(svc, discovery.AddressTypeIPv6, eps)
	if net.ParseIP(svc.Spec.ClusterIP).To4() != nil {
		t.Fatalf("ClusterIP %s is not IPv6", svc.Spec.ClusterIP)
	}
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("IPv6 ClusterIP from a pod", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: clusterIP, Count: 30})
		if m := landed(rs, backends, client.IP6, ""); m != "" {
			return m
		}
		return allReached(rs, backends)
	})
	t.Logf("RESULT IPv6 ClusterIP %s from pod %s: %s, source kept", clusterIP, client.IP6, harness.FormatTally(harness.Tally(rs)))

	nodePort := net.JoinHostPort(harness.NodeIP6, strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
	c.eventually("IPv6 NodePort from outside", func() string {
		var err error
		rs, err = env.ExternalConnect(c.ctx, harness.ClientOptions{Proto: "tcp", Target: nodePort, Count: 30, Timeout: time.Second})
		if err != nil {
			return err.Error()
		}
		if m := landed(rs, backends, "", harness.GatewayIP6); m != "" {
			return m
		}
		return allReached(rs, backends)
	})
	t.Logf("RESULT IPv6 NodePort %s from outside (%s): %s, seen from %s (masqueraded)", nodePort, harness.GatewayIP6, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

// TestTopologyHints: with the node in zone-a (its Node label, read by
// svcproxy's Node informer), endpoints hinted for zone-a take the traffic;
// when no endpoint is hinted for zone-a, all endpoints do.
func TestTopologyHints(t *testing.T) {
	c := begin(t, true)
	nodes := env.Client.CoreV1().Nodes()
	setZone := func(zone string) {
		n, err := nodes.Get(c.ctx, harness.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if zone == "" {
			delete(n.Labels, v1.LabelTopologyZone)
		} else {
			n.Labels[v1.LabelTopologyZone] = zone
		}
		if _, err := nodes.Update(c.ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setZone("zone-a")
	t.Cleanup(func() { setZone("") })
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "topology"}, Spec: v1.ServiceSpec{
		TrafficDistribution: ptr.To(v1.ServiceTrafficDistributionPreferClose)}})
	writeSlice := func(zones ...string) {
		var eps []discovery.Endpoint
		for i, p := range backends {
			e := readyEndpoint(p.IP, otherNode)
			e.Zone = ptr.To(zones[i])
			e.Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: zones[i]}}}
			eps = append(eps, e)
		}
		c.writeSlice(svc, discovery.AddressTypeIPv4, eps)
	}
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	writeSlice("zone-a", "zone-b", "zone-b")
	var rs []harness.Reply
	c.eventually("only the zone-a endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 20})
		return landed(rs, backends[:1], client.IP, "")
	})
	t.Logf("RESULT node in zone-a, a hinted zone-a, b and c zone-b: %s", harness.FormatTally(harness.Tally(rs)))
	writeSlice("zone-b", "zone-b", "zone-c")
	c.eventually("all endpoints when none is hinted for zone-a", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		if m := landed(rs, backends, client.IP, ""); m != "" {
			return m
		}
		return allReached(rs, backends)
	})
	t.Logf("RESULT no endpoint hinted for zone-a: %s", harness.FormatTally(harness.Tally(rs)))
}

func readyEndpoint(ip, node string) discovery.Endpoint {
	return discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node),
		Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}
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
