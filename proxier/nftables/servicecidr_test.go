package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestServiceCIDRDropAfterClusterIPReject: a known ClusterIP on an unknown port is
// rejected, and any other address inside a service CIDR is dropped — in that order.
// The CIDRs are the elements of an interval set: the flag's when the State
// carries none, else the State's.
func TestServiceCIDRDropAfterClusterIPReject(t *testing.T) {
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), nft)
	if err := p.Sync(context.Background(), testState()); err != nil {
		t.Fatal(err)
	}
	dump := nft.Dump()
	reject := "add rule ip svcproxy " + chClusterIPsCheck + " ip daddr @" + sClusterIPs + " reject"
	drop := "add rule ip svcproxy " + chClusterIPsCheck + " ip daddr @" + sServiceCIDRs + " drop"
	ri, di := strings.Index(dump, reject), strings.Index(dump, drop)
	if ri < 0 || di < 0 || ri > di {
		t.Fatalf("want %q before %q in %s; got positions %d, %d\n%s", reject, drop, chClusterIPsCheck, ri, di, dump)
	}
	for _, want := range []string{
		"add set ip svcproxy " + sServiceCIDRs + " { type ipv4_addr ; flags interval ; }",
		"add element ip svcproxy " + sServiceCIDRs + " { 10.96.0.0/16 }",
		"add element ip svcproxy " + sClusterIPs + " { 10.96.0.1 }",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("dump lacks %q:\n%s", want, dump)
		}
	}

	// ServiceCIDRs in the State replace the flag's.
	nft2 := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), nft2).Sync(context.Background(), pt.WithServiceCIDRs(testState(), "10.96.0.0/12", "10.112.0.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := cidrElements(t, nft2); got != "[10.96.0.0/12 10.112.0.0/24]" {
		t.Errorf("service-cidrs with ServiceCIDRs = %s, want [10.96.0.0/12 10.112.0.0/24]", got)
	}

	// --dry-run prints them too.
	out := DryRun(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), pt.WithServiceCIDRs(testState(), "10.97.0.0/24", "10.96.0.0/16"))
	if want := "add element ip svcproxy " + sServiceCIDRs + " { 10.96.0.0/16, 10.97.0.0/24 }"; !strings.Contains(out, want) {
		t.Errorf("dry run lacks %q:\n%s", want, out)
	}

	// Without any service CIDR the drop rule matches nothing.
	nft3 := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(pt.Config(pt.NodeIPs(pt.NodeIP)), nft3).Sync(context.Background(), testState()); err != nil {
		t.Fatal(err)
	}
	if got := cidrElements(t, nft3); got != "[]" {
		t.Errorf("service-cidrs without service CIDRs = %s", got)
	}
}

// cidrElements lists the service-cidrs set's elements.
func cidrElements(t *testing.T, nft knftables.Interface) string {
	t.Helper()
	elems, err := nft.ListElements(context.Background(), "set", sServiceCIDRs)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range elems {
		out = append(out, strings.Join(e.Key, " . "))
	}
	slices.SortFunc(out, func(a, b string) int {
		return netip.MustParsePrefix(a).Addr().Compare(netip.MustParsePrefix(b).Addr())
	})
	return fmt.Sprint(out)
}

func TestServiceCIDRElems(t *testing.T) {
	for _, tc := range []struct {
		f     proxier.IPFamily
		cidrs []string
		want  string
	}{
		{proxier.IPv4, nil, "[]"},
		{proxier.IPv4, []string{"10.97.0.0/24", "10.96.0.0/16", "fd00::/112", "10.96.0.0/16"}, "[10.96.0.0/16 10.97.0.0/24]"},
		// Contained prefixes go (the interval set rejects overlaps); host
		// bits are masked; IPv4-mapped prefixes count as IPv4.
		{proxier.IPv4, []string{"10.96.3.0/24", "10.96.0.0/16", "10.96.0.7/12", "::ffff:10.200.0.0/112"}, "[10.96.0.0/12 10.200.0.0/16]"},
		{proxier.IPv6, []string{"10.96.0.0/16", "fd00:10:96::/112", "fd00:10:96::/64"}, "[fd00:10:96::/64]"},
	} {
		var got []string
		for _, e := range serviceCIDRElems(tc.f, pt.Prefixes(tc.cidrs...)) {
			if e.set != sServiceCIDRs {
				t.Errorf("element of %s", e.set)
			}
			got = append(got, e.keyText(mustSpec(e.set)))
		}
		if fmt.Sprint(got) != tc.want {
			t.Errorf("%v %v: %v, want %s", tc.f, tc.cidrs, got, tc.want)
		}
	}
}

// TestServiceCIDRIncremental: a change of the ServiceCIDRs is a partial sync
// of service-cidrs elements only, not a rewrite of the table, and leaves the
// table a full sync of the same State makes.
func TestServiceCIDRIncremental(t *testing.T) {
	ctx := context.Background()
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), nft)
	st := testState()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name  string
		st    *proxier.State
		want  string
		ops   int
		elems string // the transaction's element operations
	}{
		{"ServiceCIDR objects as the flag", pt.WithServiceCIDRs(st, "10.96.0.0/16"), "[10.96.0.0/16]", 0, ""},
		{"a ServiceCIDR added", pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.97.0.0/24"), "[10.96.0.0/16 10.97.0.0/24]", 1,
			"add element ip svcproxy service-cidrs { 10.97.0.0/24 }"},
		{"one covering both", pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.97.0.0/24", "10.96.0.0/12"), "[10.96.0.0/12]", 3,
			"delete element ip svcproxy service-cidrs { 10.96.0.0/16 }\ndelete element ip svcproxy service-cidrs { 10.97.0.0/24 }\nadd element ip svcproxy service-cidrs { 10.96.0.0/12 }"},
		{"back to the flag's", st, "[10.96.0.0/16]", 2,
			"delete element ip svcproxy service-cidrs { 10.96.0.0/12 }\nadd element ip svcproxy service-cidrs { 10.96.0.0/16 }"},
	} {
		if err := p.Sync(ctx, step.st); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		r := p.LastResult()
		if r.Full || r.Operations != step.ops {
			t.Errorf("%s: %+v, want a partial sync of %d operations\n%s", step.name, r, step.ops, nft.LastTransaction)
		}
		if step.ops > 0 {
			if got := strings.TrimSpace(nft.LastTransaction.String()); got != step.elems {
				t.Errorf("%s: transaction\n%s\nwant\n%s", step.name, got, step.elems)
			}
		}
		if got := cidrElements(t, nft); got != step.want {
			t.Errorf("%s: service-cidrs = %s, want %s", step.name, got, step.want)
		}
		fresh := knftables.NewFake(knftables.IPv4Family, TableName)
		if err := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), fresh).Sync(ctx, step.st); err != nil {
			t.Fatal(err)
		}
		if got, want := sortedLines(nft.Dump()), sortedLines(fresh.Dump()); got != want {
			t.Errorf("%s: incremental result differs from a full sync:\n--- incremental\n%s\n--- full\n%s", step.name, got, want)
		}
	}
	// A Service change next to a ServiceCIDR change: both in one partial sync.
	web := *st.Services[3]
	web.Endpoints = web.Endpoints[:2]
	st2 := pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.98.0.0/24")
	st2.Services = slices.Clone(st.Services)
	st2.Services[3] = &web
	if err := p.Sync(ctx, st2); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Full || !strings.Contains(nft.LastTransaction.String(), "add element ip svcproxy service-cidrs { 10.98.0.0/24 }") {
		t.Errorf("service and ServiceCIDR change: %+v\n%s", r, nft.LastTransaction)
	}
}

// TestKernelServiceCIDRs: the kernel takes service-cidrs changes, overlaps
// resolved, as partial syncs, and traffic to an unallocated ClusterIP in a
// new ServiceCIDR is dropped by the cluster-ips-check rule (counted with nft
// by a lookup of the set).
func TestKernelServiceCIDRs(t *testing.T) {
	_, p, nft, st := syncedKernel(t)
	ctx := context.Background()
	for _, step := range []struct {
		st   *proxier.State
		want string
	}{
		{pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.97.0.0/24"), "[10.96.0.0/16 10.97.0.0/24]"},
		{pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.97.0.0/24", "10.97.0.128/25", "10.96.0.0/12"), "[10.96.0.0/12]"},
		{pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.97.0.0/24"), "[10.96.0.0/16 10.97.0.0/24]"},
		{pt.WithServiceCIDRs(st, "10.96.0.0/16", "10.96.1.0/24", "10.97.0.0/24", "10.97.1.0/24"), "[10.96.0.0/16 10.97.0.0/24 10.97.1.0/24]"},
		{st, "[10.96.0.0/16]"},
	} {
		if err := p.Sync(ctx, step.st); err != nil {
			t.Fatalf("sync to %v: %v", step.st.ServiceCIDRs, err)
		}
		if r := p.LastResult(); r.Full || r.Operations == 0 {
			t.Errorf("sync to %v: %+v, want a partial sync", step.st.ServiceCIDRs, r)
		}
		if got := cidrElements(t, nft); got != step.want {
			t.Errorf("sync to %v: kernel's service-cidrs = %s, want %s", step.st.ServiceCIDRs, got, step.want)
		}
		if what, err := p.guard.Check(ctx); err != nil || what != "" {
			t.Errorf("check after sync to %v: %q, %v", step.st.ServiceCIDRs, what, err)
		}
	}
	out := sh(t, "nft", "list", "chain", "ip", TableName, chClusterIPsCheck)
	if !regexpOrder(out, "ip daddr @"+sClusterIPs+" reject", "ip daddr @"+sServiceCIDRs+" drop") {
		t.Errorf("cluster-ips-check in the kernel:\n%s", out)
	}
}

// regexpOrder reports whether every part occurs in s, in order.
func regexpOrder(s string, parts ...string) bool {
	for _, p := range parts {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return true
}
