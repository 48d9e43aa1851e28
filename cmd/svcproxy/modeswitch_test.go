package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

// TestOtherModeCleanups: a start in one mode removes the other mode's
// leftovers, and only those.
func TestOtherModeCleanups(t *testing.T) {
	for _, tc := range []struct {
		mode string
		want []string
	}{
		{"nftables", []string{"iptables chains"}},
		{"iptables", []string{"nftables tables svcproxy", "nftables tables kube-proxy"}},
		{"ipvs", nil},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			var got []string
			for _, c := range otherModeCleanups(tc.mode) {
				got = append(got, c.what)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("cleanups %q, want %q", got, tc.want)
			}
		})
	}
}

// fakeSynced keeps the callbacks registered with OnSynced.
type fakeSynced struct{ after []func(*proxier.Plan) error }

func (f *fakeSynced) OnSynced(cb func(*proxier.Plan) error) { f.after = append(f.after, cb) }

func (f *fakeSynced) sync() {
	for _, cb := range f.after {
		cb(nil)
	}
}

// TestAfterFirstSyncs: the leftovers go once, when every family has synced
// once, and never again.
func TestAfterFirstSyncs(t *testing.T) {
	for _, tc := range []struct {
		name     string
		families int
		syncs    []int // which backend syncs, in order
		want     []int // runs of f after each sync
	}{
		{"one family", 1, []int{0, 0}, []int{1, 1}},
		{"waits for the second family", 2, []int{0, 0, 1, 1, 0}, []int{0, 0, 1, 1, 1}},
		{"either order", 2, []int{1, 0}, []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := make([]*fakeSynced, tc.families)
			for i := range ps {
				ps[i] = &fakeSynced{}
			}
			runs := 0
			afterFirstSyncs(ps, func() { runs++ })
			for i, p := range tc.syncs {
				ps[p].sync()
				if runs != tc.want[i] {
					t.Errorf("after sync %d (backend %d): f ran %d times, want %d", i, p, runs, tc.want[i])
				}
			}
		})
	}
}

// TestAfterFirstSyncsConcurrent: families sync on their own goroutines;
// f still runs exactly once.
func TestAfterFirstSyncsConcurrent(t *testing.T) {
	for range 50 {
		ps := []*fakeSynced{{}, {}}
		var runs atomic.Int32
		afterFirstSyncs(ps, func() { runs.Add(1) })
		var wg sync.WaitGroup
		for _, p := range ps {
			wg.Go(func() {
				for range 3 {
					p.sync()
				}
			})
		}
		wg.Wait()
		if n := runs.Load(); n != 1 {
			t.Fatalf("f ran %d times, want 1", n)
		}
	}
}

// TestRemoveLeftoversAfterSync: --dry-run and an unknown mode register
// nothing.
func TestRemoveLeftoversAfterSync(t *testing.T) {
	for _, tc := range []struct {
		o    options
		want int
	}{
		{options{proxyMode: "nftables"}, 1},
		{options{proxyMode: "iptables"}, 1},
		{options{proxyMode: "nftables", dryRun: true}, 0},
		{options{proxyMode: "ipvs"}, 0},
	} {
		p := &fakeSynced{}
		removeLeftoversAfterSync(context.Background(), &tc.o, []*fakeSynced{p})
		if len(p.after) != tc.want {
			t.Errorf("mode %s dry-run %v: %d after-sync steps, want %d", tc.o.proxyMode, tc.o.dryRun, len(p.after), tc.want)
		}
	}
}

// TestRemoveLeftovers: a failing cleanup does not stop the next one.
func TestRemoveLeftovers(t *testing.T) {
	var ran []string
	mk := func(what string, err error) leftoverCleanup {
		return leftoverCleanup{what, func(context.Context) ([]string, error) {
			ran = append(ran, what)
			return []string{what}, err
		}}
	}
	removeLeftovers(context.Background(), []leftoverCleanup{mk("a", errors.New("boom")), mk("b", nil)})
	if !slices.Equal(ran, []string{"a", "b"}) {
		t.Errorf("ran %q, want a then b", ran)
	}
}

func TestTablesNamed(t *testing.T) {
	out := "table ip svcproxy\ntable inet svcproxy\ntable ip6 svcproxy\ntable ip nat\ntable ip svcproxy2\n"
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"svcproxy", []string{"ip svcproxy", "ip6 svcproxy"}},
		{"kube-proxy", nil},
		{"nat", []string{"ip nat"}},
	} {
		if got := tablesNamed(out, tc.name); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
