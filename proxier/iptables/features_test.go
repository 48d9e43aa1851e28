package iptables

import (
	"context"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// featureState has one service port per external feature.
func featureState() *proxier.State {
	return pt.State(proxier.IPv4,
		pt.Service("ns/extip", proxier.UDP, "10.96.1.2", 53, pt.ExternalIPs("192.168.99.11"), pt.Endpoints(pt.Endpoint("10.244.2.3", 53))),
		pt.Service("ns/lb:https", proxier.TCP, "10.96.1.3", 443, pt.NodePort(30443), pt.LoadBalancer("1.2.3.4"),
			pt.SourceRanges("203.0.113.0/25", "192.168.0.0/24"), pt.ExternalLocal, pt.HealthCheck(31000),
			pt.Endpoints(pt.Endpoint("10.244.1.3", 8443, pt.Local), pt.Endpoint("10.244.2.4", 8443))),
		pt.Service("ns/lb-empty", proxier.TCP, "10.96.1.5", 80, pt.NodePort(30082), pt.LoadBalancer("9.10.11.12")),
		pt.Service("ns/lb-nolocal", proxier.TCP, "10.96.1.4", 80, pt.NodePort(30081), pt.LoadBalancer("5.6.7.8"), pt.ExternalLocal, pt.HealthCheck(31001),
			pt.Endpoints(pt.Endpoint("10.244.2.5", 8080))),
		pt.Service("ns/nodeport", proxier.TCP, "10.96.1.1", 80, pt.NodePort(30080),
			pt.Endpoints(pt.Endpoint("10.244.1.2", 8080), pt.Endpoint("10.244.2.2", 8080))),
		pt.Service("ns/sticky", proxier.TCP, "10.96.1.6", 80, pt.Affinity(10800),
			pt.Endpoints(pt.Endpoint("10.244.1.4", 8080), pt.Endpoint("10.244.2.6", 8080))),
	)
}

func featureConfig() proxier.Config {
	return pt.Config(pt.NodeIPs("192.168.0.2"), pt.LocalhostNodePorts)
}

func TestRenderFeaturesGolden(t *testing.T) {
	got := string(DryRun(featureConfig(), Options{RandomFully: true}, featureState()))
	checkConsistent(t, got)
	pt.Golden(t, filepath.Join("testdata", "features.golden"), got)
}

func TestNodePortAddresses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		family proxier.IPFamily
		cidrs  []netip.Prefix
		lh     bool
		want   []string // KUBE-NODEPORTS dispatch rule tails
	}{
		{name: "all, localhost on", family: proxier.IPv4, lh: true, want: []string{"-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"}},
		{name: "all, localhost off", family: proxier.IPv4, want: []string{"-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"}},
		{name: "all v6", family: proxier.IPv6, lh: true, want: []string{"-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"}},
		{name: "cidr", family: proxier.IPv4, cidrs: []netip.Prefix{pt.Prefix("192.168.0.0/24"), pt.Prefix("127.0.0.0/8")}, lh: false,
			want: []string{"-d 192.168.0.2 -j KUBE-NODEPORTS"}},
		{name: "cidr with loopback", family: proxier.IPv4, cidrs: []netip.Prefix{pt.Prefix("192.168.0.0/24"), pt.Prefix("127.0.0.0/8")}, lh: true,
			want: []string{"-d 127.0.0.1 -j KUBE-NODEPORTS", "-d 192.168.0.2 -j KUBE-NODEPORTS"}},
		{name: "other family only = all", family: proxier.IPv4, cidrs: []netip.Prefix{pt.Prefix("fd00::/64")}, lh: true,
			want: []string{"-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"}},
		{name: "0.0.0.0/0 = all", family: proxier.IPv4, cidrs: []netip.Prefix{pt.Prefix("0.0.0.0/0"), pt.Prefix("192.168.0.0/24")},
			want: []string{"-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := proxier.Config{Family: tc.family, MasqueradeBit: 14, NodePortAddresses: tc.cidrs, LocalhostNodePorts: tc.lh,
				NodeIPs: []netip.Addr{pt.Addr("192.168.0.2"), pt.Addr("127.0.0.1"), pt.Addr("10.1.1.1")}}
			rs := Render(proxier.MakePlan(cfg, &proxier.State{Family: tc.family}), Options{})
			var got []string
			for _, r := range rs.NAT[0].Rules {
				if strings.Contains(r, "KUBE-NODEPORTS") {
					got = append(got, r[strings.Index(r, "chain\" ")+len("chain\" "):])
				}
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("dispatch rules (-want +got):\n%s", d)
			}
		})
	}
}

var (
	reChainDecl = regexp.MustCompile(`^:(\S+) `)
	reJump      = regexp.MustCompile(`-j (KUBE-\S+)`)
	reAppend    = regexp.MustCompile(`^-A (\S+) `)
)

// checkConsistent checks that every KUBE-* jump target is declared in the
// same table and every declared per-service chain is used.
func checkConsistent(t *testing.T, restore string) {
	t.Helper()
	for _, table := range strings.Split(restore, "COMMIT\n") {
		declared, used := map[string]bool{}, map[string]bool{}
		for _, l := range strings.Split(table, "\n") {
			if m := reChainDecl.FindStringSubmatch(l); m != nil {
				declared[m[1]] = true
			}
			if m := reJump.FindStringSubmatch(l); m != nil {
				used[m[1]] = true
				if !declared[m[1]] {
					t.Errorf("jump to undeclared chain %s: %s", m[1], l)
				}
			}
			if m := reAppend.FindStringSubmatch(l); m != nil && !declared[m[1]] && strings.HasPrefix(m[1], "KUBE-") {
				t.Errorf("rule in undeclared chain %s", m[1])
			}
		}
		for c := range declared {
			if IsServiceChain(c) && !used[c] {
				t.Errorf("chain %s declared but never jumped to", c)
			}
		}
	}
}

func TestKernelApplyFeatures(t *testing.T) {
	ns := kernelNetns(t)
	run, bin := nsRunner(ns)
	p := New(featureConfig(), Options{RandomFully: true, DropInvalid: true}, run)
	if err := p.Sync(context.Background(), featureState()); err != nil {
		t.Fatalf("kernel rejected the feature ruleset: %v", err)
	}
	dump := save(t, ns, bin)
	for _, want := range []string{"KUBE-FW-", "KUBE-EXT-", "KUBE-SVL-", "--rcheck", "KUBE-FIREWALL", "--dport 31000 -j ACCEPT"} {
		if !strings.Contains(dump, want) {
			t.Errorf("kernel ruleset lacks %q", want)
		}
	}
	// The rules svcproxy reads back are its own: a restart converges
	// without rewriting jumps.
	p2 := New(featureConfig(), Options{RandomFully: true, DropInvalid: true}, run)
	if err := p2.Sync(context.Background(), featureState()); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(save(t, ns, bin), "-j KUBE-FIREWALL"); n != 2 {
		t.Errorf("%d jumps to KUBE-FIREWALL after restart, want 2", n)
	}
}
