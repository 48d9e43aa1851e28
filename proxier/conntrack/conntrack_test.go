package conntrack

import (
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

func TestStale(t *testing.T) {
	ep := func(ip string, serving bool) proxier.Endpoint {
		return proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 53, Ready: serving, Serving: serving}
	}
	dns := &proxier.Service{Name: proxier.ServicePortName{Name: "dns"}, Protocol: proxier.UDP, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 53,
		NodePort: 30053, ExternalIPs: []netip.Addr{netip.MustParseAddr("192.168.99.1")},
		Endpoints: []proxier.Endpoint{ep("10.244.1.2", true), ep("10.244.1.3", false)}}
	web := &proxier.Service{Name: proxier.ServicePortName{Name: "web"}, Protocol: proxier.TCP, ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80,
		Endpoints: []proxier.Endpoint{ep("10.244.1.2", true)}}
	empty := &proxier.Service{Name: proxier.ServicePortName{Name: "empty"}, Protocol: proxier.UDP, ClusterIP: netip.MustParseAddr("10.96.0.12"), Port: 53}
	tg := TargetsFromPlan(proxier.MakePlan(proxier.Config{}, &proxier.State{Services: []*proxier.Service{dns, web, empty}}))

	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		e     Entry
		stale bool
	}{
		{"to serving endpoint", Entry{17, ap("10.96.0.10:53"), a("10.244.1.2")}, false},
		{"to removed endpoint", Entry{17, ap("10.96.0.10:53"), a("10.244.9.9")}, true},
		{"to not-serving endpoint", Entry{17, ap("10.96.0.10:53"), a("10.244.1.3")}, true},
		{"never DNATed (was rejected)", Entry{17, ap("10.96.0.10:53"), a("10.96.0.10")}, true},
		{"external IP, removed endpoint", Entry{17, ap("192.168.99.1:53"), a("10.244.9.9")}, true},
		{"nodeport, removed endpoint", Entry{17, ap("192.168.0.2:30053"), a("10.244.9.9")}, true},
		{"nodeport, serving", Entry{17, ap("192.168.0.2:30053"), a("10.244.1.2")}, false},
		{"nodeport port, not DNATed", Entry{17, ap("192.168.0.2:30053"), a("192.168.0.2")}, false},
		{"other port of the ClusterIP", Entry{17, ap("10.96.0.10:54"), a("10.244.9.9")}, false},
		{"tcp is left alone", Entry{6, ap("10.96.0.11:80"), a("10.244.9.9")}, false},
		{"udp service without endpoints is left alone", Entry{17, ap("10.96.0.12:53"), a("10.96.0.12")}, false},
	} {
		if got := tg.Stale(tc.e); got != tc.stale {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.stale)
		}
	}
}

func TestNeeded(t *testing.T) {
	udp := &proxier.Service{Protocol: proxier.UDP}
	tcp := &proxier.Service{Protocol: proxier.TCP}
	plan := func(s ...*proxier.Service) *proxier.Plan {
		return proxier.MakePlan(proxier.Config{}, &proxier.State{Services: s})
	}
	c := NewCleaner(proxier.IPv4, nil)
	if !c.Needed(plan(tcp)) {
		t.Error("first run must be needed")
	}
	c.udp = udpServices(plan(udp, tcp))
	if c.Needed(plan(udp, &proxier.Service{Protocol: proxier.TCP})) {
		t.Error("a TCP change must not trigger cleanup")
	}
	udp2 := *udp
	if !c.Needed(plan(&udp2, tcp)) {
		t.Error("a changed UDP service must trigger cleanup")
	}
	if !c.Needed(plan(tcp)) {
		t.Error("a removed UDP service must trigger cleanup")
	}
}
