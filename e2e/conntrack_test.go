package e2e

import (
	"fmt"
	"math/rand"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Conntrack cleanup: UDP flows pinned to an endpoint that left, or made
// while a Service had none, move on.

// TestConntrackUDP: a UDP client sending from a fixed source port is pinned
// to one endpoint by conntrack; when that endpoint leaves the EndpointSlice
// (its server still running), the stale entry is deleted and the next
// datagrams reach another endpoint.
func TestConntrackUDP(t *testing.T) {
	c := begin(t)
	svc := c.createService("conntrack-udp", v1.ServiceSpec{
		Ports: ports(harness.UDP)})
	c.slice(svc, atNode(harness.NodeName, backends...)...)
	c.waitDNATs(svc, "udp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	opts := harness.ClientOptions{Proto: "udp", Target: target, Count: 5, SrcPort: 40123, Interval: 20 * time.Millisecond}
	rs := c.connect(client, opts)
	if m := landed(rs, backends, client.IP, ""); m != "" {
		t.Fatalf("before: %s", m)
	}
	pinned := rs[0].Backend
	if len(harness.Tally(rs)) != 1 {
		t.Fatalf("datagrams from one source port spread over %s; conntrack should pin them", harness.FormatTally(harness.Tally(rs)))
	}
	before := metricValue(c, conntrackDeleted)
	rest := c.removeEndpoint(svc, "udp", pinned)
	var after []harness.Reply
	c.eventually("datagrams leave the removed endpoint", func() string {
		after = c.connect(client, opts)
		return landed(after, rest, client.IP, "")
	})
	t.Logf("RESULT UDP from port %d pinned to %s; after %s left the slice: %s; conntrack entries deleted: %v",
		opts.SrcPort, pinned, pinned, harness.FormatTally(harness.Tally(after)), c.wantGrowth(conntrackDeleted, before, 1))
}

// TestConntrackUDPZeroToN: conntrack entries of a UDP Service that goes
// from 0 to N endpoints are cleaned (kube-proxy's reconciler deletes the
// Service's UDP entries whose reply source is not a serving endpoint, and
// all of them while it has none). Two kinds of stale entry:
//
//  1. never DNATed: a client that sent to the ClusterIP before anything
//     served it. While the entry exists its datagrams (same source port)
//     bypass the nat table and are lost; after the first endpoint appears
//     they must reach it.
//  2. DNATed to an endpoint that left while the Service went to 0 (A's
//     server still running): when endpoint B arrives, the datagrams must
//     reach B.
func TestConntrackUDPZeroToN(t *testing.T) {
	c := begin(t)
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

	synced, before := syncCount(c), metricValue(c, conntrackDeleted)
	svc := c.createService("ct-udp-0-to-n", v1.ServiceSpec{
		ClusterIP: cip,
		Ports:     ports(harness.UDP)})
	c.slice(svc)
	c.eventually("svcproxy synced the Service without endpoints", func() string {
		if n := syncCount(c); n < synced+2 {
			return fmt.Sprintf("%v syncs since", n-synced)
		}
		return ""
	})
	// No endpoint: nothing answers, and the never-DNATed entry goes
	// already (kube-proxy cleans the entries of a Service without
	// endpoints too, kubernetes#139629).
	rs = c.connect(client, opts)
	for _, r := range rs {
		if r.Err == "" {
			t.Fatalf("datagram answered with no endpoint: %s", r.Line)
		}
	}
	c.eventually("the never-DNATed entry is deleted while the Service has no endpoint", func() string {
		if e := c.conntrackList(match...); len(e) > 0 {
			return "still there: " + e[0]
		}
		return ""
	})
	c.slice(svc, at(a, harness.NodeName))
	c.waitDNATs(svc, "udp", a)
	var after []harness.Reply
	c.eventually("datagrams from the same source port reach the first endpoint", func() string {
		after = c.connect(client, opts)
		return landed(after, []*harness.Pod{a}, client.IP, "")
	})
	t.Logf("RESULT UDP from port %d to %s with 0 endpoints (never-DNATed entry %s); after 0 -> 1 endpoint: %s; conntrack entries deleted: %v",
		srcPort, target, how, harness.FormatTally(harness.Tally(after)), c.wantGrowth(conntrackDeleted, before, 1))

	// 2. Pinned to a, then 0 endpoints, then b.
	opts2 := opts
	opts2.SrcPort = srcPort2
	c.eventually("second flow pinned to a", func() string {
		return landed(c.connect(client, opts2), []*harness.Pod{a}, client.IP, "")
	})
	before = metricValue(c, conntrackDeleted)
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
	t.Logf("with 0 endpoints, the flow from port %d (entry to a deleted, as kube-proxy does): %s", srcPort2, harness.FormatTally(harness.Tally(rs)))
	c.slice(svc, at(b, harness.NodeName))
	c.waitDNATs(svc, "udp", b)
	c.eventually("datagrams from the pinned source port reach the new endpoint", func() string {
		after = c.connect(client, opts2)
		return landed(after, []*harness.Pod{b}, client.IP, "")
	})
	t.Logf("RESULT UDP from port %d pinned to a, Service 1 -> 0 -> 1 endpoint (b): %s; conntrack entries deleted: %v",
		srcPort2, harness.FormatTally(harness.Tally(after)), c.wantGrowth(conntrackDeleted, before, 1))
}

// TestConntrackUDPNodePort: an external client sending UDP from a fixed
// source port to a NodePort is pinned to endpoint A by conntrack; when A
// leaves the EndpointSlice (its server still running), svcproxy deletes
// the NodePort entry (kube-proxy matches NodePort entries by port) and the
// next datagrams reach another endpoint.
func TestConntrackUDPNodePort(t *testing.T) {
	c := begin(t)
	svc := c.createService("ct-udp-nodeport", v1.ServiceSpec{
		Type:  v1.ServiceTypeNodePort,
		Ports: ports(harness.UDP)})
	c.slice(svc, atNode(harness.NodeName, backends...)...)
	c.waitDNATs(svc, "udp", backends...)
	const srcPort = 40311
	opts := harness.ClientOptions{Proto: "udp", Target: nodePortTarget(svc), Count: 5, SrcPort: srcPort, SrcIP: harness.ExtAllowedIP,
		Interval: 20 * time.Millisecond, Timeout: time.Second}
	var rs []harness.Reply
	c.eventually("NodePort UDP answers", func() string {
		rs = c.externalOpts(opts)
		return landed(rs, backends, "", "")
	})
	pinned := only(rs)
	if pinned == "" {
		t.Fatalf("datagrams from one source port spread over %s; conntrack should pin them", harness.FormatTally(harness.Tally(rs)))
	}
	entries := c.conntrackList("-p", "udp", "--orig-port-dst", strconv.Itoa(int(svc.Spec.Ports[0].NodePort)), "--orig-port-src", strconv.Itoa(srcPort))
	t.Logf("pinned to %s; conntrack: %v", pinned, entries)
	before := metricValue(c, conntrackDeleted)
	rest := c.removeEndpoint(svc, "udp", pinned)
	var after []harness.Reply
	c.eventually("NodePort datagrams leave the removed endpoint", func() string {
		after = c.externalOpts(opts)
		return landed(after, rest, "", "")
	})
	t.Logf("RESULT external UDP from %s:%d to NodePort %s pinned to %s; after %s left the slice: %s; conntrack entries deleted: %v",
		harness.ExtAllowedIP, srcPort, nodePortTarget(svc), pinned, pinned, harness.FormatTally(harness.Tally(after)), c.wantGrowth(conntrackDeleted, before, 1))
}

// TestConntrackUDPExternalAddresses: the same cleanup for UDP flows from
// outside to an external IP, a load-balancer IP and the NodePort of one
// Service (kube-proxy's reconciler covers every Service address): flows
// pinned to a and b move to c when the slice is replaced by c alone.
func TestConntrackUDPExternalAddresses(t *testing.T) {
	c := begin(t)
	const extIP, lbIP = "10.99.0.70", "10.99.0.71"
	c.routeToNode(extIP, lbIP)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService("ct-udp-external", v1.ServiceSpec{
		Type:        v1.ServiceTypeLoadBalancer,
		ExternalIPs: []string{extIP},
		Ports:       ports(harness.UDP)})
	svc = c.setIngress(svc, v1.LoadBalancerIngress{IP: lbIP})
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
		return c.externalOpts(harness.ClientOptions{Proto: "udp", Target: target, Count: 5, SrcPort: port, SrcIP: harness.ExtAllowedIP,
			Interval: 20 * time.Millisecond, Timeout: time.Second})
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
	before := metricValue(c, conntrackDeleted)
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
	t.Logf("RESULT external UDP flows, endpoints {a,b} replaced by {c}: %s; conntrack entries deleted: %v",
		strings.Join(res, "; "), c.wantGrowth(conntrackDeleted, before, float64(len(flows))))
}
