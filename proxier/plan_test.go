package proxier_test

import (
	"slices"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

func ips(eps []proxier.Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.IP.String())
	}
	return out
}

// plan1 is the plan of a State holding svc alone, under cfg.
func plan1(cfg proxier.Config, svc *proxier.Service) proxier.ServicePlan {
	return proxier.MakePlan(cfg, pt.State(cfg.Family, svc)).Services[0]
}

func TestPlanService(t *testing.T) {
	ep := func(ip string, opts ...pt.EndpointOption) proxier.Endpoint { return pt.Endpoint(ip, 80, opts...) }
	svc := func(opts ...pt.ServiceOption) *proxier.Service {
		return pt.Service("ns/svc", proxier.TCP, "10.96.0.1", 80, opts...)
	}
	for _, tc := range []struct {
		name         string
		svc          *proxier.Service
		nodeZone     string
		wantVerdict  proxier.Verdict
		wantInternal []string
	}{
		{name: "ready endpoints", svc: svc(pt.Endpoints(ep("10.0.0.1"), ep("10.0.0.2", pt.Local))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.1", "10.0.0.2"}},
		{name: "no endpoints rejects", svc: svc(), wantVerdict: proxier.Reject},
		{name: "only not-ready endpoints rejects", svc: svc(pt.Endpoints(ep("10.0.0.1", pt.NotReady))), wantVerdict: proxier.Reject},
		{name: "terminating fallback", svc: svc(pt.Endpoints(ep("10.0.0.1", pt.Terminating), ep("10.0.0.2", pt.Gone))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.1"}},
		{name: "ready beats terminating", svc: svc(pt.Endpoints(ep("10.0.0.1", pt.Terminating), ep("10.0.0.2"))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.2"}},
		{name: "itp local uses local", svc: svc(pt.InternalLocal, pt.Endpoints(ep("10.0.0.1"), ep("10.0.0.2", pt.Local))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.2"}},
		{name: "itp local without local drops", svc: svc(pt.InternalLocal, pt.Endpoints(ep("10.0.0.1"))),
			wantVerdict: proxier.Drop},
		{name: "itp local terminating local fallback", svc: svc(pt.InternalLocal, pt.Endpoints(ep("10.0.0.1"), ep("10.0.0.2", pt.Local, pt.Terminating))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.2"}},
		{name: "zone hints", nodeZone: "a", svc: svc(pt.Endpoints(ep("10.0.0.1", pt.ZoneHints("a")), ep("10.0.0.2", pt.ZoneHints("b")))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.1"}},
		{name: "zone hints not for us: no filtering", nodeZone: "c", svc: svc(pt.Endpoints(ep("10.0.0.1", pt.ZoneHints("a")), ep("10.0.0.2", pt.ZoneHints("b")))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.1", "10.0.0.2"}},
		{name: "partial hints: no filtering", nodeZone: "a", svc: svc(pt.Endpoints(ep("10.0.0.1", pt.ZoneHints("a")), ep("10.0.0.2"))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.1", "10.0.0.2"}},
		{name: "node hints", nodeZone: "a", svc: svc(pt.Endpoints(
			ep("10.0.0.1", pt.NodeHints(pt.OtherNode), pt.ZoneHints("a")), ep("10.0.0.2", pt.NodeHints(pt.NodeName), pt.ZoneHints("a")))),
			wantVerdict: proxier.Forward, wantInternal: []string{"10.0.0.2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := pt.State(proxier.IPv4, tc.svc)
			st.NodeZone = tc.nodeZone
			sp := proxier.MakePlan(proxier.Config{}, st).Services[0]
			if sp.Internal != tc.wantVerdict {
				t.Errorf("verdict = %v, want %v", sp.Internal, tc.wantVerdict)
			}
			if got := ips(sp.InternalEndpoints); !slices.Equal(got, tc.wantInternal) {
				t.Errorf("internal endpoints = %v, want %v", got, tc.wantInternal)
			}
		})
	}
}

func TestMasqueradePlan(t *testing.T) {
	svc := pt.Service("ns/svc", proxier.TCP, "10.96.0.1", 80, pt.Endpoints(pt.Endpoint("10.0.0.1", 80)))
	for _, tc := range []struct {
		cfg  proxier.Config
		want proxier.MasqueradeMode
	}{
		{pt.Config(pt.NoDetector), proxier.MasqueradeNone},
		{pt.Config(), proxier.MasqueradeNonLocal},
		{pt.Config(pt.MasqueradeAll), proxier.MasqueradeAll},
		{pt.Config(pt.NoDetector, pt.MasqueradeAll), proxier.MasqueradeAll},
	} {
		sp := plan1(tc.cfg, svc)
		if got := sp.MasqueradeInternal; got != tc.want {
			t.Errorf("%+v: masquerade = %v, want %v", tc.cfg, got, tc.want)
		}
		if m := sp.MasqueradeInternalMatch; (tc.want == proxier.MasqueradeNonLocal) != (m.Implemented() && m.Negate) {
			t.Errorf("%+v: masquerade match = %+v", tc.cfg, m)
		}
	}
}

func TestMasqueradeMark(t *testing.T) {
	for bit, want := range map[int]string{14: "0x00004000", 0: "0x00000001", 31: "0x80000000"} {
		if got := (proxier.Config{MasqueradeBit: bit}).MasqueradeMark(); got != want {
			t.Errorf("bit %d: %s, want %s", bit, got, want)
		}
	}
}

func TestLocalPodTraffic(t *testing.T) {
	p := pt.Prefixes
	for _, tc := range []struct {
		name string
		d    proxier.LocalDetector
		f    proxier.IPFamily
		want proxier.LocalTraffic
	}{
		{"none", proxier.LocalDetector{}, proxier.IPv4, proxier.LocalTraffic{}},
		{"every CIDR of the family", proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: p("10.0.0.0/8", "fd00::/64", "172.16.0.0/12")}, proxier.IPv4,
			proxier.LocalTraffic{Mode: proxier.LocalClusterCIDR, CIDRs: p("10.0.0.0/8", "172.16.0.0/12")}},
		{"proxier.IPv6", proxier.LocalDetector{Mode: proxier.LocalNodeCIDR, CIDRs: p("10.0.0.0/8", "fd00::/64")}, proxier.IPv6,
			proxier.LocalTraffic{Mode: proxier.LocalNodeCIDR, CIDRs: p("fd00::/64")}},
		{"no CIDR of the family", proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: p("fd00::/64")}, proxier.IPv4, proxier.LocalTraffic{}},
		{"bridge", proxier.LocalDetector{Mode: proxier.LocalBridgeInterface, Interface: "cbr0"}, proxier.IPv4, proxier.LocalTraffic{Mode: proxier.LocalBridgeInterface, Interface: "cbr0"}},
		{"prefix without a name", proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix}, proxier.IPv4, proxier.LocalTraffic{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := proxier.LocalPodTraffic(tc.d, tc.f)
			if got.Mode != tc.want.Mode || got.Interface != tc.want.Interface || got.Negate || !slices.Equal(got.CIDRs, tc.want.CIDRs) {
				t.Errorf("proxier.LocalPodTraffic = %+v, want %+v", got, tc.want)
			}
			if got.Implemented() != (tc.want.Mode != proxier.LocalNone) {
				t.Errorf("Implemented = %v", got.Implemented())
			}
		})
	}
}

func TestLocalTrafficMatches(t *testing.T) {
	cidr := proxier.LocalTraffic{Mode: proxier.LocalClusterCIDR, CIDRs: pt.Prefixes("10.0.0.0/16", "10.1.0.0/16")}
	bridge := proxier.LocalTraffic{Mode: proxier.LocalBridgeInterface, Interface: "cbr0"}
	for _, tc := range []struct {
		name  string
		m     proxier.LocalTraffic
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
		{"not implemented never matches", proxier.LocalTraffic{}, "10.0.3.4", true, false},
		{"negated not implemented never matches", proxier.LocalTraffic{}.Not(), "10.0.3.4", true, false},
	} {
		if got := tc.m.Matches(pt.Addr(tc.src), tc.viaIf); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestNodePortsOf(t *testing.T) {
	ips := pt.NodeIPs("192.168.0.2", "127.0.0.1", "10.1.1.1", "2001:db8::1")
	lo4, lo6 := pt.Prefix("127.0.0.0/8"), pt.Prefix("::1/128")
	for _, tc := range []struct {
		name string
		cfg  proxier.Config
		want proxier.NodePorts
	}{
		{"all, localhost", pt.Config(ips, pt.LocalhostNodePorts), proxier.NodePorts{AllLocal: true, Localhost: true, Loopback: lo4}},
		{"all, nftables mode", pt.Config(ips, pt.LocalhostNodePorts, pt.Mode(proxier.NFTablesMode)), proxier.NodePorts{AllLocal: true, Loopback: lo4}},
		{"all v6", pt.Config(pt.IPv6, ips, pt.LocalhostNodePorts), proxier.NodePorts{AllLocal: true, Loopback: lo6}},
		{"cidrs without loopback", pt.Config(ips, pt.LocalhostNodePorts, pt.NodePortAddresses("192.168.0.0/24")),
			proxier.NodePorts{IPs: pt.Addrs("192.168.0.2"), Loopback: lo4}},
		{"cidrs with loopback", pt.Config(ips, pt.LocalhostNodePorts, pt.NodePortAddresses("192.168.0.0/24", "127.0.0.0/8")),
			proxier.NodePorts{IPs: pt.Addrs("127.0.0.1", "192.168.0.2"), Localhost: true, Loopback: lo4}},
		{"cidrs with loopback, localhost off", pt.Config(ips, pt.NodePortAddresses("192.168.0.0/24", "127.0.0.0/8")),
			proxier.NodePorts{IPs: pt.Addrs("192.168.0.2"), Loopback: lo4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := proxier.NodePortsOf(tc.cfg)
			if got.AllLocal != tc.want.AllLocal || got.Localhost != tc.want.Localhost || got.Loopback != tc.want.Loopback || !slices.Equal(got.IPs, tc.want.IPs) {
				t.Errorf("proxier.NodePortsOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestExternalPlan(t *testing.T) {
	local, remote := pt.Endpoint("10.244.1.1", 80, pt.Local), pt.Endpoint("10.244.2.1", 80)
	cfg := pt.Config(pt.NodeIPs("192.168.0.2", "192.168.1.2"))
	svc := func(opts ...pt.ServiceOption) *proxier.Service {
		return pt.Service("ns/svc", proxier.TCP, "10.96.0.1", 80, opts...)
	}
	for _, tc := range []struct {
		name         string
		svc          *proxier.Service
		cfg          proxier.Config
		masqExternal bool
		shortCircuit proxier.ShortCircuit
		affinity     []string
	}{
		{name: "cluster IP only", svc: svc(pt.Endpoints(local)), cfg: cfg},
		{name: "node port, cluster", svc: svc(pt.NodePort(30001), pt.Endpoints(local)), cfg: cfg, masqExternal: true},
		{name: "node port, local", svc: svc(pt.NodePort(30001), pt.ExternalLocal, pt.Endpoints(remote)), cfg: cfg,
			shortCircuit: proxier.ShortCircuit{Pods: proxier.LocalPodTraffic(cfg.LocalDetector, proxier.IPv4), Node: true}},
		{name: "local without detector", svc: svc(pt.ExternalIPs("192.168.99.1"), pt.ExternalLocal, pt.Endpoints(remote)),
			cfg: pt.Config(pt.NoDetector), shortCircuit: proxier.ShortCircuit{Node: true}},
		{name: "affinity destinations", svc: svc(pt.NodePort(30001), pt.Affinity(60), pt.ExternalIPs("192.168.99.1"), pt.LoadBalancer("1.2.3.4"), pt.Endpoints(local)),
			cfg: cfg, masqExternal: true,
			affinity: []string{"10.96.0.1:80", "192.168.99.1:80", "1.2.3.4:80", "192.168.0.2:30001", "192.168.1.2:30001"}},
		{name: "affinity on the NodePort addresses only", svc: svc(pt.NodePort(30001), pt.Affinity(60), pt.Endpoints(local)),
			cfg: pt.Config(pt.NodeIPs("192.168.0.2", "192.168.1.2"), pt.NodePortAddresses("192.168.1.0/24")), masqExternal: true,
			affinity: []string{"10.96.0.1:80", "192.168.1.2:30001"}},
		{name: "no affinity without endpoints", svc: svc(pt.Affinity(60)), cfg: cfg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := plan1(tc.cfg, tc.svc)
			if sp.MasqueradeExternal != tc.masqExternal {
				t.Errorf("MasqueradeExternal = %v, want %v", sp.MasqueradeExternal, tc.masqExternal)
			}
			if got := sp.ShortCircuit; got.Node != tc.shortCircuit.Node || got.Pods.Mode != tc.shortCircuit.Pods.Mode || !slices.Equal(got.Pods.CIDRs, tc.shortCircuit.Pods.CIDRs) {
				t.Errorf("proxier.ShortCircuit = %+v, want %+v", got, tc.shortCircuit)
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
