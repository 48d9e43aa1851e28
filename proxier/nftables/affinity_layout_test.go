package nftables

import (
	"context"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestAffinityPerServicePort: a Service port with ClientIP affinity gets
// one record chain, reached from every destination of the port (ClusterIP,
// LoadBalancer IP, node IP . NodePort), that writes the client's entry
// under all of them; with a Local policy, entries for this node's
// endpoints also go to the local pools' map, and only this node's
// endpoints are in affinity-dests-local-eps.
func TestAffinityPerServicePort(t *testing.T) {
	s := pt.Service("ns/sticky", proxier.TCP, "10.96.0.7", 80, pt.Affinity(600), pt.NodePort(30007), pt.LoadBalancer("1.2.3.7"), pt.ExternalLocal,
		pt.Endpoints(pt.Endpoint("10.244.1.5", 8080, pt.Local), pt.Endpoint("10.244.2.6", 8080)))
	out := DryRun(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), pt.State(proxier.IPv4, s))
	chain := affinityChain(s.Name)
	upd := func(m string) string {
		return "update @" + m + " { ip saddr . 10.96.0.7 . 80 : ip daddr . th dport } " +
			"update @" + m + " { ip saddr . 1.2.3.7 . 80 : ip daddr . th dport } " +
			"update @" + m + " { ip saddr . 192.168.0.2 . 30007 : ip daddr . th dport }"
	}
	mustContain(t, "dry run", out,
		"add rule ip svcproxy "+chain+" "+upd("affinity-tcp-600"),
		"add rule ip svcproxy "+chain+" ip daddr . meta l4proto . th dport @affinity-dests-local-eps "+upd("affinity-local-tcp-600"),
		"10.96.0.7 . 80 : goto "+chain,
		"1.2.3.7 . 80 : goto "+chain,
		"192.168.0.2 . 30007 : goto "+chain,
		"add element ip svcproxy affinity-dests-local-eps { 10.244.1.5 . tcp . 8080 }",
		"add rule ip svcproxy pick-ip meta l4proto tcp dnat ip to ip saddr . ip daddr . th dport map @affinity-tcp-600",
		"add rule ip svcproxy pick-np-local meta l4proto tcp dnat ip to ip saddr . ip daddr . th dport map @affinity-local-tcp-600",
		"add rule ip svcproxy affinity-record meta l4proto tcp ct original ip daddr . ct original proto-dst vmap @affinity-dests-tcp-600",
	)
	if strings.Contains(out, "10.244.2.6 . tcp . 8080") {
		t.Error("a remote endpoint is in affinity-dests-local-eps")
	}
	if t.Failed() {
		t.Log(out)
	}
}

// TestKernelIPv6Affinity: an IPv6 Service with ClientIP affinity does not
// break the IPv6 sync. Where nft cannot write IPv6 affinity (nft 1.0.6),
// the proxier finds out at start and balances the Service without it;
// elsewhere the record chain is there.
func TestKernelIPv6Affinity(t *testing.T) {
	_, fd := enterNetns(t)
	cfg := pt.Config(pt.IPv6, pt.NodeIPs("fd00::2"), pt.ServiceRange("fd00:10:96::/112"))
	p, err := newKernel(cfg, fd)
	if err != nil {
		t.Fatal(err)
	}
	s := pt.Service("ns/sticky6", proxier.TCP, "fd00:10:96::7", 80, pt.Affinity(600), pt.Endpoints(pt.Endpoint("fd00:10:244:1::5", 8080, pt.Local)))
	plain := pt.Service("ns/plain6", proxier.TCP, "fd00:10:96::8", 80, pt.Endpoints(pt.Endpoint("fd00:10:244:1::6", 8080, pt.Local)))
	st := pt.State(proxier.IPv6, s, plain)
	if err := p.Sync(context.Background(), st); err != nil {
		t.Fatalf("IPv6 sync with an affinity Service: %v", err)
	}
	out := sh(t, "nft", "list", "table", "ip6", TableName)
	for _, want := range []string{"fd00:10:96::7 . tcp . 80", "fd00:10:96::8 . tcp . 80"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	has := strings.Contains(out, affinityChain(s.Name))
	t.Logf("nft writes IPv6 affinity: %v", !p.tr.noAffinity)
	if has == p.tr.noAffinity {
		t.Errorf("record chain present %v, but IPv6 affinity disabled %v", has, p.tr.noAffinity)
	}
}
