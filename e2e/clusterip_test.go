package e2e

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// ClusterIP traffic from pods: spread over the endpoints, source kept,
// rejected without endpoints, hairpin.

// TestPodToPod checks the harness itself: pods reach each other directly
// over the bridge, and each echo server sees the client's own address.
func TestPodToPod(t *testing.T) {
	c := beginWithoutSvcproxy(t)
	for _, b := range append(backends, client) {
		rs := c.connect(client, harness.ClientOptions{Target: net.JoinHostPort(b.IP, strconv.Itoa(harness.EchoPort)), Count: 3})
		c.checkSpread(rs, 3, []*harness.Pod{b}, client.IP)
		rs = c.connect(client, harness.ClientOptions{Proto: "udp", Target: net.JoinHostPort(b.IP, strconv.Itoa(harness.EchoPort)), Count: 3})
		c.checkSpread(rs, 3, []*harness.Pod{b}, client.IP)
	}
}

// TestClusterIPTCP: 60 TCP connections to a ClusterIP with three ready
// endpoints reach all three and nothing else, and every backend sees the
// client pod's own address (in-cluster traffic is not masqueraded).
func TestClusterIPTCP(t *testing.T) {
	c := begin(t)
	svc := c.service("clusterip-tcp", "web", []harness.Port{harness.TCP}, backends...)
	rs := c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 60, Timeout: 2 * time.Second})
	c.checkSpread(rs, 60, backends, client.IP)
}

// TestClusterIPUDP: the same with 60 UDP datagrams, each from a new socket
// (so a new conntrack entry and a new choice of backend).
func TestClusterIPUDP(t *testing.T) {
	c := begin(t)
	svc := c.service("clusterip-udp", "dns", []harness.Port{harness.UDP}, backends...)
	rs := c.connect(client, harness.ClientOptions{Proto: "udp", Target: target(svc, 80), Count: 60, Timeout: 2 * time.Second})
	c.checkSpread(rs, 60, backends, client.IP)
}

// TestScaleDown: after the EndpointSlice shrinks from three endpoints to
// one, and the rules converge, every connection reaches that one.
func TestScaleDown(t *testing.T) {
	c := begin(t)
	svc := c.service("scale", "web", []harness.Port{harness.TCP}, backends...)
	rs := c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 30})
	c.checkSpread(rs, 30, backends, client.IP)

	only := backends[1]
	c.endpoints(svc, only)
	c.waitDNATs(svc, "tcp", only)
	rs = c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 30})
	c.checkSpread(rs, 30, []*harness.Pod{only}, client.IP)
}

// TestNoEndpoints: a Service without endpoints (an empty EndpointSlice, or
// none at all) is rejected at once — ECONNREFUSED (TCP RST or ICMP port
// unreachable for UDP) well within a second, not a timeout.
func TestNoEndpoints(t *testing.T) {
	begin(t)
	for _, tt := range []struct {
		name      string
		withSlice bool
	}{{"empty-slice", true}, {"no-slice", false}} {
		t.Run(tt.name, func(t *testing.T) {
			c := begin(t)
			svc := c.service("no-endpoints", tt.name, []harness.Port{harness.TCP, harness.UDP})
			if tt.withSlice {
				c.endpoints(svc)
			}
			if env.ProxyMode == "iptables" {
				c.waitRule("filter", svc.Spec.ClusterIP+"/32", "-p tcp", "REJECT")
				c.waitRule("filter", svc.Spec.ClusterIP+"/32", "-p udp", "REJECT")
			} else {
				c.waitNFT([]string{"map", "ip", "svcproxy", "no-endpoint-services"}, svc.Spec.ClusterIP+" . tcp", svc.Spec.ClusterIP+" . udp")
			}
			for _, proto := range []string{"tcp", "udp"} {
				start := time.Now()
				rs := c.connect(client, harness.ClientOptions{Proto: proto, Target: target(svc, 80), Count: 3, Timeout: 5 * time.Second})
				took := time.Since(start)
				for i, r := range rs {
					if r.Err != "refused" {
						c.Errorf("%s attempt %d: got %q, want ERR refused", proto, i, r.Line)
					}
				}
				if len(rs) != 3 {
					c.Errorf("%s: got %d replies, want 3", proto, len(rs))
				}
				if took > time.Second {
					c.Errorf("%s: 3 refused attempts took %v; a REJECT answers at once", proto, took)
				}
			}
		})
	}
}

// TestHairpin: a pod that connects to a Service whose only endpoint is
// itself reaches itself, and sees the node's bridge address (10.244.1.1) as the source
// (hairpin traffic is masqueraded, or the pod would answer itself directly).
func TestHairpin(t *testing.T) {
	c := begin(t)
	svc := c.service("hairpin", "self", []harness.Port{harness.TCP, harness.UDP}, client)
	for _, proto := range []string{"tcp", "udp"} {
		rs := c.connect(client, harness.ClientOptions{Proto: proto, Target: target(svc, 80), Count: 10})
		c.checkSpread(rs, 10, []*harness.Pod{client}, harness.BridgeIP)
	}
}
