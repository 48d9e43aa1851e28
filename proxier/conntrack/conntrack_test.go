package conntrack

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
)

var (
	ap = netip.MustParseAddrPort
	ip = netip.MustParseAddr
)

func ep(addrPort string, serving bool) proxier.Endpoint {
	a := ap(addrPort)
	return proxier.Endpoint{IP: a.Addr(), Port: int32(a.Port()), Ready: serving, Serving: serving}
}

func udpService(name, clusterIP string, port, nodePort int32, eps ...proxier.Endpoint) *proxier.Service {
	return &proxier.Service{Name: proxier.ServicePortName{Name: name}, Protocol: proxier.UDP, ClusterIP: ip(clusterIP), Port: port,
		NodePort: nodePort, Endpoints: eps}
}

func plan(s ...*proxier.Service) *proxier.Plan {
	return proxier.MakePlan(proxier.Config{}, &proxier.State{Services: s})
}

func TestStale(t *testing.T) {
	dns := udpService("dns", "10.96.0.10", 53, 30053, ep("10.244.1.2:53", true), ep("10.244.1.3:53", false))
	dns.ExternalIPs = []netip.Addr{ip("192.168.99.1")}
	dns.LoadBalancerIPs = []netip.Addr{ip("192.168.99.2")}
	// dns2 shares dns's external IP and port.
	dns2 := udpService("dns2", "10.96.0.16", 53, 0, ep("10.244.2.2:53", true))
	dns2.ExternalIPs = []netip.Addr{ip("192.168.99.1")}
	web := &proxier.Service{Name: proxier.ServicePortName{Name: "web"}, Protocol: proxier.TCP, ClusterIP: ip("10.96.0.11"), Port: 80,
		Endpoints: []proxier.Endpoint{ep("10.244.1.2:80", true)}}
	empty := udpService("empty", "10.96.0.12", 53, 30054)
	unready := udpService("unready", "10.96.0.17", 53, 0, ep("10.244.1.7:53", false))
	// stats's targetPort went from 8125 to 8126.
	statsBefore := udpService("stats", "10.96.0.14", 8125, 0, ep("10.244.1.6:8125", true))
	stats := udpService("stats", "10.96.0.14", 8125, 0, ep("10.244.1.6:8126", true))
	// clash's service port is dns's NodePort number.
	clash := udpService("clash", "10.96.0.15", 30053, 0, ep("10.244.1.8:30053", true))
	// gone was deleted since the last cleanup; dns took over nothing of it.
	gone := udpService("gone", "10.96.0.13", 53, 30055, ep("10.244.1.5:53", true))
	gone.ExternalIPs = []netip.Addr{ip("192.168.99.3")}
	// reused had dns's ClusterIP before dns: dns's endpoints decide now.
	reused := udpService("reused", "10.96.0.10", 53, 30053, ep("10.244.9.1:53", true))

	prev := TargetsFromPlan(plan(dns2, web, empty, unready, statsBefore, clash, gone, reused))
	tg := TargetsFromPlan(plan(dns, dns2, web, empty, unready, stats, clash)).WithGone(prev)

	for _, tc := range []struct {
		name  string
		e     Entry
		stale bool
	}{
		{"to serving endpoint", Entry{17, ap("10.96.0.10:53"), ap("10.244.1.2:53")}, false},
		{"to removed endpoint", Entry{17, ap("10.96.0.10:53"), ap("10.244.9.9:53")}, true},
		{"to not-serving endpoint", Entry{17, ap("10.96.0.10:53"), ap("10.244.1.3:53")}, true},
		{"never DNATed (was rejected)", Entry{17, ap("10.96.0.10:53"), ap("10.96.0.10:53")}, true},
		{"external IP, removed endpoint", Entry{17, ap("192.168.99.1:53"), ap("10.244.9.9:53")}, true},
		{"external IP shared by two services, either's endpoint", Entry{17, ap("192.168.99.1:53"), ap("10.244.2.2:53")}, false},
		{"load-balancer IP, serving", Entry{17, ap("192.168.99.2:53"), ap("10.244.1.2:53")}, false},
		{"load-balancer IP, never DNATed", Entry{17, ap("192.168.99.2:53"), ap("192.168.99.2:53")}, true},
		{"nodeport, removed endpoint", Entry{17, ap("192.168.0.2:30053"), ap("10.244.9.9:53")}, true},
		{"nodeport, serving", Entry{17, ap("192.168.0.2:30053"), ap("10.244.1.2:53")}, false},
		{"other port of the ClusterIP", Entry{17, ap("10.96.0.10:54"), ap("10.244.9.9:53")}, false},
		{"tcp is left alone", Entry{6, ap("10.96.0.11:80"), ap("10.244.9.9:80")}, false},
		{"not a service frontend", Entry{17, ap("10.244.1.2:53"), ap("10.244.1.2:53")}, false},
		{"service port equal to a NodePort: the service address decides", Entry{17, ap("10.96.0.15:30053"), ap("10.244.1.8:30053")}, false},

		// Rule 1: an entry made before the frontend had rules (never
		// DNATed) goes once the service has serving endpoints.
		{"nodeport, never DNATed (made before the rule)", Entry{17, ap("192.168.0.2:30053"), ap("192.168.0.2:30053")}, true},
		{"nodeport on another address, never DNATed", Entry{17, ap("10.0.0.9:30053"), ap("10.0.0.9:30053")}, true},

		// Rule 2: a service with no serving endpoint, or one deleted,
		// keeps none of its entries.
		{"no endpoints, never DNATed", Entry{17, ap("10.96.0.12:53"), ap("10.96.0.12:53")}, true},
		{"no endpoints, DNATed to a former endpoint", Entry{17, ap("10.96.0.12:53"), ap("10.244.1.9:53")}, true},
		{"no endpoints, nodeport DNATed to a former endpoint", Entry{17, ap("192.168.0.2:30054"), ap("10.244.1.9:53")}, true},
		{"only not-serving endpoints", Entry{17, ap("10.96.0.17:53"), ap("10.244.1.7:53")}, true},
		{"deleted service, ClusterIP", Entry{17, ap("10.96.0.13:53"), ap("10.244.1.5:53")}, true},
		{"deleted service, NodePort", Entry{17, ap("192.168.0.2:30055"), ap("10.244.1.5:53")}, true},
		{"deleted service, external IP", Entry{17, ap("192.168.99.3:53"), ap("10.244.1.5:53")}, true},
		{"frontend of a deleted service now another's: its endpoints decide", Entry{17, ap("10.96.0.10:53"), ap("10.244.1.2:53")}, false},
		{"frontend of a deleted service now another's, the old endpoint", Entry{17, ap("10.96.0.10:53"), ap("10.244.9.1:53")}, true},

		// Rule 3: endpoints match by IP and port.
		{"targetPort changed: entry to the old port", Entry{17, ap("10.96.0.14:8125"), ap("10.244.1.6:8125")}, true},
		{"targetPort changed: entry to the new port", Entry{17, ap("10.96.0.14:8125"), ap("10.244.1.6:8126")}, false},
		{"serving endpoint IP, another port", Entry{17, ap("10.96.0.10:53"), ap("10.244.1.2:5353")}, true},
	} {
		if got := tg.Stale(tc.e); got != tc.stale {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.stale)
		}
	}
}

func TestNeeded(t *testing.T) {
	udp := &proxier.Service{Protocol: proxier.UDP}
	tcp := &proxier.Service{Protocol: proxier.TCP}
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

// fakeTable is a conntrack table in memory.
type fakeTable struct {
	flows     []conntrack.Flow
	dumps     int
	deleteErr error
}

func (f *fakeTable) Dump(proxier.IPFamily) ([]conntrack.Flow, error) {
	f.dumps++
	return append([]conntrack.Flow(nil), f.flows...), nil
}

func (f *fakeTable) Delete(fl conntrack.Flow) error {
	if f.deleteErr != nil {
		return f.deleteErr
	}
	for i, x := range f.flows {
		if x.TupleOrig == fl.TupleOrig {
			f.flows = append(f.flows[:i], f.flows[i+1:]...)
			return nil
		}
	}
	return unix.ENOENT
}

func (f *fakeTable) Close() error { return nil }

// udpFlow is a UDP entry from client to dst whose reply comes from replySrc.
func udpFlow(client, dst, replySrc string) conntrack.Flow {
	c, d, r := ap(client), ap(dst), ap(replySrc)
	f := conntrack.NewFlow(protoUDP, 0, c.Addr(), d.Addr(), c.Port(), d.Port(), 30, 0)
	f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = r.Addr(), r.Port()
	return f
}

// TestCleanSequence runs a cleaner over successive plans against one table:
// what each sync deletes, and how many dumps it costs.
func TestCleanSequence(t *testing.T) {
	stats := udpService("stats", "10.96.0.20", 8125, 30125, ep("10.244.1.2:8125", true))
	statsEmpty := udpService("stats", "10.96.0.20", 8125, 30125)
	web := &proxier.Service{Name: proxier.ServicePortName{Name: "web"}, Protocol: proxier.TCP, ClusterIP: ip("10.96.0.21"), Port: 80}
	web2 := *web
	toEndpoint := udpFlow("10.244.1.9:40000", "10.96.0.20:8125", "10.244.1.2:8125")
	viaNodePort := udpFlow("203.0.113.10:40001", "192.168.0.2:30125", "10.244.1.2:8125")
	beforeRule := udpFlow("203.0.113.10:40002", "192.168.0.2:30125", "192.168.0.2:30125")
	other := udpFlow("10.244.1.9:40003", "10.244.1.3:53", "10.244.1.3:53")

	tab := &fakeTable{}
	var deleted int
	c := NewCleaner(proxier.IPv4, func(n int) { deleted += n })
	c.open = func() (table, error) { return tab, nil }
	for _, step := range []struct {
		name      string
		plan      *proxier.Plan
		add       []conntrack.Flow
		deleteErr error
		wantErr   bool
		dumps     int
		left      []conntrack.Flow
	}{
		{"start: nothing UDP, nothing to dump", plan(web), []conntrack.Flow{other, beforeRule}, nil, false, 0, []conntrack.Flow{other, beforeRule}},
		{"UDP service added: the entry made before its NodePort rule goes", plan(web, stats), nil, nil, false, 1, []conntrack.Flow{other}},
		{"flows pinned to its endpoint stay", plan(&web2, stats), []conntrack.Flow{toEndpoint, viaNodePort}, nil, false, 0, []conntrack.Flow{other, toEndpoint, viaNodePort}},
		{"no endpoint left: its flows go", plan(web, statsEmpty), nil, nil, false, 1, []conntrack.Flow{other}},
		{"back to one endpoint, flows pinned again", plan(web, stats), []conntrack.Flow{toEndpoint, viaNodePort}, nil, false, 1, []conntrack.Flow{other, toEndpoint, viaNodePort}},
		{"deleted, but the delete fails", plan(web), nil, unix.EPERM, true, 1, []conntrack.Flow{other, toEndpoint, viaNodePort}},
		{"the next sync still knows the deleted frontends", plan(web), nil, nil, false, 1, []conntrack.Flow{other}},
		{"nothing UDP changed: no dump", plan(&web2), []conntrack.Flow{toEndpoint}, nil, false, 0, []conntrack.Flow{other, toEndpoint}},
	} {
		tab.flows = append(tab.flows, step.add...)
		tab.deleteErr, tab.dumps = step.deleteErr, 0
		err := c.Clean(step.plan)
		if (err != nil) != step.wantErr {
			t.Errorf("%s: err = %v, want error %v", step.name, err, step.wantErr)
		}
		if step.wantErr && !errors.Is(err, unix.EPERM) {
			t.Errorf("%s: err = %v, want the delete's error", step.name, err)
		}
		if tab.dumps != step.dumps {
			t.Errorf("%s: %d dumps, want %d", step.name, tab.dumps, step.dumps)
		}
		if len(tab.flows) != len(step.left) {
			t.Errorf("%s: %d entries left, want %d", step.name, len(tab.flows), len(step.left))
			continue
		}
		for i := range step.left {
			if tab.flows[i].TupleOrig != step.left[i].TupleOrig {
				t.Errorf("%s: entry %d left is %v, want %v", step.name, i, entryOf(tab.flows[i]), entryOf(step.left[i]))
			}
		}
	}
	if deleted != 5 {
		t.Errorf("deleted counted %d entries, want 5", deleted)
	}
}

// TestCleanEntryGoneSinceDump: an entry that timed out between the dump and
// its delete is neither an error nor counted.
func TestCleanEntryGoneSinceDump(t *testing.T) {
	tab := &fakeTable{deleteErr: unix.ENOENT, flows: []conntrack.Flow{udpFlow("10.244.1.9:40000", "10.96.0.20:8125", "10.244.1.7:8125")}}
	var deleted int
	c := NewCleaner(proxier.IPv4, func(n int) { deleted += n })
	c.open = func() (table, error) { return tab, nil }
	if err := c.Clean(plan(udpService("stats", "10.96.0.20", 8125, 0, ep("10.244.1.2:8125", true)))); err != nil {
		t.Fatalf("Clean: %v", err)
	}
	if deleted != 0 {
		t.Errorf("deleted counted %d, want 0", deleted)
	}
}
