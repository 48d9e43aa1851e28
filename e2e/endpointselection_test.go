package e2e

import (
	"net"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Which endpoints take a Service port's traffic: readiness and the
// terminating fallback, internalTrafficPolicy Local, topology hints.

func TestTerminatingFallback(t *testing.T) {
	c := begin(t)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService("terminating", v1.ServiceSpec{})
	c.slice(svc,
		harness.Endpoint{IP: a.IP, NotReady: true},
		harness.Endpoint{IP: b.IP, Terminating: true},
		harness.Endpoint{IP: cc.IP, Terminating: true})
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("serving terminating endpoints take the traffic", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		return exactly(rs, []*harness.Pod{b, cc}, client.IP, "")
	})
	t.Logf("RESULT no ready endpoint, b and c serving+terminating, a not serving: %s", harness.FormatTally(harness.Tally(rs)))
	// A ready endpoint takes over from the terminating ones.
	c.slice(svc, harness.Endpoint{IP: a.IP}, harness.Endpoint{IP: b.IP, Terminating: true})
	c.eventually("a ready endpoint is preferred", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 20})
		return landed(rs, []*harness.Pod{a}, client.IP, "")
	})
}

// itpLocalService creates an internalTrafficPolicy Local Service with one
// endpoint on this node (returned) and two on the other; dropLocal leaves
// it the other node's endpoints only.
func (c *tc) itpLocalService(name string) (svc *v1.Service, local *harness.Pod, dropLocal func()) {
	a, b, cc := backends[0], backends[1], backends[2]
	svc = c.createService(name, v1.ServiceSpec{
		InternalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyLocal)})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	return svc, a, func() { c.slice(svc, at(b, otherNode), at(cc, otherNode)) }
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	c := begin(t)
	svc, a, dropLocal := c.itpLocalService("itp-local")
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("internalTrafficPolicy Local: local endpoint only", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 20})
		return landed(rs, []*harness.Pod{a}, client.IP, "")
	})
	t.Logf("RESULT ITP Local: %s", harness.FormatTally(harness.Tally(rs)))
	dropLocal()
	c.eventually("internalTrafficPolicy Local without local endpoints: dropped", func() string {
		return allTimedOut(c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 2, Timeout: 500 * time.Millisecond}))
	})
}

// TestTopologyHints: with the node in zone-a (its Node label, read by
// svcproxy's Node informer), endpoints hinted for zone-a take the traffic;
// when no endpoint is hinted for zone-a, all endpoints do.
func TestTopologyHints(t *testing.T) {
	c := begin(t)
	c.setZone("zone-a")
	svc := c.createService("topology", v1.ServiceSpec{
		TrafficDistribution: ptr.To(v1.ServiceTrafficDistributionPreferClose)})
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
		return exactly(rs, backends, client.IP, "")
	})
	t.Logf("RESULT no endpoint hinted for zone-a: %s", harness.FormatTally(harness.Tally(rs)))
}

// TestTopologyNodeHints: trafficDistribution PreferSameNode, as kube-proxy
// applies it (topologyModeFromHints, PreferSameTrafficDistribution on by
// default in 1.36): only ready endpoints count; when every one carries node
// hints and at least one names this node, cluster traffic goes only to the
// endpoints hinted for this node; otherwise zone hints are tried the same
// way, and failing that every endpoint is used.
func TestTopologyNodeHints(t *testing.T) {
	c := begin(t)
	a, b, cc := backends[0], backends[1], backends[2]
	me, other := harness.NodeName, harness.Node2Name
	svc := c.createService("node-hints", v1.ServiceSpec{
		TrafficDistribution: ptr.To(v1.ServiceTrafficDistributionPreferSameNode)})
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	notServing := func(ip string) discovery.Endpoint {
		e := readyEndpoint(ip, other)
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
		return e
	}
	terminating := func(ip, node string, forNodes []string) discovery.Endpoint {
		e := hintedEndpoint(ip, node, forNodes, nil)
		e.Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
		return e
	}
	step := func(what string, eps []discovery.Endpoint, want ...*harness.Pod) {
		t.Helper()
		c.writeSlice(svc, discovery.AddressTypeIPv4, eps)
		es, err := env.Client.DiscoveryV1().EndpointSlices(svc.Namespace).Get(c.ctx, harness.SliceName(svc.Name), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range es.Endpoints {
			if eps[i].Hints != nil && (e.Hints == nil || len(e.Hints.ForNodes) != len(eps[i].Hints.ForNodes)) {
				t.Fatalf("the API server dropped the node hints of %v (feature gate off?): %+v", e.Addresses, e.Hints)
			}
		}
		c.waitDNATs(svc, "tcp", want...)
		rs := c.connect(client, harness.ClientOptions{Target: target, Count: 10 * len(want)})
		if m := exactly(rs, want, client.IP, ""); m != "" {
			t.Errorf("%s: want exactly %v: %s", what, names(want), m)
		}
		t.Logf("RESULT %s: %s", what, harness.FormatTally(harness.Tally(rs)))
	}
	step("a, b hinted for this node, c for node-2",
		[]discovery.Endpoint{hintedEndpoint(a.IP, me, []string{me}, nil), hintedEndpoint(b.IP, other, []string{me}, nil), hintedEndpoint(cc.IP, other, []string{other}, nil)},
		a, b)
	step("c has no node hint (incomplete hints): no node filtering",
		[]discovery.Endpoint{hintedEndpoint(a.IP, me, []string{me}, nil), hintedEndpoint(b.IP, other, []string{me}, nil), readyEndpoint(cc.IP, other)},
		a, b, cc)
	step("every endpoint hinted for node-2 only: no hint for this node, no filtering",
		[]discovery.Endpoint{hintedEndpoint(a.IP, me, []string{other}, nil), hintedEndpoint(b.IP, other, []string{other}, nil), hintedEndpoint(cc.IP, other, []string{other}, nil)},
		a, b, cc)
	step("only ready endpoints count: a hinted here, b for node-2, c not serving and unhinted",
		[]discovery.Endpoint{hintedEndpoint(a.IP, me, []string{me}, nil), hintedEndpoint(b.IP, other, []string{other}, nil), notServing(cc.IP)},
		a)
	step("a terminating and hinted here, b and c ready and hinted for node-2: the ready ones, unfiltered",
		[]discovery.Endpoint{terminating(a.IP, me, []string{me}), hintedEndpoint(b.IP, other, []string{other}, nil), hintedEndpoint(cc.IP, other, []string{other}, nil)},
		b, cc)

	// Fallback to zone hints: the node in zone-a, node hints incomplete,
	// zone hints complete.
	c.setZone("zone-a")
	step("node in zone-a; a hinted node-1/zone-a, b zone-a only, c node-2/zone-b: node hints incomplete, zone hints used",
		[]discovery.Endpoint{
			hintedEndpoint(a.IP, me, []string{me}, []string{"zone-a"}),
			hintedEndpoint(b.IP, other, nil, []string{"zone-a"}),
			hintedEndpoint(cc.IP, other, []string{other}, []string{"zone-b"})},
		a, b)
	step("node in zone-a; complete node and zone hints: node hints win over zone hints",
		[]discovery.Endpoint{
			hintedEndpoint(a.IP, me, []string{other}, []string{"zone-a"}),
			hintedEndpoint(b.IP, other, []string{me}, []string{"zone-a"}),
			hintedEndpoint(cc.IP, other, []string{other}, []string{"zone-b"})},
		b)
}

// TestTopologyNodeHintsLocalPolicy: hints filter only the cluster set
// (kube-proxy applies topology to Cluster-policy endpoints only): under
// externalTrafficPolicy Local, external traffic goes to the local endpoint
// even though its hint names another node, while pod traffic to the
// ClusterIP follows the hints.
func TestTopologyNodeHintsLocalPolicy(t *testing.T) {
	c := begin(t)
	a, b, cc := backends[0], backends[1], backends[2]
	me, other := harness.NodeName, harness.Node2Name
	svc := c.createService("node-hints-local", v1.ServiceSpec{
		Type: v1.ServiceTypeNodePort, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
		TrafficDistribution: ptr.To(v1.ServiceTrafficDistributionPreferSameNode)})
	c.writeSlice(svc, discovery.AddressTypeIPv4, []discovery.Endpoint{
		hintedEndpoint(a.IP, me, []string{other}, nil),
		hintedEndpoint(b.IP, other, []string{me}, nil),
		hintedEndpoint(cc.IP, other, []string{other}, nil)})
	var rs []harness.Reply
	c.eventually("external traffic to the local endpoint, hints ignored", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
		return landed(rs, []*harness.Pod{a}, harness.ExtAllowedIP, "")
	})
	t.Logf("RESULT ETP Local, a local but hinted for node-2, b remote hinted for node-1: external to NodePort %s", harness.FormatTally(harness.Tally(rs)))
	rs = c.connect(client, harness.ClientOptions{Target: net.JoinHostPort(svc.Spec.ClusterIP, "80"), Count: 20})
	if m := exactly(rs, []*harness.Pod{b}, client.IP, ""); m != "" {
		t.Errorf("pod to ClusterIP: want only b (hinted for this node): %s", m)
	}
	t.Logf("RESULT same Service, pod to ClusterIP: %s (cluster set filtered by node hints)", harness.FormatTally(harness.Tally(rs)))
}
