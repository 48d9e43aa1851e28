package nftables

import (
	"context"
	"slices"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestPolicyChainsFollowThePlan: the rules of every policy chain a
// service port's traffic enters are those the port's own plan gives, for
// every State and Config of the flow table and the golden files. (The
// chains are shared; policyPlans takes their rules from one plan per
// policy.)
func TestPolicyChainsFollowThePlan(t *testing.T) {
	type input struct {
		name string
		cfg  proxier.Config
		st   *proxier.State
	}
	var inputs []input
	for _, f := range pt.Flows(proxier.NFTablesMode) {
		inputs = append(inputs, input{f.Name, f.Config, f.State})
	}
	for _, tc := range goldenCases {
		inputs = append(inputs, input{"golden/" + tc.name, tc.cfg(), tc.st()})
	}
	checked := 0
	for _, in := range inputs {
		tr := newTranslator(in.cfg)
		plan := proxier.MakePlan(tr.cfg, in.st)
		sk := newSkeleton(plan, nil)
		for i := range plan.Services {
			sp := &plan.Services[i]
			chains := []policyChain{policyChainOf(false, false, sp.InternalPolicy)}
			if sp.HasExternal() {
				chains = append(chains, policyChainOf(true, false, sp.ExternalPolicy), policyChainOf(true, true, sp.ExternalPolicy))
			}
			for _, pc := range chains {
				checked++
				if got, want := sk.rules[pc.name], pc.rules(tr.f, sp); !slices.Equal(got, want) {
					t.Errorf("%s: %s: chain %s has %q, the port's plan gives %q", in.name, sp.Svc.Name, pc.name, got, want)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no service port checked")
	}
}

// TestLocalMatch renders each detector's match in both polarities, from
// the one typed value.
func TestLocalMatch(t *testing.T) {
	for _, tc := range []struct {
		name          string
		d             proxier.LocalDetector
		f             proxier.IPFamily
		local, others string
	}{
		{"one CIDR", proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: pt.Prefixes(pt.PodCIDR)}, proxier.IPv4,
			"ip saddr 10.244.0.0/16", "ip saddr != 10.244.0.0/16"},
		{"every CIDR of the family", proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: pt.Prefixes(pt.PodCIDR, pt.PodCIDRv6, "10.245.0.0/16")}, proxier.IPv4,
			"ip saddr { 10.244.0.0/16, 10.245.0.0/16 }", "ip saddr != { 10.244.0.0/16, 10.245.0.0/16 }"},
		{"IPv6 node CIDR", proxier.LocalDetector{Mode: proxier.LocalNodeCIDR, CIDRs: pt.Prefixes(pt.PodCIDR, pt.PodCIDRv6)}, proxier.IPv6,
			"ip6 saddr fd00:10:244::/48", "ip6 saddr != fd00:10:244::/48"},
		{"bridge", proxier.LocalDetector{Mode: proxier.LocalBridgeInterface, Interface: "cbr0"}, proxier.IPv4,
			`iifname "cbr0"`, `iifname != "cbr0"`},
		{"prefix", proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: "veth"}, proxier.IPv4,
			`iifname "veth*"`, `iifname != "veth*"`},
		{"no CIDR of the family", proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: pt.Prefixes(pt.PodCIDRv6)}, proxier.IPv4, "", ""},
		{"none", proxier.LocalDetector{}, proxier.IPv4, "", ""},
	} {
		l := proxier.LocalPodTraffic(tc.d, tc.f)
		f := famOf(tc.f)
		if got := localMatch(f, l); got != tc.local {
			t.Errorf("%s: local %q, want %q", tc.name, got, tc.local)
		}
		if got := localMatch(f, l.Not()); got != tc.others {
			t.Errorf("%s: not local %q, want %q", tc.name, got, tc.others)
		}
	}
}

// TestNodePortMatch: where NodePorts answer, as the plan says. Loopback
// is left out in nftables mode, even when listed in --nodeport-addresses
// with localhost NodePorts on.
func TestNodePortMatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   proxier.Config
		match string
		ips   []string
	}{
		{"every local address", pt.Config(pt.NodeIPs(pt.NodeIP), pt.LocalhostNodePorts), "fib daddr type local ip daddr != 127.0.0.0/8", nil},
		{"IPv6", pt.Config(pt.IPv6, pt.NodeIPs(pt.NodeIPv6)), "fib daddr type local ip6 daddr != ::1", nil},
		{"node IPs in the CIDRs", pt.Config(pt.NodeIPs(pt.NodeIP, "10.1.1.1"), pt.NodePortAddresses("192.168.0.0/24")),
			"ip daddr @nodeport-ips", []string{pt.NodeIP}},
		{"loopback listed", pt.Config(pt.NodeIPs(pt.NodeIP, "127.0.0.1"), pt.NodePortAddresses("127.0.0.0/8", "192.168.0.0/24"), pt.LocalhostNodePorts),
			"ip daddr @nodeport-ips", []string{pt.NodeIP}},
	} {
		tr := newTranslator(tc.cfg)
		sk := newSkeleton(proxier.MakePlan(tr.cfg, &proxier.State{Family: tc.cfg.Family}), nil)
		if got := nodePortMatch(tr.f, proxier.NodePortsOf(tr.cfg)); got != tc.match {
			t.Errorf("%s: match %q, want %q", tc.name, got, tc.match)
		}
		var ips []string
		for _, e := range sk.elems {
			ips = append(ips, e.keyText(mustSpec(e.set)))
		}
		if !slices.Equal(ips, tc.ips) {
			t.Errorf("%s: nodeport-ips %q, want %q", tc.name, ips, tc.ips)
		}
	}
}

// TestIgnoredLoopback: the warning at start names the --nodeport-addresses
// that hold loopback, which nftables mode leaves out.
func TestIgnoredLoopback(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  proxier.Config
		want []string
	}{
		{"every address", pt.Config(pt.NodeIPs(pt.NodeIP), pt.LocalhostNodePorts), nil},
		{"0.0.0.0/0 beside loopback", pt.Config(pt.NodeIPs(pt.NodeIP), pt.NodePortAddresses("127.0.0.0/8", "0.0.0.0/0")), nil},
		{"loopback range", pt.Config(pt.NodeIPs(pt.NodeIP, "127.0.0.1"), pt.NodePortAddresses("127.0.0.0/8", "192.168.0.0/24"), pt.LocalhostNodePorts),
			[]string{"127.0.0.0/8"}},
		{"127.0.0.1 alone", pt.Config(pt.NodeIPs(pt.NodeIP), pt.NodePortAddresses("127.0.0.1/32")), []string{"127.0.0.1/32"}},
		{"IPv6 loopback", pt.Config(pt.IPv6, pt.NodeIPs(pt.NodeIPv6), pt.NodePortAddresses("::1/128", "2001:db8::/64")), []string{"::1/128"}},
		{"other family's loopback", pt.Config(pt.NodeIPs(pt.NodeIP), pt.NodePortAddresses("::1/128", "192.168.0.0/24")), nil},
		{"no loopback", pt.Config(pt.NodeIPs(pt.NodeIP), pt.NodePortAddresses("192.168.0.0/24")), nil},
	} {
		var got []string
		for _, p := range ignoredLoopback(newTranslator(tc.cfg).cfg) {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestKernelLocalMatches: nft and the kernel take the policy chains of
// every detector, with several pod CIDRs an anonymous set in either
// polarity, and list them back as written.
func TestKernelLocalMatches(t *testing.T) {
	_, fd := enterNetns(t)
	for _, tc := range []struct {
		d    proxier.LocalDetector
		want []string
	}{
		// Apart, so that nft does not merge them into one interval.
		{proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: pt.Prefixes(pt.PodCIDR, "10.250.0.0/16")},
			[]string{"ip saddr != { 10.244.0.0/16, 10.250.0.0/16 } jump mark-for-masquerade", "ip saddr { 10.244.0.0/16, 10.250.0.0/16 } goto pick-np"}},
		{proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: "veth"},
			[]string{`iifname != "veth*" jump mark-for-masquerade`, `iifname "veth*" goto pick-ip`}},
	} {
		p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.Detector(tc.d)))
		if err := p.Sync(context.Background(), testState()); err != nil {
			t.Fatalf("%v: %v", tc.d, err)
		}
		mustContain(t, "the kernel's table", sh(t, "nft", "list", "table", "ip", TableName), tc.want...)
	}
}
