package e2e

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// ClientIP session affinity: pinning, timeout, endpoints leaving and
// coming back, across the Service port's addresses, under
// externalTrafficPolicy Local, across a restart of svcproxy.

// affinity is spec with ClientIP affinity of timeoutSeconds.
func affinity(timeoutSeconds int32, spec v1.ServiceSpec) v1.ServiceSpec {
	spec.SessionAffinity = v1.ServiceAffinityClientIP
	spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(timeoutSeconds)}}
	return spec
}

// twoHereOneThere places backends a and b on this node and c on the other.
func twoHereOneThere() []harness.Endpoint {
	return append(atNode(harness.NodeName, backends[:2]...), at(backends[2], otherNode))
}

func TestSessionAffinity(t *testing.T) {
	c := begin(t, true)
	svc := c.createService("affinity", affinity(300, v1.ServiceSpec{}))
	c.slice(svc, twoHereOneThere()...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("ClientIP affinity: one endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		return pinned(rs, backends, client.IP)
	})
	t.Logf("RESULT session affinity ClientIP: 30 connections, %s", harness.FormatTally(harness.Tally(rs)))
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
	svc := c.createService("affinity-timeout", affinity(int32(timeout/time.Second), v1.ServiceSpec{
		Ports: ports(harness.TCP, harness.UDP)}))
	c.slice(svc, twoHereOneThere()...)
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
				return pinned(rs, backends, client.IP)
			})
			pin := only(rs)
			// 6 attempts 700ms apart: 3.5s in all, longer than the
			// timeout, but never idle for as long.
			rs = c.connect(client, harness.ClientOptions{Proto: proto, Target: target, Count: 6, Interval: 700 * time.Millisecond})
			if only(rs) != pin {
				t.Errorf("attempts 700ms apart (timeout %v) left %s: %s", timeout, pin, harness.FormatTally(harness.Tally(rs)))
			}
			t.Logf("RESULT %s affinity timeout %v: 10 back-to-back attempts and 6 more 700ms apart all to %s", proto, timeout, pin)

			// Idle longer than the timeout, then one attempt, a few times:
			// with 3 endpoints, all of up to 8 landing on the pinned one
			// has probability (1/3)^8 < 2e-4 when the affinity expires.
			got := []string{pin}
			moved := func() bool { return slices.ContainsFunc(got, func(s string) bool { return s != pin }) }
			for round := 0; round < 8 && !moved(); round++ {
				time.Sleep(timeout + 600*time.Millisecond)
				r := c.connect(client, harness.ClientOptions{Proto: proto, Target: target, Count: 1})
				if m := landed(r, backends, client.IP, ""); m != "" {
					t.Fatalf("after %v idle: %s", timeout+600*time.Millisecond, m)
				}
				got = append(got, r[0].Backend)
			}
			if !moved() {
				t.Errorf("after idling longer than the %v timeout, %d attempts all still went to %s: affinity never expired", timeout, len(got)-1, pin)
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
	svc := c.createService("affinity-removed", affinity(300, v1.ServiceSpec{}))
	c.slice(svc, twoHereOneThere()...)
	c.waitDNATs(svc, "tcp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	pinnedTo := func(pods []*harness.Pod) (string, string) {
		rs := c.connect(client, harness.ClientOptions{Target: target, Count: 10})
		return only(rs), pinned(rs, pods, client.IP)
	}
	var x string
	c.eventually("pinned", func() (m string) { x, m = pinnedTo(backends); return m })
	rest := except(backends, x)
	c.slice(svc, atNode(harness.NodeName, rest...)...)
	c.waitDNATs(svc, "tcp", rest...)
	y, m := pinnedTo(rest)
	if m != "" {
		t.Fatalf("after %s left the slice: %s", x, m)
	}
	c.slice(svc, twoHereOneThere()...)
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
	svc := c.createService("affinity-shared", affinity(int32(timeout/time.Second), v1.ServiceSpec{Type: v1.ServiceTypeNodePort}))
	c.slice(svc, twoHereOneThere()...)
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
	svc := c.createService("affinity-host", affinity(int32(timeout/time.Second), v1.ServiceSpec{}))
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

// TestSessionAffinityFollowsEndpoints: a client pinned by ClientIP
// affinity to an endpoint that leaves the EndpointSlice (its server still
// running) is balanced to the remaining endpoints at once, not sent on to
// the removed one until the affinity times out; its new pin then survives a
// restart of svcproxy.
func TestSessionAffinityFollowsEndpoints(t *testing.T) {
	c := begin(t, true)
	svc := c.createService("affinity-follows", affinity(900, v1.ServiceSpec{}))
	c.slice(svc, atNode(harness.NodeName, backends...)...)
	c.waitDNATs(svc, "tcp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	pinnedTo := func(what string, pods []*harness.Pod) (string, time.Duration) {
		var rs []harness.Reply
		took := c.eventually(what, func() string {
			rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
			// Every attempt answered by a backend (a refusal is no pin).
			if len(rs) != 10 {
				return fmt.Sprintf("%d replies to 10 attempts", len(rs))
			}
			return pinned(rs, pods, client.IP)
		})
		return only(rs), took
	}
	first, _ := pinnedTo("pinned to one endpoint", backends)
	c.slice(svc, atNode(harness.NodeName, except(backends, first)...)...)
	_, took := pinnedTo("the pin follows the endpoints", except(backends, first))
	second, _ := pinnedTo("pinned again", backends)
	t.Logf("RESULT affinity: pinned to %s; after %s left the slice, pinned to %s within %v of the API write", first, first, second, took.Round(time.Millisecond))

	if err := env.RestartSvcproxy(c.ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if env.ProxyMode == "nftables" {
		// The restart's full sync replaced the table: the entry must have
		// been carried over, not recreated by the next connection.
		out, err := env.Node.Run(c.ctx, "nft", "list", "set", "ip", "svcproxy", "affinity-tcp-900")
		if err != nil || !strings.Contains(out, client.IP+" . "+svc.Spec.ClusterIP+" . 80 . ") {
			t.Fatalf("after the restart the affinity set has no entry for %s: %v\n%s", client.IP, err, out)
		}
	}
	rs := c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
	if tally := harness.Tally(rs); len(rs) != 10 || tally[second] != 10 {
		t.Fatalf("after a restart of svcproxy: %s, want all 10 on %s", harness.FormatTally(tally), second)
	}
	t.Logf("RESULT affinity survives a restart of svcproxy: 10 of 10 still on %s", second)
}

// TestSessionAffinityExternalLocal: ClientIP affinity under
// externalTrafficPolicy Local sticks to a local endpoint, and an outside
// client pinned earlier (under policy Cluster) to an endpoint on the other
// node is not sent there once the policy is Local (kube-proxy checks only
// the local endpoints' recent lists in KUBE-SVL).
func TestSessionAffinityExternalLocal(t *testing.T) {
	c := begin(t, true)
	remote := c.remotePod("remote-aff")
	svc := c.createService("affinity-ext-local", affinity(300, v1.ServiceSpec{Type: v1.ServiceTypeNodePort}))
	// Only the remote endpoint at first: the outside client is pinned to it.
	c.slice(svc, at(remote, harness.Node2Name))
	var rs []harness.Reply
	c.eventually("outside client pinned to the remote endpoint", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 5, time.Second)
		return landed(rs, []*harness.Pod{remote}, "", "")
	})
	locals := []*harness.Pod{backends[0], backends[1]}
	c.slice(svc, at(remote, harness.Node2Name), at(locals[0], harness.NodeName), at(locals[1], harness.NodeName))
	c.waitDNATs(svc, "tcp", remote, locals[0], locals[1])
	// Still pinned to the remote endpoint under policy Cluster.
	rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
	if m := landed(rs, []*harness.Pod{remote}, "", ""); m != "" {
		t.Fatalf("policy Cluster, endpoints added: %s (want still pinned to the remote endpoint)", m)
	}
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	c.update(svc)
	c.eventually("policy Local: a local endpoint, the client's source kept, and pinned", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
		return pinned(rs, locals, harness.ExtAllowedIP)
	})
	t.Logf("RESULT affinity, outside client through the NodePort: pinned to %s under policy Cluster; under Local pinned to %s", remote.Name, harness.FormatTally(harness.Tally(rs)))
}
