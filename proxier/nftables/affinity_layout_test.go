package nftables

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestAffinityPerServicePort: a Service port with ClientIP affinity gets
// one record chain, reached from every destination of the port (ClusterIP,
// LoadBalancer IP, node IP . NodePort), that writes the client's entry
// under all of them; and pick chains, reached from the same destinations,
// that look the client up for each endpoint: every endpoint for the
// cluster pools, this node's only for the local pools.
func TestAffinityPerServicePort(t *testing.T) {
	s := pt.Service("ns/sticky", proxier.TCP, "10.96.0.7", 80, pt.Affinity(600), pt.NodePort(30007), pt.LoadBalancer("1.2.3.7"), pt.ExternalLocal,
		pt.Endpoints(pt.Endpoint("10.244.1.5", 8080, pt.Local), pt.Endpoint("10.244.2.6", 8080)))
	out := DryRun(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), pt.State(proxier.IPv4, s))
	h := serviceHash(s.Name)
	rec, pick, pickLocal := affinityChainPrefix+h, affinityPickPrefix+h, affinityPickLocalPrefix+h
	lookup := func(ep string) string {
		addr, port, _ := strings.Cut(ep, ":")
		return "meta l4proto tcp ip saddr . ip daddr . th dport . ip daddr & 0.0.0.0 | " + addr + " . th dport & 0 | " + port +
			" @affinity-tcp-600 dnat ip to " + ep
	}
	mustContain(t, "dry run", out,
		"add rule ip svcproxy "+rec+" update @affinity-tcp-600 { ip saddr . 10.96.0.7 . 80 . ip daddr . th dport } "+
			"update @affinity-tcp-600 { ip saddr . 1.2.3.7 . 80 . ip daddr . th dport } "+
			"update @affinity-tcp-600 { ip saddr . 192.168.0.2 . 30007 . ip daddr . th dport }\n",
		"add rule ip svcproxy "+pick+" "+lookup("10.244.1.5:8080")+"\n",
		"add rule ip svcproxy "+pick+" "+lookup("10.244.2.6:8080")+"\n",
		"add rule ip svcproxy "+pickLocal+" "+lookup("10.244.1.5:8080")+"\n",
		"10.96.0.7 . 80 : goto "+rec,
		"1.2.3.7 . 80 : goto "+rec,
		"192.168.0.2 . 30007 : goto "+rec,
		"10.96.0.7 . tcp . 80 : jump "+pick,
		"192.168.0.2 . tcp . 30007 : jump "+pickLocal,
		"add set ip svcproxy affinity-tcp-600 { type ipv4_addr . ipv4_addr . inet_service . ipv4_addr . inet_service ; flags dynamic,timeout ; timeout 600s ; }",
		"add rule ip svcproxy pick-ip ip daddr . meta l4proto . th dport vmap @affinity-dests-pick\n",
		"add rule ip svcproxy pick-np-local ip daddr . meta l4proto . th dport vmap @affinity-dests-pick-local\n",
		"add rule ip svcproxy affinity-record meta l4proto tcp ct original ip daddr . ct original proto-dst vmap @affinity-dests-tcp-600",
	)
	if strings.Contains(out, pickLocal+" "+lookup("10.244.2.6:8080")) {
		t.Error("a remote endpoint is in the local pick chain")
	}
	if t.Failed() {
		t.Log(out)
	}
}

// TestKernelIPv6Affinity: nft (1.0.6 too) writes an IPv6 Service's
// affinity: its record and pick chains and the affinity set are in the
// kernel, and an entry written into the set reads back.
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
	h := serviceHash(s.Name)
	for _, want := range []string{"fd00:10:96::7 . tcp . 80", "fd00:10:96::8 . tcp . 80", "chain " + affinityChainPrefix + h, "chain " + affinityPickPrefix + h,
		"set " + affinitySet(proxier.TCP, 600), "update @" + affinitySet(proxier.TCP, 600)} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	sh(t, "nft", "add", "element", "ip6", TableName, affinitySet(proxier.TCP, 600), "{ fd00::9 . fd00:10:96::7 . 80 . fd00:10:244:1::5 . 8080 timeout 100s }")
	got, err := execReadAffinity(context.Background(), "ip6", affinitySet(proxier.TCP, 600))
	want := affinityEntry{client: netip.MustParseAddr("fd00::9"), dest: netip.MustParseAddrPort("[fd00:10:96::7]:80"), endpoint: netip.MustParseAddrPort("[fd00:10:244:1::5]:8080")}
	if err != nil || len(got) != 1 || got[0].client != want.client || got[0].dest != want.dest || got[0].endpoint != want.endpoint || got[0].expires < 90 {
		t.Errorf("read back %+v, %v; want %+v with about 100s left", got, err, want)
	}
	if t.Failed() {
		t.Log(out)
	}
}
