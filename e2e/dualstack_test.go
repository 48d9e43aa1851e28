package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestIPv6 (dual-stack node): an IPv6 Service works through its ClusterIP
// from a pod (not masqueraded) and through its NodePort from outside
// (masqueraded), with the IPv6 proxier next to the IPv4 one.
func TestIPv6(t *testing.T) {
	c := begin(t)
	svc := c.createIPv6Service("ipv6", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("IPv6 ClusterIP from a pod", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: clusterIP, Count: 30})
		return exactly(rs, backends, client.IP6, "")
	})
	t.Logf("RESULT IPv6 ClusterIP %s from pod %s: %s, source kept", clusterIP, client.IP6, harness.FormatTally(harness.Tally(rs)))

	nodePort := nodePortOn(harness.NodeIP6, svc)
	c.eventually("IPv6 NodePort from outside", func() string {
		var err error
		rs, err = env.ExternalConnect(c.ctx, harness.ClientOptions{Proto: "tcp", Target: nodePort, Count: 30, Timeout: time.Second})
		if err != nil {
			return err.Error()
		}
		return exactly(rs, backends, "", harness.GatewayIP6)
	})
	t.Logf("RESULT IPv6 NodePort %s from outside (%s): %s, seen from %s (masqueraded)", nodePort, harness.GatewayIP6, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

// TestIPv6SessionAffinity (dual-stack node): an IPv6 Service with ClientIP
// affinity and three endpoints sends every connection of a client to one
// endpoint, and still does after a restart of svcproxy. In nftables mode
// the client's entry is in the ip6 table's affinity set, carried over the
// restart's full sync (nft 1.0.6 aborts on an IPv6 dynamic map update, so
// the layout before, with affinity maps, balanced IPv6 without affinity).
func TestIPv6SessionAffinity(t *testing.T) {
	c := begin(t)
	// One slice with all three endpoints: any sync that answers has all
	// of them, so one endpoint for 30 connections is affinity's doing
	// (without it, the probability is 3*(1/3)^30).
	svc := c.createIPv6Service("ipv6-affinity", affinity(900, v1.ServiceSpec{}))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("IPv6 ClientIP affinity: one endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		return pinned(rs, backends, client.IP6)
	})
	pin := only(rs)
	t.Logf("RESULT IPv6 session affinity ClientIP %s from %s: 30 connections, %s", target, client.IP6, harness.FormatTally(harness.Tally(rs)))

	entry := client.IP6 + " . " + svc.Spec.ClusterIP + " . 80 . "
	affinitySet := func(when string) {
		if env.ProxyMode != "nftables" {
			return
		}
		out, err := env.Node.Run(c.ctx, "nft", "list", "set", "ip6", "svcproxy", "affinity-tcp-900")
		if err != nil || !strings.Contains(out, entry) {
			t.Fatalf("%s the ip6 affinity set has no entry %q: %v\n%s", when, entry, err, out)
		}
	}
	affinitySet("after the connections")
	if err := env.RestartSvcproxy(c.ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	// The restart's full sync replaced the table: the entry must have been
	// carried over, not recreated by the next connection.
	affinitySet("after the restart")
	rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
	if tally := harness.Tally(rs); len(rs) != 10 || tally[pin] != 10 {
		t.Fatalf("after a restart of svcproxy: %s, want all 10 on %s", harness.FormatTally(tally), pin)
	}
	t.Logf("RESULT IPv6 affinity survives a restart of svcproxy: 10 of 10 still on %s", pin)
}

// createIPv6Service creates a single-stack IPv6 Service of spec with one
// EndpointSlice holding every backend's IPv6 address on this node, and
// fails the test when the ClusterIP it was given is not IPv6.
func (c *tc) createIPv6Service(name string, spec v1.ServiceSpec) *v1.Service {
	c.Helper()
	spec.IPFamilyPolicy = ptr.To(v1.IPFamilyPolicySingleStack)
	spec.IPFamilies = []v1.IPFamily{v1.IPv6Protocol}
	svc := c.createService(name, spec)
	var eps []discovery.Endpoint
	for _, p := range backends {
		eps = append(eps, readyEndpoint(p.IP6, harness.NodeName))
	}
	c.writeSlice(svc, discovery.AddressTypeIPv6, eps)
	if net.ParseIP(svc.Spec.ClusterIP).To4() != nil {
		c.Fatalf("ClusterIP %s is not IPv6", svc.Spec.ClusterIP)
	}
	return svc
}
