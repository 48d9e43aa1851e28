package nftables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// stickyState has a Service port with affinity over eps, and one without.
func stickyState(eps ...proxier.Endpoint) *proxier.State {
	return pt.State(proxier.IPv4,
		pt.Service("ns/sticky", proxier.TCP, "10.96.0.9", 80, pt.Affinity(600), pt.Endpoints(eps...)),
		pt.Service("ns/web", proxier.TCP, "10.96.0.1", 80, pt.Endpoints(pt.Endpoint("10.244.1.2", 8080, pt.Local))))
}

// TestStaleAffinityOf: only a service with affinity that lost an endpoint
// has entries to forget, and only those of its lost endpoints.
func TestStaleAffinityOf(t *testing.T) {
	cfg := pt.Config(pt.NodeIPs(pt.NodeIP))
	render := func(st *proxier.State) *svcRender {
		return renderAll(cfg, st, st.Services[:1])[0]
	}
	a, b, c := pt.Endpoint("10.244.1.2", 8080, pt.Local), pt.Endpoint("10.244.1.3", 8080, pt.Local), pt.Endpoint("10.244.2.2", 8080)
	three, two, grown := render(stickyState(a, b, c)), render(stickyState(a, c)), render(stickyState(a, b, c, pt.Endpoint("10.244.2.9", 8080)))
	if s := staleAffinityOf(three, grown); s != nil {
		t.Errorf("an endpoint added: %+v, want nothing to forget", s)
	}
	ss := staleAffinityOf(three, two)
	if len(ss) != 1 || ss[0].setName != affinitySet(proxier.TCP, 600) {
		t.Fatalf("an endpoint removed: %+v, want the entries of the affinity set", ss)
	}
	if s := ss[0]; !s.dests[netip.MustParseAddrPort("10.96.0.9:80")] ||
		!s.live[netip.MustParseAddrPort("10.244.1.2:8080")] || s.live[netip.MustParseAddrPort("10.244.1.3:8080")] {
		t.Fatalf("an endpoint removed: %+v", s)
	}
	if s := staleAffinityOf(three, nil); len(s) != 1 || len(s[0].live) != 0 {
		t.Errorf("service removed: %+v, want every entry forgotten", s)
	}
	plain := render(pt.State(proxier.IPv4, pt.Service("ns/p", proxier.TCP, "10.96.0.5", 80, pt.Endpoints(a, b))))
	if s := staleAffinityOf(plain, nil); s != nil {
		t.Errorf("no affinity: %+v", s)
	}
}

// TestKernelAffinityForgotten: when a sticky service loses an endpoint, the
// affinity entries pinned to it are deleted; the others stay.
func TestKernelAffinityForgotten(t *testing.T) {
	_, fd := enterNetns(t)
	p, nft := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	ctx := context.Background()
	a, b, c := pt.Endpoint("10.244.1.2", 8080, pt.Local), pt.Endpoint("10.244.1.3", 8080, pt.Local), pt.Endpoint("10.244.2.2", 8080)
	st := stickyState(a, b, c)
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	m := affinitySet(proxier.TCP, 600)
	// Entries as the packet path would have recorded them: two clients of
	// the sticky service (one on b, one on a), and one of another service
	// sharing the set, also on b.
	sh(t, "nft", "add", "element", "ip", TableName, m,
		"{ 10.0.0.7 . 10.96.0.9 . 80 . 10.244.1.3 . 8080, 10.0.0.8 . 10.96.0.9 . 80 . 10.244.1.2 . 8080, 10.0.0.7 . 10.96.0.77 . 80 . 10.244.1.3 . 8080 }")
	st2 := *st
	st2.Services = slices.Clone(st.Services)
	st2.Services[0] = stickyState(a, c).Services[0]
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if p.LastResult().Full {
		t.Fatal("want a partial sync")
	}
	got := setEntries(t, nft, m)
	want := []string{"10.0.0.7 . 10.96.0.77 . 80 . 10.244.1.3 . 8080", "10.0.0.8 . 10.96.0.9 . 80 . 10.244.1.2 . 8080"}
	if !slices.Equal(got, want) {
		t.Errorf("affinity entries after b left:\n got %q\nwant %q", got, want)
	}

	// An endpoint replaced (the count unchanged): the entries pinned to it
	// go in the same transaction as the sync (the pick chain rewritten,
	// through nft), so no new connection follows them to the endpoint
	// gone.
	d := pt.Endpoint("10.244.2.9", 8080)
	st3 := st2
	st3.Services = slices.Clone(st2.Services)
	st3.Services[0] = stickyState(d, c).Services[0]
	g0, err := p.w.batch.conn.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, &st3); err != nil {
		t.Fatal(err)
	}
	g1, _ := p.w.batch.conn.Generation(ctx)
	if g1 != g0+1 {
		t.Errorf("endpoint a replaced: %d transactions; want the sync and the forgetting in one", g1-g0)
	}
	if got, want := setEntries(t, nft, m), []string{"10.0.0.7 . 10.96.0.77 . 80 . 10.244.1.3 . 8080"}; !slices.Equal(got, want) {
		t.Errorf("affinity entries after a was replaced:\n got %q\nwant %q", got, want)
	}
}

// setEntries lists set s's entries, sorted.
func setEntries(t *testing.T, nft knftables.Interface, s string) []string {
	t.Helper()
	elems, err := nft.ListElements(context.Background(), "set", s)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range elems {
		got = append(got, strings.Join(e.Key, " . "))
	}
	slices.Sort(got)
	return got
}

// TestParseAffinityJSON reads the entries of an affinity set, and of a
// map of the layout before sets (read once, on an upgrade).
func TestParseAffinityJSON(t *testing.T) {
	want := []affinityEntry{{client: netip.MustParseAddr("10.0.0.8"), dest: netip.MustParseAddrPort("10.96.0.9:80"),
		endpoint: netip.MustParseAddrPort("10.244.1.2:8080"), expires: 599}}
	for _, tc := range []struct{ name, out string }{
		{"set", `{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "s", "table": "t", "elem": [{"elem": {"val": {"concat": ["10.0.0.8", "10.96.0.9", 80, "10.244.1.2", 8080]}, "timeout": 600, "expires": 599}}, {"elem": {"val": {"concat": ["10.0.0.9", 80]}}}]}}]}`},
		{"map", `{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "ip", "name": "m", "table": "t", "elem": [[{"elem": {"val": {"concat": ["10.0.0.8", "10.96.0.9", 80]}, "expires": 599}}, {"concat": ["10.244.1.2", 8080]}]]}}]}`},
	} {
		got, err := parseAffinityJSON([]byte(tc.out))
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, want)
		}
	}
}

// TestKernelAffinityKeptByFullSync: a full sync (which replaces the table)
// writes back the affinity entries that are still valid, with their
// remaining time, and drops those to endpoints that went away.
func TestKernelAffinityKeptByFullSync(t *testing.T) {
	_, fd := enterNetns(t)
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	p.w.readAffinity = execReadAffinity
	ctx := context.Background()
	a, b := pt.Endpoint("10.244.1.2", 8080, pt.Local), pt.Endpoint("10.244.1.3", 8080, pt.Local)
	if err := p.Sync(ctx, stickyState(a, b)); err != nil {
		t.Fatal(err)
	}
	m := affinitySet(proxier.TCP, 600)
	sh(t, "nft", "add", "element", "ip", TableName, m,
		"{ 10.0.0.7 . 10.96.0.9 . 80 . 10.244.1.3 . 8080 timeout 100s, 10.0.0.8 . 10.96.0.9 . 80 . 10.244.1.2 . 8080 timeout 100s }")
	p.ForceFullSync()
	if err := p.Sync(ctx, stickyState(a)); err != nil {
		t.Fatal(err)
	}
	if !p.LastResult().Full {
		t.Fatal("want a full sync")
	}
	entries, err := execReadAffinity(ctx, "ip", m)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].client != netip.MustParseAddr("10.0.0.8") || entries[0].dest != netip.MustParseAddrPort("10.96.0.9:80") ||
		entries[0].expires > 100 || entries[0].expires < 90 {
		t.Errorf("after the full sync: %+v, want only 10.0.0.8's entry, about 100s left", entries)
	}
}

// TestKernelAffinityCarriedFromMaps: the first sync over a table of the
// layout before affinity sets (an upgrade of svcproxy) replaces the old
// affinity map by the set and carries its valid entries into it.
func TestKernelAffinityCarriedFromMaps(t *testing.T) {
	_, fd := enterNetns(t)
	m := affinitySet(proxier.TCP, 600)
	sh(t, "nft", "add table ip "+TableName+"; add map ip "+TableName+" "+m+
		" { typeof ip saddr . ip daddr . th dport : ip daddr . tcp dport ; flags dynamic,timeout ; timeout 600s ; }")
	sh(t, "nft", "add", "element", "ip", TableName, m,
		"{ 10.0.0.7 . 10.96.0.9 . 80 timeout 100s : 10.244.1.3 . 8080, 10.0.0.8 . 10.96.0.9 . 80 timeout 100s : 10.244.1.9 . 8080 }")
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	p.w.readAffinity = execReadAffinity
	ctx := context.Background()
	if err := p.Sync(ctx, stickyState(pt.Endpoint("10.244.1.2", 8080, pt.Local), pt.Endpoint("10.244.1.3", 8080, pt.Local))); err != nil {
		t.Fatal(err)
	}
	out := sh(t, "nft", "list", "set", "ip", TableName, m)
	entries, err := execReadAffinity(ctx, "ip", m)
	if err != nil || len(entries) != 1 || entries[0].client != netip.MustParseAddr("10.0.0.7") ||
		entries[0].endpoint != netip.MustParseAddrPort("10.244.1.3:8080") || entries[0].expires > 100 || entries[0].expires < 90 {
		t.Errorf("after the upgrade: %+v, %v; want only 10.0.0.7's entry (10.244.1.9 is no endpoint), about 100s left\n%s", entries, err, out)
	}
}
