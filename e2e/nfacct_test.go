package e2e

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// kube-proxy's nfacct metrics (iptables mode): the INVALID drop of
// KUBE-FORWARD and the localhost NodePort rules count their packets in
// nfacct objects, which /metrics reads when scraped.
const (
	metricInvalidDropped = "kubeproxy_iptables_ct_state_invalid_dropped_packets_total"
	metricLocalhostNPs   = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total"
)

// TestNFAcctMetrics (iptables mode): conntrack-INVALID segments forwarded
// through the node (SYN+FIN, from a pod to a pod on the second node) and
// connections from the node to 127.0.0.1:<NodePort> move the two
// counters by at least as many packets.
func TestNFAcctMetrics(t *testing.T) {
	c := begin(t)
	c.onlyIn("iptables", "kube-proxy registers its nfacct metrics in iptables mode only: its nftables mode has no conntrack-INVALID drop and no localhost NodePorts to count")
	if v, err := env.Node.Run(c.ctx, "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"); err != nil || strings.TrimSpace(v) != "0" {
		t.Fatalf("nf_conntrack_tcp_be_liberal in the node namespace: %q, %v; want 0, the default, for the INVALID drop to exist", v, err)
	}
	svc := c.createService("nfacct", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	c.waitDNATs(svc, "tcp", backends[0], backends[1])
	np := strconv.Itoa(int(svc.Spec.Ports[0].NodePort))
	c.waitRule("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-m nfacct --nfacct-name", "ct_state_invalid_dropped_pkts", "-j DROP")
	c.waitRule("nat", "-A KUBE-NODEPORTS", "-d 127.0.0.0/8", "--dport "+np, "-m nfacct --nfacct-name", "localhost_nps_accepted_pkts")

	before := c.nfacctMetrics()

	// Conntrack-INVALID segments, forwarded: a fresh source port each.
	const invalid = 5
	dst := c.remotePod("nfacct-dst")
	send, err := newRawTCPSender(client)
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()
	for i := 0; i < invalid; i++ {
		if err := send.send(dst.IP, uint16(40600+i), 9, uint32(4000+i), tcpSYN|tcpFIN); err != nil {
			t.Fatal(err)
		}
	}
	// Connections from the node to the NodePort on loopback: the nat
	// rule sees the first packet of each.
	const conns = 4
	target := net.JoinHostPort("127.0.0.1", np)
	rs := c.connectFrom(env.Node, target, conns, 2*time.Second)
	if msg := landed(rs, backends[:2], "", ""); msg != "" {
		t.Fatalf("node to %s: %s", target, msg)
	}

	var after map[string]float64
	c.eventually("nfacct counters up", func() string {
		after = c.nfacctMetrics()
		if d := after[metricInvalidDropped] - before[metricInvalidDropped]; d < invalid {
			return "INVALID drops +" + strconv.FormatFloat(d, 'f', -1, 64) + ", want +" + strconv.Itoa(invalid)
		}
		if d := after[metricLocalhostNPs] - before[metricLocalhostNPs]; d < conns {
			return "localhost NodePort packets +" + strconv.FormatFloat(d, 'f', -1, 64) + ", want +" + strconv.Itoa(conns)
		}
		return ""
	})
	t.Logf("RESULT %d SYN+FIN forwarded %s -> %s: %s %v -> %v; %d connections to %s: %s %v -> %v",
		invalid, client.Name, dst.Name, metricInvalidDropped, before[metricInvalidDropped], after[metricInvalidDropped],
		conns, target, metricLocalhostNPs, before[metricLocalhostNPs], after[metricLocalhostNPs])
}

// nfacctMetrics reads the two nfacct metrics from /metrics; both must be
// there.
func (c *tc) nfacctMetrics() map[string]float64 {
	c.Helper()
	code, body, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/metrics")
	if err != nil || code != 200 {
		c.Fatalf("GET /metrics: %d %v", code, err)
	}
	out := map[string]float64{}
	for _, name := range []string{metricInvalidDropped, metricLocalhostNPs} {
		v, ok := harness.MetricValue(body, name)
		if !ok {
			c.Fatalf("/metrics has no sample of %s:\n%s", name, kubeproxyLines(body))
		}
		out[name] = v
	}
	return out
}
