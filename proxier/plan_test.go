package proxier

import (
	"net/netip"
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
		if got := MakePlan(tc.cfg, st).Services[0].MasqueradeInternal; got != tc.want {
			t.Errorf("%+v: masquerade = %v, want %v", tc.cfg, got, tc.want)
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
