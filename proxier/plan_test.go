package proxier

import (
	"net/netip"
	"slices"
	"testing"
)

func mkEp(ip string, local, ready, serving, terminating bool) Endpoint {
	return Endpoint{IP: netip.MustParseAddr(ip), Port: 80, IsLocal: local, Ready: ready, Serving: serving, Terminating: terminating}
}

func ips(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.IP.String())
	}
	return out
}

func TestPlanService(t *testing.T) {
	ready := func(ip string, local bool) Endpoint { return mkEp(ip, local, true, true, false) }
	term := func(ip string, local bool) Endpoint { return mkEp(ip, local, false, true, true) }
	for _, tc := range []struct {
		name         string
		svc          Service
		nodeZone     string
		wantVerdict  Verdict
		wantInternal []string
	}{
		{name: "ready endpoints", svc: Service{Endpoints: []Endpoint{ready("10.0.0.1", false), ready("10.0.0.2", true)}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.1", "10.0.0.2"}},
		{name: "no endpoints rejects", svc: Service{}, wantVerdict: Reject},
		{name: "only not-ready endpoints rejects", svc: Service{Endpoints: []Endpoint{mkEp("10.0.0.1", false, false, false, false)}}, wantVerdict: Reject},
		{name: "terminating fallback", svc: Service{Endpoints: []Endpoint{term("10.0.0.1", false), mkEp("10.0.0.2", false, false, false, true)}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.1"}},
		{name: "ready beats terminating", svc: Service{Endpoints: []Endpoint{term("10.0.0.1", false), ready("10.0.0.2", false)}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.2"}},
		{name: "itp local uses local", svc: Service{InternalPolicyLocal: true, Endpoints: []Endpoint{ready("10.0.0.1", false), ready("10.0.0.2", true)}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.2"}},
		{name: "itp local without local drops", svc: Service{InternalPolicyLocal: true, Endpoints: []Endpoint{ready("10.0.0.1", false)}},
			wantVerdict: Drop},
		{name: "itp local terminating local fallback", svc: Service{InternalPolicyLocal: true, Endpoints: []Endpoint{ready("10.0.0.1", false), term("10.0.0.2", true)}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.2"}},
		{name: "zone hints", nodeZone: "a", svc: Service{Endpoints: []Endpoint{
			{IP: netip.MustParseAddr("10.0.0.1"), Ready: true, Serving: true, ZoneHints: []string{"a"}},
			{IP: netip.MustParseAddr("10.0.0.2"), Ready: true, Serving: true, ZoneHints: []string{"b"}}}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.1"}},
		{name: "zone hints not for us: no filtering", nodeZone: "c", svc: Service{Endpoints: []Endpoint{
			{IP: netip.MustParseAddr("10.0.0.1"), Ready: true, Serving: true, ZoneHints: []string{"a"}},
			{IP: netip.MustParseAddr("10.0.0.2"), Ready: true, Serving: true, ZoneHints: []string{"b"}}}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.1", "10.0.0.2"}},
		{name: "partial hints: no filtering", nodeZone: "a", svc: Service{Endpoints: []Endpoint{
			{IP: netip.MustParseAddr("10.0.0.1"), Ready: true, Serving: true, ZoneHints: []string{"a"}},
			{IP: netip.MustParseAddr("10.0.0.2"), Ready: true, Serving: true}}},
			wantVerdict: Forward, wantInternal: []string{"10.0.0.1", "10.0.0.2"}},
		{name: "node hints", svc: Service{Endpoints: []Endpoint{
			{IP: netip.MustParseAddr("10.0.0.1"), Ready: true, Serving: true, NodeHints: []string{"other"}, ZoneHints: []string{"a"}},
			{IP: netip.MustParseAddr("10.0.0.2"), Ready: true, Serving: true, NodeHints: []string{"me"}, ZoneHints: []string{"a"}}}},
			nodeZone: "a", wantVerdict: Forward, wantInternal: []string{"10.0.0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &State{NodeName: "me", NodeZone: tc.nodeZone, Services: []*Service{&tc.svc}}
			p := MakePlan(Config{}, st)
			sp := p.Services[0]
			if sp.Internal != tc.wantVerdict {
				t.Errorf("verdict = %v, want %v", sp.Internal, tc.wantVerdict)
			}
			if got := ips(sp.InternalEndpoints); len(got) != len(tc.wantInternal) || (len(got) > 0 && !equal(got, tc.wantInternal)) {
				t.Errorf("internal endpoints = %v, want %v", got, tc.wantInternal)
			}
		})
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMasqueradePlan(t *testing.T) {
	st := &State{Services: []*Service{{Endpoints: []Endpoint{mkEp("10.0.0.1", false, true, true, false)}}}}
	cidr := LocalDetector{Mode: LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	for _, tc := range []struct {
		cfg  Config
		want MasqueradeMode
	}{
		{Config{}, MasqueradeNone},
		{Config{LocalDetector: cidr}, MasqueradeNonLocal},
		{Config{LocalDetector: cidr, MasqueradeAll: true}, MasqueradeAll},
		{Config{MasqueradeAll: true}, MasqueradeAll},
	} {
		sp := MakePlan(tc.cfg, st).Services[0]
		if got := sp.MasqueradeInternal; got != tc.want {
			t.Errorf("%+v: masquerade = %v, want %v", tc.cfg, got, tc.want)
		}
		if m := sp.MasqueradeInternalMatch; (tc.want == MasqueradeNonLocal) != (m.Implemented() && m.Negate) {
			t.Errorf("%+v: masquerade match = %+v", tc.cfg, m)
		}
	}
}

func TestMasqueradeMark(t *testing.T) {
	for bit, want := range map[int]string{14: "0x00004000", 0: "0x00000001", 31: "0x80000000"} {
		if got := (Config{MasqueradeBit: bit}).MasqueradeMark(); got != want {
			t.Errorf("bit %d: %s, want %s", bit, got, want)
		}
	}
}

func TestLocalPodTraffic(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		d    LocalDetector
		f    IPFamily
		want LocalTraffic
	}{
		{"none", LocalDetector{}, IPv4, LocalTraffic{}},
		{"every CIDR of the family", LocalDetector{Mode: LocalClusterCIDR, CIDRs: []netip.Prefix{p("10.0.0.0/8"), p("fd00::/64"), p("172.16.0.0/12")}}, IPv4,
			LocalTraffic{Mode: LocalClusterCIDR, CIDRs: []netip.Prefix{p("10.0.0.0/8"), p("172.16.0.0/12")}}},
		{"IPv6", LocalDetector{Mode: LocalNodeCIDR, CIDRs: []netip.Prefix{p("10.0.0.0/8"), p("fd00::/64")}}, IPv6,
			LocalTraffic{Mode: LocalNodeCIDR, CIDRs: []netip.Prefix{p("fd00::/64")}}},
		{"no CIDR of the family", LocalDetector{Mode: LocalClusterCIDR, CIDRs: []netip.Prefix{p("fd00::/64")}}, IPv4, LocalTraffic{}},
		{"bridge", LocalDetector{Mode: LocalBridgeInterface, Interface: "cbr0"}, IPv4, LocalTraffic{Mode: LocalBridgeInterface, Interface: "cbr0"}},
		{"prefix without a name", LocalDetector{Mode: LocalInterfacePrefix}, IPv4, LocalTraffic{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := LocalPodTraffic(tc.d, tc.f)
			if got.Mode != tc.want.Mode || got.Interface != tc.want.Interface || got.Negate || !slices.Equal(got.CIDRs, tc.want.CIDRs) {
				t.Errorf("LocalPodTraffic = %+v, want %+v", got, tc.want)
			}
			if got.Implemented() != (tc.want.Mode != LocalNone) {
				t.Errorf("Implemented = %v", got.Implemented())
			}
		})
	}
}

func TestLocalTrafficMatches(t *testing.T) {
	a := netip.MustParseAddr
	cidr := LocalTraffic{Mode: LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.1.0.0/16")}}
	bridge := LocalTraffic{Mode: LocalBridgeInterface, Interface: "cbr0"}
	for _, tc := range []struct {
		name  string
		m     LocalTraffic
		src   string
		viaIf bool
		want  bool
	}{
		{"first CIDR", cidr, "10.0.3.4", false, true},
		{"second CIDR", cidr, "10.1.3.4", false, true},
		{"outside", cidr, "192.168.0.2", true, false},
		{"negated outside", cidr.Not(), "192.168.0.2", false, true},
		{"negated inside", cidr.Not(), "10.1.3.4", false, false},
		{"bridge", bridge, "192.168.0.2", true, true},
		{"not via bridge", bridge, "10.0.3.4", false, false},
		{"negated bridge", bridge.Not(), "10.0.3.4", false, true},
		{"not implemented never matches", LocalTraffic{}, "10.0.3.4", true, false},
		{"negated not implemented never matches", LocalTraffic{}.Not(), "10.0.3.4", true, false},
	} {
		if got := tc.m.Matches(a(tc.src), tc.viaIf); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNodePortsOf(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	ips := []netip.Addr{a("192.168.0.2"), a("127.0.0.1"), a("10.1.1.1"), a("2001:db8::1")}
	for _, tc := range []struct {
		name string
		cfg  Config
		want NodePorts
	}{
		{"all, localhost", Config{Family: IPv4, NodeIPs: ips, LocalhostNodePorts: true},
			NodePorts{AllLocal: true, Localhost: true, Loopback: p("127.0.0.0/8")}},
		{"all, nftables mode", Config{Family: IPv4, NodeIPs: ips, LocalhostNodePorts: true, Mode: NFTablesMode},
			NodePorts{AllLocal: true, Loopback: p("127.0.0.0/8")}},
		{"all v6", Config{Family: IPv6, NodeIPs: ips, LocalhostNodePorts: true},
			NodePorts{AllLocal: true, Loopback: p("::1/128")}},
		{"cidrs without loopback", Config{Family: IPv4, NodeIPs: ips, LocalhostNodePorts: true, NodePortAddresses: []netip.Prefix{p("192.168.0.0/24")}},
			NodePorts{IPs: []netip.Addr{a("192.168.0.2")}, Loopback: p("127.0.0.0/8")}},
		{"cidrs with loopback", Config{Family: IPv4, NodeIPs: ips, LocalhostNodePorts: true, NodePortAddresses: []netip.Prefix{p("192.168.0.0/24"), p("127.0.0.0/8")}},
			NodePorts{IPs: []netip.Addr{a("127.0.0.1"), a("192.168.0.2")}, Localhost: true, Loopback: p("127.0.0.0/8")}},
		{"cidrs with loopback, localhost off", Config{Family: IPv4, NodeIPs: ips, NodePortAddresses: []netip.Prefix{p("192.168.0.0/24"), p("127.0.0.0/8")}},
			NodePorts{IPs: []netip.Addr{a("192.168.0.2")}, Loopback: p("127.0.0.0/8")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NodePortsOf(tc.cfg)
			if got.AllLocal != tc.want.AllLocal || got.Localhost != tc.want.Localhost || got.Loopback != tc.want.Loopback || !slices.Equal(got.IPs, tc.want.IPs) {
				t.Errorf("NodePortsOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestExternalPlan(t *testing.T) {
	a := netip.MustParseAddr
	local, remote := mkEp("10.0.1.1", true, true, true, false), mkEp("10.0.2.1", false, true, true, false)
	cidr := LocalDetector{Mode: LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	cfg := Config{Family: IPv4, LocalDetector: cidr, NodeIPs: []netip.Addr{a("192.168.0.2"), a("192.168.1.2")}}
	for _, tc := range []struct {
		name         string
		svc          Service
		cfg          Config
		masqExternal bool
		shortCircuit ShortCircuit
		affinity     []string
	}{
		{name: "cluster IP only", svc: Service{Endpoints: []Endpoint{local}}, cfg: cfg},
		{name: "node port, cluster", svc: Service{NodePort: 30001, Endpoints: []Endpoint{local}}, cfg: cfg, masqExternal: true},
		{name: "node port, local", svc: Service{NodePort: 30001, ExternalPolicyLocal: true, Endpoints: []Endpoint{remote}}, cfg: cfg,
			shortCircuit: ShortCircuit{Pods: LocalPodTraffic(cidr, IPv4), Node: true}},
		{name: "local without detector", svc: Service{ExternalIPs: []netip.Addr{a("192.168.99.1")}, ExternalPolicyLocal: true, Endpoints: []Endpoint{remote}},
			cfg: Config{Family: IPv4}, shortCircuit: ShortCircuit{Node: true}},
		{name: "affinity destinations", svc: Service{ClusterIP: a("172.30.0.1"), Port: 80, NodePort: 30001, AffinityTimeoutSeconds: 60,
			ExternalIPs: []netip.Addr{a("192.168.99.1")}, LoadBalancerIPs: []netip.Addr{a("1.2.3.4")}, Endpoints: []Endpoint{local}}, cfg: cfg, masqExternal: true,
			affinity: []string{"172.30.0.1:80", "192.168.99.1:80", "1.2.3.4:80", "192.168.0.2:30001", "192.168.1.2:30001"}},
		{name: "affinity on the NodePort addresses only", svc: Service{ClusterIP: a("172.30.0.1"), Port: 80, NodePort: 30001, AffinityTimeoutSeconds: 60, Endpoints: []Endpoint{local}},
			cfg: func() Config {
				c := cfg
				c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}
				return c
			}(), masqExternal: true,
			affinity: []string{"172.30.0.1:80", "192.168.1.2:30001"}},
		{name: "no affinity without endpoints", svc: Service{ClusterIP: a("172.30.0.1"), Port: 80, AffinityTimeoutSeconds: 60}, cfg: cfg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := MakePlan(tc.cfg, &State{Family: IPv4, Services: []*Service{&tc.svc}}).Services[0]
			if sp.MasqueradeExternal != tc.masqExternal {
				t.Errorf("MasqueradeExternal = %v, want %v", sp.MasqueradeExternal, tc.masqExternal)
			}
			if got := sp.ShortCircuit; got.Node != tc.shortCircuit.Node || got.Pods.Mode != tc.shortCircuit.Pods.Mode || !slices.Equal(got.Pods.CIDRs, tc.shortCircuit.Pods.CIDRs) {
				t.Errorf("ShortCircuit = %+v, want %+v", got, tc.shortCircuit)
			}
			var dests []string
			for _, d := range sp.Affinity.Destinations {
				dests = append(dests, d.String())
			}
			if !slices.Equal(dests, tc.affinity) || sp.Affinity.Enabled() != (tc.affinity != nil) {
				t.Errorf("affinity destinations = %v (enabled %v), want %v", dests, sp.Affinity.Enabled(), tc.affinity)
			}
			for _, e := range sp.AllEndpoints {
				if !sp.IsHairpin(e) {
					t.Errorf("endpoint %v is not hairpin-masqueraded", e)
				}
			}
		})
	}
}
