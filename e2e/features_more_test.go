package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// More Service features with real traffic (issue 3): the local
// serving-terminating fallback, node topology hints, session affinity
// expiry, conntrack cleanup for UDP services going from 0 to N endpoints
// and for NodePort flows, the forward chain's conntrack-INVALID drop, and
// the order of the jumps into the built-in chains.

// TestETPLocalTerminatingFallback: under externalTrafficPolicy Local the
// local set falls back to local serving-terminating endpoints separately
// from the cluster set (kube-proxy's CategorizeEndpoints). With the only
// local endpoint serving+terminating and the remote ones ready, external
// traffic still reaches the local terminating endpoint (source kept),
// while pod traffic to the ClusterIP goes to the ready remote endpoints
// only. The health check counts only local ready endpoints (503).
func TestETPLocalTerminatingFallback(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "etp-local-term"}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal}})
	c.slice(svc,
		harness.Endpoint{IP: a.IP, NodeName: harness.NodeName, Terminating: true},
		at(b, otherNode), at(cc, otherNode))
	var rs []harness.Reply
	c.eventually("external traffic reaches the local serving-terminating endpoint", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 20, time.Second)
		return landed(rs, []*harness.Pod{a}, harness.ExtAllowedIP, "")
	})
	t.Logf("RESULT ETP Local, only local endpoint serving+terminating, remote ready: external to NodePort %s, source %s (not masqueraded)",
		harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	// The cluster set has ready endpoints: the terminating one is not used.
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	rs = c.connect(client, harness.ClientOptions{Target: clusterIP, Count: 30})
	if m := exactly(rs, []*harness.Pod{b, cc}, client.IP); m != "" {
		t.Errorf("pod to ClusterIP: want only the ready remote endpoints b and c: %s", m)
	}
	t.Logf("RESULT same Service, pod to ClusterIP: %s (ready endpoints only)", harness.FormatTally(harness.Tally(rs)))
	// Pods and the node itself reaching the NodePort are short-circuited to
	// the cluster set (kube-proxy's EXT chain: pod traffic and LOCAL
	// traffic go to KUBE-SVC), so not to the terminating endpoint either.
	rs = c.connect(client, harness.ClientOptions{Target: nodePortTarget(svc), Count: 30})
	if m := exactly(rs, []*harness.Pod{b, cc}, ""); m != "" {
		t.Errorf("pod to NodePort: want the cluster set b and c: %s", m)
	}
	rs2 := c.connectFrom(env.Node, nodePortTarget(svc), 30, time.Second)
	if m := exactly(rs2, []*harness.Pod{b, cc}, ""); m != "" {
		t.Errorf("node to NodePort: want the cluster set b and c: %s", m)
	}
	t.Logf("RESULT same Service, pod to NodePort: %s; node to NodePort: %s (short-circuited to the cluster set)",
		harness.FormatTally(harness.Tally(rs)), harness.FormatTally(harness.Tally(rs2)))

	// Health check: a terminating endpoint is not a local ready one.
	hc := fmt.Sprintf("http://%s:%d/", harness.NodeIP, svc.Spec.HealthCheckNodePort)
	c.eventually("health check counts no local ready endpoint", func() string {
		code, body, err := env.NodeHTTPGet(c.ctx, hc)
		if err != nil {
			return err.Error()
		}
		var got struct {
			LocalEndpoints *int `json:"localEndpoints"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil || code != 503 || got.LocalEndpoints == nil || *got.LocalEndpoints != 0 {
			return fmt.Sprintf("%d %s", code, strings.Join(strings.Fields(body), " "))
		}
		t.Logf("RESULT health check with only a terminating local endpoint: %d %s", code, strings.Join(strings.Fields(body), " "))
		return ""
	})

	// The fallback is to serving endpoints only: once the local one stops
	// serving, external traffic is dropped; pods still reach b and c.
	c.slice(svc,
		harness.Endpoint{IP: a.IP, NodeName: harness.NodeName, Terminating: true, NotReady: true},
		at(b, otherNode), at(cc, otherNode))
	c.eventually("external traffic dropped when the local endpoint stops serving", func() string {
		return allTimedOut(c.external(harness.ExtAllowedIP, nodePortTarget(svc), 2, 500*time.Millisecond))
	})
	rs = c.connect(client, harness.ClientOptions{Target: clusterIP, Count: 20})
	if m := exactly(rs, []*harness.Pod{b, cc}, client.IP); m != "" {
		t.Errorf("pod to ClusterIP after the local endpoint stopped serving: %s", m)
	}
	t.Logf("RESULT local endpoint terminating and not serving: external traffic dropped, pods %s", harness.FormatTally(harness.Tally(rs)))
}

// TestTopologyNodeHints: trafficDistribution PreferSameNode, as kube-proxy
// applies it (topologyModeFromHints, PreferSameTrafficDistribution on by
// default in 1.36): only ready endpoints count; when every one carries node
// hints and at least one names this node, cluster traffic goes only to the
// endpoints hinted for this node; otherwise zone hints are tried the same
// way, and failing that every endpoint is used.
func TestTopologyNodeHints(t *testing.T) {
	c := begin(t, true)
	a, b, cc := backends[0], backends[1], backends[2]
	me, other := harness.NodeName, harness.Node2Name
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "node-hints"}, Spec: v1.ServiceSpec{
		TrafficDistribution: ptr.To(v1.ServiceTrafficDistributionPreferSameNode)}})
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
		if m := exactly(rs, want, client.IP); m != "" {
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
	nodes := env.Client.CoreV1().Nodes()
	setZone := func(ctx context.Context, zone string) error {
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
	if err := setZone(c.ctx, "zone-a"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := setZone(context.Background(), ""); err != nil {
			t.Errorf("remove the zone label: %v", err)
		}
	})
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
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	a, b, cc := backends[0], backends[1], backends[2]
	me, other := harness.NodeName, harness.Node2Name
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "node-hints-local"}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeNodePort, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
		TrafficDistribution: ptr.To(v1.ServiceTrafficDistributionPreferSameNode)}})
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
	if m := exactly(rs, []*harness.Pod{b}, client.IP); m != "" {
		t.Errorf("pod to ClusterIP: want only b (hinted for this node): %s", m)
	}
	t.Logf("RESULT same Service, pod to ClusterIP: %s (cluster set filtered by node hints)", harness.FormatTally(harness.Tally(rs)))
}

// TestSessionAffinityTimeout: ClientIP affinity with timeoutSeconds 2 (the
// API allows 1..86400). Connections keep landing on one endpoint while
// each comes within the timeout of the previous one (kube-proxy refreshes
// the entry on every new connection: recent --set / nft update); after the
// client is idle longer than the timeout the affinity is gone and
// connections land anywhere.
func TestSessionAffinityTimeout(t *testing.T) {
	c := begin(t, true)
	const timeout = 2 * time.Second
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity-timeout"}, Spec: v1.ServiceSpec{
		Ports: []v1.ServicePort{
			{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)},
			{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}},
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(timeout / time.Second))}}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], otherNode))
	c.waitDNATs(svc, "tcp", backends...)
	c.waitDNATs(svc, "udp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	// UDP: every attempt is a new socket with its own source port, so a
	// new conntrack flow: only affinity keeps it on one endpoint.
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			c := &tc{T: t, ctx: c.ctx, start: time.Now()}
			var rs []harness.Reply
			c.eventually("ClientIP affinity: one endpoint", func() string {
				rs = c.connect(client, harness.ClientOptions{Proto: proto, Target: target, Count: 10})
				if m := landed(rs, backends, client.IP, ""); m != "" {
					return m
				}
				if only(rs) == "" {
					return "spread over " + harness.FormatTally(harness.Tally(rs))
				}
				return ""
			})
			pinned := only(rs)
			// 6 attempts 700ms apart: 3.5s in all, longer than the
			// timeout, but never idle for as long.
			rs = c.connect(client, harness.ClientOptions{Proto: proto, Target: target, Count: 6, Interval: 700 * time.Millisecond})
			if only(rs) != pinned {
				t.Errorf("attempts 700ms apart (timeout %v) left %s: %s", timeout, pinned, harness.FormatTally(harness.Tally(rs)))
			}
			t.Logf("RESULT %s affinity timeout %v: 10 back-to-back attempts and 6 more 700ms apart all to %s", proto, timeout, pinned)

			// Idle longer than the timeout, then one attempt, a few times:
			// with 3 endpoints, all of up to 8 landing on the pinned one
			// has probability (1/3)^8 < 2e-4 when the affinity expires.
			got := []string{pinned}
			moved := func() bool { return slices.ContainsFunc(got, func(s string) bool { return s != pinned }) }
			for round := 0; round < 8 && !moved(); round++ {
				time.Sleep(timeout + 600*time.Millisecond)
				r := c.connect(client, harness.ClientOptions{Proto: proto, Target: target, Count: 1})
				if m := landed(r, backends, client.IP, ""); m != "" {
					t.Fatalf("after %v idle: %s", timeout+600*time.Millisecond, m)
				}
				got = append(got, r[0].Backend)
			}
			if !moved() {
				t.Errorf("after idling longer than the %v timeout, %d attempts all still went to %s: affinity never expired", timeout, len(got)-1, pinned)
			}
			t.Logf("RESULT %s after idling %v before each attempt: %v (affinity expired)", proto, timeout+600*time.Millisecond, got[1:])
		})
	}
}

// TestSessionAffinityEndpointRemoved: a client pinned by ClientIP affinity
// (long timeout) to endpoint X moves to another endpoint when X leaves the
// EndpointSlice (its server still running), is pinned there, and stays
// there when X comes back: the affinity to X went with X (kube-proxy
// deletes X's KUBE-SEP chain and its recent list, or its affinity set).
func TestSessionAffinityEndpointRemoved(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity-removed"}, Spec: v1.ServiceSpec{
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}}})
	all := func() []harness.Endpoint {
		return []harness.Endpoint{at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], otherNode)}
	}
	c.slice(svc, all()...)
	c.waitDNATs(svc, "tcp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	pinnedTo := func(pods []*harness.Pod) (string, string) {
		rs := c.connect(client, harness.ClientOptions{Target: target, Count: 10})
		if m := landed(rs, pods, client.IP, ""); m != "" {
			return "", m
		}
		if only(rs) == "" {
			return "", "spread over " + harness.FormatTally(harness.Tally(rs))
		}
		return only(rs), ""
	}
	var x string
	c.eventually("pinned", func() (m string) { x, m = pinnedTo(backends); return m })
	var rest []*harness.Pod
	var eps []harness.Endpoint
	for _, p := range backends {
		if p.Name != x {
			rest = append(rest, p)
			eps = append(eps, at(p, harness.NodeName))
		}
	}
	c.slice(svc, eps...)
	c.waitDNATs(svc, "tcp", rest...)
	y, m := pinnedTo(rest)
	if m != "" {
		t.Fatalf("after %s left the slice: %s", x, m)
	}
	c.slice(svc, all()...)
	c.waitDNATs(svc, "tcp", backends...)
	z, m := pinnedTo(backends)
	if m != "" || z != y {
		t.Errorf("after %s came back: want still pinned to %s, got %s%s", x, y, z, m)
	}
	t.Logf("RESULT affinity (300s): pinned to %s; %s removed -> pinned to %s; %s back -> %s", x, x, y, x, z)
}

// TestSessionAffinityAcrossAddresses: kube-proxy keys ClientIP affinity by
// the client's IP per service port and endpoint (iptables: one recent list
// per KUBE-SEP chain, reached from the ClusterIP and the NodePort alike;
// upstream nftables: one affinity set per endpoint chain, matched on ip
// saddr in the service chain that every address of the Service port goes
// to; svcproxy's nftables mode: the entry written under every address of
// the Service port). So a client pinned through the ClusterIP lands on the
// same endpoint through the NodePort.
func TestSessionAffinityAcrossAddresses(t *testing.T) {
	c := begin(t, true)
	const timeout = 2 * time.Second
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity-shared"}, Spec: v1.ServiceSpec{
		Type:                  v1.ServiceTypeNodePort,
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(timeout / time.Second))}}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], otherNode))
	c.waitDNATs(svc, "tcp", backends...)
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	nodePort := nodePortTarget(svc)
	c.eventually("NodePort answers", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: nodePort, Count: 1}), backends, "", "")
	})
	// Each round starts after the affinity expired: the ClusterIP picks at
	// random, the NodePort must follow. A NodePort with its own affinity
	// would match all 5 rounds with probability (1/3)^5 < 0.5%.
	var pairs []string
	for round := 0; round < 5; round++ {
		time.Sleep(timeout + 600*time.Millisecond)
		viaCIP := c.connect(client, harness.ClientOptions{Target: clusterIP, Count: 1})
		viaNP := c.connect(client, harness.ClientOptions{Target: nodePort, Count: 3})
		if m := landed(append(viaCIP, viaNP...), backends, "", ""); m != "" {
			t.Fatalf("round %d: %s", round, m)
		}
		pairs = append(pairs, viaCIP[0].Backend+"->"+harness.FormatTally(harness.Tally(viaNP)))
		if only(viaNP) != viaCIP[0].Backend {
			t.Errorf("round %d: pinned to %s through the ClusterIP, but the NodePort went to %s (kube-proxy shares ClientIP affinity across the Service port's addresses)",
				round, viaCIP[0].Backend, harness.FormatTally(harness.Tally(viaNP)))
		}
	}
	t.Logf("RESULT affinity ClusterIP -> NodePort per round: %v", pairs)
}

// TestSessionAffinityHostEndpoint: ClientIP affinity also holds for an
// endpoint on the host network (the node's own IP: its connections are
// delivered to the node, not forwarded). kube-proxy records affinity where
// it DNATs (recent --set / nft update in the endpoint chain), whatever the
// endpoint is.
func TestSessionAffinityHostEndpoint(t *testing.T) {
	c := begin(t, true)
	const timeout = 2 * time.Second
	host, err := env.StartProcess(env.Node, "echo-host", env.Bins.Echo, "serve", "--name", "host", "--port", strconv.Itoa(harness.EchoPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Stop(syscall.SIGTERM, 5*time.Second) })
	a := backends[0]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity-host"}, Spec: v1.ServiceSpec{
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(timeout / time.Second))}}}})
	c.writeSlice(svc, discovery.AddressTypeIPv4, []discovery.Endpoint{readyEndpoint(harness.NodeIP, harness.NodeName), readyEndpoint(a.IP, harness.NodeName)})
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	hostPod := &harness.Pod{Name: "host", IP: harness.NodeIP}
	c.waitDNATs(svc, "tcp", hostPod, a)
	c.eventually("the echo server on the node's network answers", func() string {
		if exited, err := host.Exited(); exited {
			t.Fatalf("echo server on the node's network exited: %v", err)
		}
		return landed(c.connect(client, harness.ClientOptions{Target: net.JoinHostPort(harness.NodeIP, strconv.Itoa(harness.EchoPort)), Count: 1}), []*harness.Pod{hostPod}, "", "")
	})
	// After expiry the first connection picks at random: wait until it
	// picks the host endpoint (1/2 each time), then the next ones must
	// follow it.
	for round := 0; ; round++ {
		time.Sleep(timeout + 600*time.Millisecond)
		first := c.connect(client, harness.ClientOptions{Target: target, Count: 1})
		if len(first) != 1 || first[0].Err != "" {
			t.Fatalf("round %d: %v", round, first)
		}
		if first[0].Backend != "host" {
			if round == 12 {
				t.Fatalf("13 rounds never picked the host endpoint first: %s", first[0].Line)
			}
			continue
		}
		rs := c.connect(client, harness.ClientOptions{Target: target, Count: 10})
		if only(rs) != "host" {
			t.Errorf("pinned to the host-network endpoint by the first connection, the next 10 went to %s", harness.FormatTally(harness.Tally(rs)))
		}
		t.Logf("RESULT affinity to a host-network endpoint (%s): first connection to host, next 10: %s", harness.NodeIP, harness.FormatTally(harness.Tally(rs)))
		break
	}
}

// TestConntrackUDPZeroToN: conntrack entries of a UDP Service that goes
// from 0 to N endpoints are cleaned (kube-proxy's reconciler deletes the
// Service's UDP entries whose reply source is not a serving endpoint, once
// it has one). Two kinds of stale entry:
//
//  1. never DNATed: a client that sent to the ClusterIP before anything
//     served it. While the entry exists its datagrams (same source port)
//     bypass the nat table and are lost; after the first endpoint appears
//     they must reach it.
//  2. DNATed to an endpoint that left while the Service went to 0 (A's
//     server still running): when endpoint B arrives, the datagrams must
//     reach B.
func TestConntrackUDPZeroToN(t *testing.T) {
	c := begin(t, true)
	a, b := backends[0], backends[1]
	const srcPort, srcPort2 = 40211, 40212
	// A ClusterIP chosen up front, so the client can send to it before the
	// Service exists (no rule for it yet: the entry is made as on a node
	// where a client starts before its Service).
	all, err := env.Client.CoreV1().Services("").List(c.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cip string
	for cip == "" || slices.ContainsFunc(all.Items, func(s v1.Service) bool { return s.Spec.ClusterIP == cip }) {
		cip = fmt.Sprintf("10.96.251.%d", 2+rand.Intn(250))
	}
	target := net.JoinHostPort(cip, "80")
	opts := harness.ClientOptions{Proto: "udp", Target: target, Count: 3, SrcPort: srcPort, Timeout: 300 * time.Millisecond}
	rs := c.connect(client, opts)
	for _, r := range rs {
		if r.Err == "" {
			t.Fatalf("datagram to %s (no Service yet) answered: %s", target, r.Line)
		}
	}
	match := []string{"-p", "udp", "--orig-dst", cip, "--orig-port-src", strconv.Itoa(srcPort)}
	entries := c.conntrackList(match...)
	how := "made by the client's datagrams before the Service existed"
	if len(entries) == 0 {
		// The datagrams were dropped before conntrack confirmed an entry
		// (nftables mode drops traffic to unallocated ClusterIPs, as
		// kube-proxy's does). Make the entry such traffic leaves where
		// nothing drops it: not DNATed (a NAT binding to the ClusterIP
		// itself), unreplied.
		if out, err := env.Node.Run(c.ctx, "conntrack", "-I", "-p", "udp", "-s", client.IP, "-d", cip,
			"--sport", strconv.Itoa(srcPort), "--dport", "80", "--dst-nat", cip, "-t", "120"); err != nil {
			t.Fatalf("conntrack -I: %v: %s", err, out)
		}
		how = "inserted with conntrack -I, the datagrams having been dropped before conntrack confirmed one"
		entries = c.conntrackList(match...)
	}
	if len(entries) == 0 {
		t.Fatalf("no conntrack entry for %s from port %d", target, srcPort)
	}
	t.Logf("stale entry (%s): %s", how, entries[0])

	synced := syncCount(c)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ct-udp-0-to-n"}, Spec: v1.ServiceSpec{
		ClusterIP: cip,
		Ports:     []v1.ServicePort{{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}}}})
	c.slice(svc)
	c.eventually("svcproxy synced the Service without endpoints", func() string {
		if n := syncCount(c); n < synced+2 {
			return fmt.Sprintf("%v syncs since", n-synced)
		}
		return ""
	})
	// No endpoint: nothing answers, and the entry stays.
	rs = c.connect(client, opts)
	for _, r := range rs {
		if r.Err == "" {
			t.Fatalf("datagram answered with no endpoint: %s", r.Line)
		}
	}
	if len(c.conntrackList(match...)) == 0 {
		t.Fatalf("the stale entry went away while the Service had no endpoint; nothing left to test")
	}
	before := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total")
	c.slice(svc, at(a, harness.NodeName))
	c.waitDNATs(svc, "udp", a)
	var after []harness.Reply
	c.eventually("datagrams from the same source port reach the first endpoint", func() string {
		after = c.connect(client, opts)
		return landed(after, []*harness.Pod{a}, client.IP, "")
	})
	deleted := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total") - before
	t.Logf("RESULT UDP from port %d to %s with 0 endpoints (never-DNATed entry %s); after 0 -> 1 endpoint: %s; conntrack entries deleted: %v",
		srcPort, target, how, harness.FormatTally(harness.Tally(after)), deleted)
	if deleted < 1 {
		t.Errorf("kubeproxy_conntrack_reconciler_deleted_entries_total grew by %v, want >= 1", deleted)
	}

	// 2. Pinned to a, then 0 endpoints, then b.
	opts2 := opts
	opts2.SrcPort = srcPort2
	c.eventually("second flow pinned to a", func() string {
		return landed(c.connect(client, opts2), []*harness.Pod{a}, client.IP, "")
	})
	c.slice(svc)
	c.eventually("the Service has no endpoint", func() string {
		for _, r := range c.connect(client, harness.ClientOptions{Proto: "udp", Target: target, Count: 1, Timeout: 300 * time.Millisecond}) {
			if r.Err == "" {
				return "a fresh flow was answered: " + r.Line
			}
		}
		return ""
	})
	rs = c.connect(client, opts2)
	t.Logf("with 0 endpoints, the flow from port %d (entry to a kept, as kube-proxy does): %s", srcPort2, harness.FormatTally(harness.Tally(rs)))
	before = metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total")
	c.slice(svc, at(b, harness.NodeName))
	c.waitDNATs(svc, "udp", b)
	c.eventually("datagrams from the pinned source port reach the new endpoint", func() string {
		after = c.connect(client, opts2)
		return landed(after, []*harness.Pod{b}, client.IP, "")
	})
	deleted = metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total") - before
	t.Logf("RESULT UDP from port %d pinned to a, Service 1 -> 0 -> 1 endpoint (b): %s; conntrack entries deleted: %v",
		srcPort2, harness.FormatTally(harness.Tally(after)), deleted)
	if deleted < 1 {
		t.Errorf("kubeproxy_conntrack_reconciler_deleted_entries_total grew by %v, want >= 1", deleted)
	}
}

// TestConntrackUDPNodePort: an external client sending UDP from a fixed
// source port to a NodePort is pinned to endpoint A by conntrack; when A
// leaves the EndpointSlice (its server still running), svcproxy deletes
// the NodePort entry (kube-proxy matches NodePort entries by port) and the
// next datagrams reach another endpoint.
func TestConntrackUDPNodePort(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ct-udp-nodeport"}, Spec: v1.ServiceSpec{
		Type:  v1.ServiceTypeNodePort,
		Ports: []v1.ServicePort{{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], harness.NodeName))
	c.waitDNATs(svc, "udp", backends...)
	const srcPort = 40311
	opts := harness.ClientOptions{Proto: "udp", Target: nodePortTarget(svc), Count: 5, SrcPort: srcPort, SrcIP: harness.ExtAllowedIP,
		Interval: 20 * time.Millisecond, Timeout: time.Second}
	ext := func() []harness.Reply {
		rs, err := env.ExternalConnect(c.ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	var rs []harness.Reply
	c.eventually("NodePort UDP answers", func() string {
		rs = ext()
		return landed(rs, backends, "", "")
	})
	pinned := only(rs)
	if pinned == "" {
		t.Fatalf("datagrams from one source port spread over %s; conntrack should pin them", harness.FormatTally(harness.Tally(rs)))
	}
	entries := c.conntrackList("-p", "udp", "--orig-port-dst", strconv.Itoa(int(svc.Spec.Ports[0].NodePort)), "--orig-port-src", strconv.Itoa(srcPort))
	t.Logf("pinned to %s; conntrack: %v", pinned, entries)
	var rest []*harness.Pod
	var eps []harness.Endpoint
	for _, p := range backends {
		if p.Name != pinned {
			rest = append(rest, p)
			eps = append(eps, at(p, harness.NodeName))
		}
	}
	before := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total")
	c.slice(svc, eps...)
	c.waitDNATs(svc, "udp", rest...)
	var after []harness.Reply
	c.eventually("NodePort datagrams leave the removed endpoint", func() string {
		after = ext()
		return landed(after, rest, "", "")
	})
	deleted := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total") - before
	t.Logf("RESULT external UDP from %s:%d to NodePort %s pinned to %s; after %s left the slice: %s; conntrack entries deleted: %v",
		harness.ExtAllowedIP, srcPort, nodePortTarget(svc), pinned, pinned, harness.FormatTally(harness.Tally(after)), deleted)
	if deleted < 1 {
		t.Errorf("kubeproxy_conntrack_reconciler_deleted_entries_total grew by %v, want >= 1", deleted)
	}
}

// TestConntrackUDPExternalAddresses: the same cleanup for UDP flows from
// outside to an external IP, a load-balancer IP and the NodePort of one
// Service (kube-proxy's reconciler covers every Service address): flows
// pinned to a and b move to c when the slice is replaced by c alone.
func TestConntrackUDPExternalAddresses(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	const extIP, lbIP = "10.99.0.70", "10.99.0.71"
	for _, ip := range []string{extIP, lbIP} {
		if err := env.RouteToNode(c.ctx, ip); err != nil {
			t.Fatal(err)
		}
	}
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ct-udp-external"}, Spec: v1.ServiceSpec{
		Type:        v1.ServiceTypeLoadBalancer,
		ExternalIPs: []string{extIP},
		Ports:       []v1.ServicePort{{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}}}})
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}}
	svc, err := env.Client.CoreV1().Services(svc.Namespace).UpdateStatus(c.ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.slice(svc, at(a, harness.NodeName), at(b, harness.NodeName))
	c.waitDNATs(svc, "udp", a, b)
	flows := []struct {
		name    string
		target  string
		srcPort int
	}{
		{"NodePort", nodePortTarget(svc), 40321},
		{"external IP", net.JoinHostPort(extIP, "80"), 40322},
		{"load-balancer IP", net.JoinHostPort(lbIP, "80"), 40323},
	}
	send := func(target string, port int) []harness.Reply {
		rs, err := env.ExternalConnect(c.ctx, harness.ClientOptions{Proto: "udp", Target: target, Count: 5, SrcPort: port, SrcIP: harness.ExtAllowedIP,
			Interval: 20 * time.Millisecond, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	pinned := map[string]string{}
	for _, f := range flows {
		var rs []harness.Reply
		c.eventually(f.name+" answers", func() string {
			rs = send(f.target, f.srcPort)
			return landed(rs, []*harness.Pod{a, b}, "", "")
		})
		if pinned[f.name] = only(rs); pinned[f.name] == "" {
			t.Fatalf("%s: datagrams from one source port spread over %s", f.name, harness.FormatTally(harness.Tally(rs)))
		}
	}
	before := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total")
	c.slice(svc, at(cc, harness.NodeName))
	c.waitDNATs(svc, "udp", cc)
	var res []string
	for _, f := range flows {
		var rs []harness.Reply
		c.eventually(f.name+" flow moves to c", func() string {
			rs = send(f.target, f.srcPort)
			return landed(rs, []*harness.Pod{cc}, "", "")
		})
		res = append(res, fmt.Sprintf("%s from port %d: %s -> %s", f.name, f.srcPort, pinned[f.name], harness.FormatTally(harness.Tally(rs))))
	}
	deleted := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total") - before
	t.Logf("RESULT external UDP flows, endpoints {a,b} replaced by {c}: %s; conntrack entries deleted: %v", strings.Join(res, "; "), deleted)
	if deleted < float64(len(flows)) {
		t.Errorf("kubeproxy_conntrack_reconciler_deleted_entries_total grew by %v, want >= %d", deleted, len(flows))
	}
}

// TestForwardDropInvalid (iptables mode): KUBE-FORWARD drops forwarded
// packets conntrack marks INVALID (kube-proxy's workaround for issue 74839,
// unless nf_conntrack_tcp_be_liberal is set). A pod sends, through the
// node, to a pod on the second node: a plain SYN arrives; a SYN+FIN (an
// invalid TCP flag combination: conntrack state INVALID) does not, and the
// INVALID DROP rule counts it.
func TestForwardDropInvalid(t *testing.T) {
	c := begin(t, true)
	if env.ProxyMode != "iptables" {
		t.Skip("kube-proxy's nftables mode installs no conntrack-INVALID drop (the iptables KUBE-FORWARD rule has no nftables counterpart); nothing to test")
	}
	if v, err := env.Node.Run(c.ctx, "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"); err == nil && strings.TrimSpace(v) != "0" {
		t.Skipf("nf_conntrack_tcp_be_liberal=%s in the node namespace: kube-proxy installs no INVALID drop then", strings.TrimSpace(v))
	}
	// Some Service, so that svcproxy has synced its filter rules.
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "invalid-drop"}})
	c.slice(svc, at(backends[0], harness.NodeName))
	c.waitDNATs(svc, "tcp", backends[0])
	rule := c.waitRule("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-j DROP")
	dst, err := env.AddRemotePod(c.ctx, "inval-dst")
	if err != nil {
		t.Fatal(err)
	}
	sniff, err := newTCPSniffer(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer sniff.Close()
	send, err := newRawTCPSender(client)
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()

	const n = 5
	count := func(base int) (seen int) {
		for p := base; p < base+40; p++ {
			seen += sniff.from(client.IP, uint16(p))
		}
		return seen
	}
	// One source port per segment (a fresh connection each), 10 more on
	// each attempt.
	const validBase, invalidBase = 40400, 40450
	for attempt := 1; ; attempt++ {
		before, _, ok := c.ruleCounter("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-j DROP")
		if !ok {
			t.Fatalf("no INVALID DROP rule in KUBE-FORWARD")
		}
		for i := 0; i < n; i++ {
			off := uint16(10*(attempt-1) + i)
			if err := send.send(dst.IP, validBase+off, 9, uint32(1000+i), tcpSYN); err != nil {
				t.Fatal(err)
			}
			if err := send.send(dst.IP, invalidBase+off, 9, uint32(2000+i), tcpSYN|tcpFIN); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond)
		after, _, _ := c.ruleCounter("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-j DROP")
		valid, invalid := count(validBase), count(invalidBase)
		t.Logf("attempt %d: %s: counter %d -> %d; at %s: %d of %d SYN, %d of %d SYN+FIN", attempt, rule, before, after, dst.Name, valid, attempt*n, invalid, attempt*n)
		if valid < attempt*n {
			t.Fatalf("only %d of %d plain SYNs from %s reached %s: the path itself is broken", valid, attempt*n, client.Name, dst.Name)
		}
		if invalid > 0 {
			t.Fatalf("%d conntrack-INVALID SYN+FIN segments were forwarded to %s; KUBE-FORWARD should drop them", invalid, dst.Name)
		}
		// A sync between the two reads may rewrite KUBE-FORWARD and reset
		// its counters: try again then.
		if after >= before+n {
			t.Logf("RESULT forward path %s -> %s: plain SYNs forwarded (%d), SYN+FIN (conntrack INVALID) dropped by %q (counter +%d)",
				client.Name, dst.Name, valid, rule, after-before)
			break
		}
		if attempt == 3 {
			t.Fatalf("the INVALID DROP rule's counter went %d -> %d after %d invalid segments", before, after, n)
		}
	}

	// Control: without the rule the same segments are forwarded, so the
	// check above can fail. The rule is put back at once (and svcproxy's
	// next full sync rewrites KUBE-FORWARD anyway).
	del := []string{"iptables", "-t", "filter", "-D", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"}
	if out, err := env.Node.Run(c.ctx, del...); err != nil {
		t.Fatalf("%v: %v: %s", del, err, out)
	}
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		if out, err := env.Node.Run(context.Background(), "iptables", "-t", "filter", "-I", "KUBE-FORWARD", "1", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"); err != nil {
			t.Errorf("put the INVALID rule back: %v: %s", err, out)
		}
	}
	defer restore()
	const controlBase = 40500
	for i := 0; i < n; i++ {
		if err := send.send(dst.IP, uint16(controlBase+i), 9, uint32(3000+i), tcpSYN|tcpFIN); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	restore()
	if got := count(controlBase); got < n {
		t.Fatalf("control: with the INVALID rule removed only %d of %d SYN+FIN segments reached %s: the check above proves nothing", got, n, dst.Name)
	}
	t.Logf("RESULT control: with the INVALID DROP rule removed, %d of %d SYN+FIN segments were forwarded", count(controlBase), n)
}

// TestJumpOrder: the rules svcproxy puts into built-in chains sit in
// kube-proxy's order, each exactly once, after several syncs and after a
// restart. iptables mode: the jumps kube-proxy's iptablesJumpChains (and
// the kubelet's KUBE-FIREWALL) end up as on a fresh node. nftables mode:
// the base chains have kube-proxy's nftables hooks and priorities
// (filter at dstnat-10 before DNAT for the firewall, nat at dstnat and
// srcnat, filter at filter), and their rules are not duplicated.
func TestJumpOrder(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "jump-order"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	check := func(when string) {
		t.Helper()
		if env.ProxyMode == "nftables" {
			c.checkNFTBaseChains(when)
		} else {
			c.checkIPTablesJumps(when)
		}
	}
	// Several syncs: endpoint changes, each waited for.
	start := syncCount(c)
	for i, pods := range [][]*harness.Pod{backends[:1], backends[:2], backends, backends[1:]} {
		var eps []harness.Endpoint
		for _, p := range pods {
			eps = append(eps, at(p, harness.NodeName))
		}
		c.slice(svc, eps...)
		c.waitDNATs(svc, "tcp", pods...)
		if i == 1 {
			check("after 2 endpoint changes")
		}
	}
	c.eventually("several syncs", func() string {
		if n := syncCount(c) - start; n < 4 {
			return fmt.Sprintf("%v syncs", n)
		}
		return ""
	})
	check(fmt.Sprintf("after %v syncs", syncCount(c)-start))
	c.restartSvcproxy()
	c.slice(svc, at(backends[0], harness.NodeName))
	c.waitDNATs(svc, "tcp", backends[0])
	check("after a restart and a sync")
	rs := c.connect(client, harness.ClientOptions{Target: net.JoinHostPort(svc.Spec.ClusterIP, "80"), Count: 3})
	if m := landed(rs, backends[:1], client.IP, ""); m != "" {
		t.Errorf("after the restart: %s", m)
	}
}

// kubeProxyJumps is where kube-proxy's iptables mode leaves its jumps on a
// fresh node (each inserted at the top, in reverse iptablesJumpChains
// order; KUBE-FIREWALL, the kubelet's, first in INPUT and OUTPUT when the
// localhost-NodePort guard is in use), with the extra match each carries.
var kubeProxyJumps = map[string]map[string][]string{
	"filter": {
		"INPUT":   {"KUBE-FIREWALL?", "KUBE-PROXY-FIREWALL NEW", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES NEW"},
		"FORWARD": {"KUBE-PROXY-FIREWALL NEW", "KUBE-FORWARD", "KUBE-SERVICES NEW", "KUBE-EXTERNAL-SERVICES NEW"},
		"OUTPUT":  {"KUBE-FIREWALL?", "KUBE-PROXY-FIREWALL NEW", "KUBE-SERVICES NEW"},
	},
	"nat": {
		"PREROUTING":  {"KUBE-SERVICES"},
		"OUTPUT":      {"KUBE-SERVICES"},
		"POSTROUTING": {"KUBE-POSTROUTING"},
	},
}

func (c *tc) checkIPTablesJumps(when string) {
	c.Helper()
	order := map[string]string{}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		for _, table := range []string{"filter", "nat"} {
			out, err := env.Node.Run(c.ctx, save, "-t", table)
			if err != nil {
				c.Fatalf("%s -t %s: %v", save, table, err)
			}
			got := builtinJumps(out)
			for chain, want := range kubeProxyJumps[table] {
				var seen []string
				for _, rule := range got[chain] {
					s := jumpOf(rule)
					if strings.Contains(rule, "--ctstate NEW") {
						s += " NEW"
					}
					seen = append(seen, s)
				}
				// KUBE-FIREWALL: only where svcproxy guards localhost
				// NodePorts (IPv4); first when there.
				w := slices.Clone(want)
				if len(w) > 0 && w[0] == "KUBE-FIREWALL?" {
					if len(seen) > 0 && seen[0] == "KUBE-FIREWALL" {
						w[0] = "KUBE-FIREWALL"
					} else {
						w = w[1:]
					}
				}
				order[save+" "+table+" "+chain] = strings.Join(seen, ", ")
				if strings.Join(seen, ", ") != strings.Join(w, ", ") {
					c.Errorf("%s: %s -t %s %s jumps are [%s], want kube-proxy's [%s]:\n%s",
						when, save, table, chain, strings.Join(seen, ", "), strings.Join(w, ", "), strings.Join(got[chain], "\n"))
				}
			}
			for chain := range got {
				if kubeProxyJumps[table][chain] == nil {
					c.Errorf("%s: %s -t %s: unexpected jumps in %s: %v", when, save, table, chain, got[chain])
				}
			}
		}
	}
	keys := make([]string, 0, len(order))
	for k := range order {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n\t%s: %s", k, order[k])
	}
	c.Logf("RESULT %s: jumps into built-in chains in kube-proxy's order, each once:%s", when, b.String())
}

// kubeProxyNFTHooks are kube-proxy's nftables base chains as
// type/hook/priority (pkg/proxy/nftables nftablesBaseChains): filter
// prerouting and output at dstnat-10 (the firewall, before DNAT), filter
// input, forward and output at filter, nat prerouting and output at
// dstnat, nat postrouting at srcnat.
var kubeProxyNFTHooks = []string{
	"filter/forward/0", "filter/input/0", "filter/output/-110", "filter/output/0", "filter/prerouting/-110",
	"nat/output/-100", "nat/postrouting/100", "nat/prerouting/-100",
}

func (c *tc) checkNFTBaseChains(when string) {
	c.Helper()
	for _, family := range []string{"ip", "ip6"} {
		chains := c.nftBaseChains(family, "svcproxy")
		if got := hookSignature(chains); strings.Join(got, " ") != strings.Join(kubeProxyNFTHooks, " ") {
			c.Errorf("%s: %s svcproxy base chains are %v, want kube-proxy's %v", when, family, got, kubeProxyNFTHooks)
		}
		for _, ch := range chains {
			seen := map[string]bool{}
			for _, r := range ch.Rules {
				if seen[r] {
					c.Errorf("%s: %s base chain %s has a duplicate rule %s", when, family, ch.Name, r)
				}
				seen[r] = true
			}
			if len(ch.Rules) == 0 {
				c.Errorf("%s: %s base chain %s is empty", when, family, ch.Name)
			}
		}
	}
	tables, err := env.Node.Run(c.ctx, "nft", "list", "tables")
	if err != nil {
		c.Fatal(err)
	}
	if n := strings.Count(tables, "svcproxy"); n != 2 {
		c.Errorf("%s: want one svcproxy table per family, got:\n%s", when, tables)
	}
	c.Logf("RESULT %s: nftables base chains (ip and ip6) %v, no duplicate rules", when, kubeProxyNFTHooks)
}
