package nftables

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// testState is a small State: a Service without endpoints, a load
// balancer with source ranges and externalTrafficPolicy Local, one with
// affinity, and a ClusterIP with three endpoints.
func testState() *proxier.State {
	return pt.State(proxier.IPv4,
		pt.Service("ns/empty", proxier.TCP, "10.96.0.2", 80),
		pt.Service("ns/lb", proxier.TCP, "10.96.0.3", 443, pt.NodePort(30443), pt.LoadBalancer("1.2.3.4"), pt.SourceRanges("203.0.113.0/25"), pt.ExternalLocal,
			pt.Endpoints(pt.Endpoint("10.244.1.3", 8443, pt.Local), pt.Endpoint("10.244.2.4", 8443))),
		pt.Service("ns/sticky", proxier.UDP, "10.96.0.4", 53, pt.Affinity(600), pt.Endpoints(pt.Endpoint("10.244.1.5", 53, pt.Local), pt.Endpoint("10.244.2.6", 53))),
		pt.Service("ns/web", proxier.TCP, "10.96.0.1", 80,
			pt.Endpoints(pt.Endpoint("10.244.1.2", 8080, pt.Local), pt.Endpoint("10.244.1.3", 8080, pt.Local), pt.Endpoint("10.244.2.2", 8080))),
	)
}

func TestFakeSyncAndIncremental(t *testing.T) {
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), nft)
	ctx := context.Background()
	st := testState()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	mustContain(t, "dump", nft.Dump(),
		"add element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 : goto cluster-ip }",
		"add element ip svcproxy count-ip { 10.96.0.1 . tcp . 80 : goto lb-ip-tcp-3 }",
		"add element ip svcproxy endpoints-ip-tcp { 10.96.0.1 . 80 . 2 : 10.244.2.2 . 8080 }",
		"add element ip svcproxy no-endpoint-services { 10.96.0.2 . tcp . 80 : goto reject-chain }",
		"add element ip svcproxy service-nodeports { tcp . 30443 : goto nodeport-local }",
		"add element ip svcproxy count-np-local { tcp . 30443 : goto lb-np-local-tcp-1 }",
		"add element ip svcproxy firewall-allow { 1.2.3.4 . tcp . 443 . 203.0.113.0/25 }",
		"add rule ip svcproxy lb-ip-tcp-3 dnat ip to ip daddr . tcp dport . numgen random mod 3 map @endpoints-ip-tcp",
		"add rule ip svcproxy cluster-ips-check ip daddr @service-cidrs drop",
		"add element ip svcproxy service-cidrs { 10.96.0.0/16 }",
	)

	// No change: no operations.
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if n := nft.LastTransaction.NumOperations(); n != 0 && p.LastResult().Operations != 0 {
		t.Errorf("no-op sync ran %d operations", p.LastResult().Operations)
	}

	// One endpoint removed from web: a handful of element operations.
	web := *st.Services[3]
	web.Endpoints = web.Endpoints[:2]
	st2 := *st
	st2.Services = append([]*proxier.Service(nil), st.Services...)
	st2.Services[3] = &web
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	r := p.LastResult()
	if r.Full || r.Operations == 0 || r.Operations > 8 {
		t.Errorf("endpoint removal: %+v, want a small partial transaction\n%s", r, nft.LastTransaction)
	}
	// The result equals a fresh full sync of the same state.
	fresh := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), fresh).Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	// (The fake dumps elements in insertion order; compare them as sets.)
	if got, want := sortedLines(nft.Dump()), sortedLines(fresh.Dump()); got != want {
		t.Errorf("incremental result differs from a full sync:\n--- incremental\n%s\n--- full\n%s", got, want)
	}
}

// TestIncrementalCostIsConstant: a one-endpoint change costs the same number
// of operations at 10,000 services as at 10.
func TestIncrementalCostIsConstant(t *testing.T) {
	ops := map[int]int{}
	for _, n := range []int{10, 10000} {
		st := pt.ScaleState(n)
		svcs := st.Services
		// knftables' Fake looks elements up linearly; at 10,000 services a
		// recorder that only counts is what the test needs.
		nft := &recorder{Fake: knftables.NewFake(knftables.IPv4Family, TableName)}
		p := New(pt.Config(pt.NodeIPs(pt.NodeIP)), nft)
		if err := p.Sync(context.Background(), st); err != nil {
			t.Fatal(err)
		}
		// Replace one endpoint IP of service 0 (it has a NodePort too).
		changed := *svcs[0]
		changed.Endpoints = append([]proxier.Endpoint(nil), svcs[0].Endpoints...)
		changed.Endpoints[5] = pt.Endpoint("10.250.0.1", 8080)
		st2 := pt.State(proxier.IPv4, append([]*proxier.Service{&changed}, svcs[1:]...)...)
		if err := p.Sync(context.Background(), st2); err != nil {
			t.Fatal(err)
		}
		ops[n] = p.LastResult().Operations
		if p.LastResult().Full {
			t.Errorf("n=%d: change caused a full sync", n)
		}
	}
	if ops[10] != ops[10000] || ops[10000] > 40 {
		t.Errorf("operations for one endpoint change: %v; want equal and small", ops)
	}
	t.Logf("operations for one endpoint change: %v", ops)
}

// recorder is a knftables.Interface that accepts every transaction without
// applying it and remembers the last one.
type recorder struct {
	*knftables.Fake
	last *knftables.Transaction
}

func (r *recorder) Run(_ context.Context, tx *knftables.Transaction) error {
	r.last = tx
	return nil
}

func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// BenchmarkPartialSync10k is the Go side of a one-endpoint change at 10,000
// services (the transaction is built but not run).
func BenchmarkPartialSync10k(b *testing.B) {
	nft := &recorder{Fake: knftables.NewFake(knftables.IPv4Family, TableName)}
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP)), nft)
	st := pt.ScaleState(10000)
	ctx := context.Background()
	if err := p.Sync(ctx, st); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := i % len(st.Services)
		changed := *st.Services[k]
		changed.Endpoints = append([]proxier.Endpoint(nil), changed.Endpoints...)
		changed.Endpoints[5] = pt.Endpoint(fmt.Sprintf("10.250.%d.%d", (i>>8)&255, i&255), 8080)
		st2 := *st
		st2.Services = append([]*proxier.Service(nil), st.Services...)
		st2.Services[k] = &changed
		if err := p.Sync(ctx, &st2); err != nil {
			b.Fatal(err)
		}
		st = &st2
	}
}

// TestNodePortAddresses: with --nodeport-addresses, NodePorts match the
// selected node IPs through the nodeport-ips set.
func TestNodePortAddresses(t *testing.T) {
	cfg := pt.Config(pt.NodeIPs(pt.NodeIP, "10.0.0.5"), pt.NodePortAddresses("192.168.0.0/24"))
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(cfg, nft).Sync(context.Background(), testState()); err != nil {
		t.Fatal(err)
	}
	dump := nft.Dump()
	if !strings.Contains(dump, "add element ip svcproxy nodeport-ips { 192.168.0.2 }") || strings.Contains(dump, "10.0.0.5 }") {
		t.Errorf("nodeport-ips should hold 192.168.0.2 only:\n%s", dump)
	}
	if !strings.Contains(dump, "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports") {
		t.Errorf("NodePorts are not matched through nodeport-ips:\n%s", dump)
	}
}

// BenchmarkFullTransaction10k is the Go side of a full sync at 10,000
// services: plan, render, the element index, and the netlink messages of
// every element (nothing is run).
func BenchmarkFullTransaction10k(b *testing.B) {
	st := pt.ScaleState(10000)
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP)), knftables.NewFake(knftables.IPv4Family, TableName))
	w := newElemWriter(proxier.IPv4, nil)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		d := p.tr.build(st, nil, true, true, time.Time{})
		_, ops := groupOps(d.change.elems, nil, nil, false)
		batch, err := w.encode(ops)
		if err != nil {
			b.Fatal(err)
		}
		batch.Messages()
	}
}

// TestFullSyncReusesRenders: a full sync that is due only because the
// table must be rewritten (ForceFullSync, as a repair) starts from the last
// sync's renders and index, and writes exactly what a fresh proxier writes;
// the periodic full sync and a node change render everything anew.
func TestFullSyncReusesRenders(t *testing.T) {
	ctx := context.Background()
	st1 := testState()
	// st2: one Service changed, one removed, one added; the others keep
	// their pointers, as the syncer hands them over.
	st2 := *st1
	st2.Services = slices.Clone(st1.Services)
	web := *st2.Services[3]
	web.Endpoints = append(slices.Clone(web.Endpoints), pt.Endpoint("10.244.2.9", 8080))
	st2.Services[3] = &web
	st2.Services = append(st2.Services[:0:0], st2.Services[1:]...)
	st2.Services = append(st2.Services, pt.Service("ns/new", proxier.UDP, "10.96.0.9", 53, pt.Endpoints(pt.Endpoint("10.244.1.9", 53, pt.Local))))

	fresh := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), fresh).Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	want := fresh.Dump()

	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), nft)
	clock := time.Unix(1000, 0)
	p.now = func() time.Time { return clock }
	if err := p.Sync(ctx, st1); err != nil {
		t.Fatal(err)
	}
	rendered := p.last.renders[st1.Services[1]]
	p.ForceFullSync()
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	// Changed counts the two new renders and the two dropped.
	if r := p.LastResult(); !r.Full || r.Changed != 4 {
		t.Errorf("repairing sync: full %v, changed %d; want a full sync with 4 changes", r.Full, r.Changed)
	}
	if p.last.renders[st2.Services[0]] != rendered {
		t.Error("an unchanged Service was rendered anew by a repairing full sync")
	}
	if got := nft.Dump(); got != want {
		t.Errorf("a repairing full sync wrote\n%s\nwant (a fresh proxier's)\n%s", got, want)
	}

	// The periodic full sync starts afresh.
	clock = clock.Add(p.FullSyncPeriod + time.Second)
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); !r.Full || p.last.renders[st2.Services[0]] == rendered {
		t.Errorf("periodic sync: full %v, unchanged Service rendered anew %v; want both", r.Full, p.last.renders[st2.Services[0]] != rendered)
	}
	if got := nft.Dump(); got != want {
		t.Errorf("the periodic full sync wrote\n%s\nwant\n%s", got, want)
	}
}
