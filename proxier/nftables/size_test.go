package nftables

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// hairpinIndex is an index whose hairpin set holds n elements.
func hairpinIndex(n int) *index {
	x := &index{sets: map[string]map[tuple]entry{sHairpin: {}, sClusterIPs: {}, sServiceCIDRs: {}}}
	for i := range n {
		a := addrAtom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		x.put(elemID{sHairpin, tupleOf(a, a)}, entry{refs: 1})
		x.put(elemID{sClusterIPs, tupleOf(a)}, entry{refs: 1})
		x.put(elemID{sServiceCIDRs, tupleOf(a)}, entry{refs: 1})
	}
	return x
}

func TestSetSizes(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		last map[string]uint64
		want map[string]uint64
	}{
		{"small sets have no size", sizedFrom - 1, nil, map[string]uint64{}},
		{"a large set is sized for twice its elements", sizedFrom, nil,
			map[string]uint64{sHairpin: 16384, sClusterIPs: 16384}},
		{"a size is kept while the elements fit", 20000, map[string]uint64{sHairpin: 32768, sClusterIPs: 1 << 20},
			map[string]uint64{sHairpin: 32768, sClusterIPs: 1 << 20}},
		{"an outgrown size grows", 40000, map[string]uint64{sHairpin: 32768},
			map[string]uint64{sHairpin: 131072, sClusterIPs: 131072}},
		{"a sized set that shrank keeps its size", 10, map[string]uint64{sHairpin: 32768},
			map[string]uint64{sHairpin: 32768}},
		{"a sized set that is gone keeps its size", 0, map[string]uint64{sHairpin: 32768},
			map[string]uint64{sHairpin: 32768}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := setSizes(hairpinIndex(tc.n), nil, tc.last)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("sizes %v, want %v (interval sets are never sized)", got, tc.want)
			}
		})
	}
}

func TestOverflows(t *testing.T) {
	x := hairpinIndex(3)
	a := addrAtom(netip.MustParseAddr("10.9.9.9"))
	b := addrAtom(netip.MustParseAddr("10.0.0.1"))
	add := elemOp{add: true, e: elem{set: sHairpin, key: tupleOf(a, a)}}
	del := elemOp{e: elem{set: sHairpin, key: tupleOf(b, b)}}
	for _, tc := range []struct {
		name  string
		ops   []elemOp
		sizes map[string]uint64
		want  bool
	}{
		{"fits", []elemOp{add}, map[string]uint64{sHairpin: 4}, false},
		{"one over", []elemOp{add}, map[string]uint64{sHairpin: 3}, true},
		{"a deletion makes room", []elemOp{del, add}, map[string]uint64{sHairpin: 3}, false},
		{"unsized sets never overflow", []elemOp{add}, map[string]uint64{sClusterIPs: 3}, false},
	} {
		if got := overflows(x, tc.ops, tc.sizes); got != tc.want {
			t.Errorf("%s: overflows %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestSizesThroughSyncs: a table of many endpoints declares sizes; a
// partial sync keeps them; one that would overflow a size is a full sync
// that declares a larger one.
func TestSizesThroughSyncs(t *testing.T) {
	tr := newTranslator(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	st := pt.ScaleState(1000) // 10,000 endpoints
	last := tr.build(st, nil, true, true, time.Time{}).commit()
	if got := last.sizes[sHairpin]; got != 32768 {
		t.Fatalf("hairpin size %d, want 32768", got)
	}
	if !strings.Contains(last.sk.key(), fmt.Sprintf("set %s ipv4_addr . ipv4_addr  [] <nil> 32768", sHairpin)) {
		t.Errorf("the skeleton does not declare the size:\n%s", last.sk.key())
	}
	more := func(st *proxier.State, n int) *proxier.State {
		next := *st
		next.Services = slices.Clone(st.Services)
		for i := range n {
			k := len(next.Services) + i
			next.Services = append(next.Services, pt.Service(fmt.Sprintf("ns/more%d", k), proxier.TCP,
				fmt.Sprintf("10.97.%d.%d", k>>8, k&255), 80, pt.Endpoints(pt.Endpoint(fmt.Sprintf("10.200.%d.%d", k>>8, k&255), 80))))
		}
		return &next
	}

	st2 := more(st, 1)
	d := tr.build(st2, last, false, false, time.Time{})
	if d.change.full || d.next.sizes[sHairpin] != 32768 {
		t.Fatalf("a change within the sizes: full %v, hairpin size %d; want a partial sync and 32768", d.change.full, d.next.sizes[sHairpin])
	}
	last = d.commit()

	// The hairpin set as full as its size: one more endpoint overflows it.
	last.sizes = maps.Clone(last.sizes)
	last.sizes[sHairpin] = uint64(len(last.idx.sets[sHairpin]))
	d = tr.build(more(st2, 1), last, false, false, time.Time{})
	if !d.change.full {
		t.Fatal("a change that overflows a size is a partial sync")
	}
	if got, want := d.next.sizes[sHairpin], sizeFor(10002); got != want {
		t.Errorf("hairpin size after the overflow %d, want %d", got, want)
	}
	var decl *uint64
	for _, s := range d.change.sk.sets {
		if s.Name == sHairpin {
			decl = s.Size
		}
	}
	if decl == nil || *decl != sizeFor(10002) {
		t.Errorf("the full sync's hairpin set declares size %v, want %d", decl, sizeFor(10002))
	}
}

// TestKernelSetSizeGrows: a table whose sets outgrow their sizes is
// rewritten in place with the larger sizes, every element in the kernel.
func TestKernelSetSizeGrows(t *testing.T) {
	_, fd := enterNetns(t)
	p, nft := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	ctx := context.Background()
	for _, n := range []int{1000, 7000} {
		if err := p.Sync(ctx, pt.ScaleState(n)); err != nil {
			t.Fatalf("%d Services: %v", n, err)
		}
		out, err := exec.Command("nft", "list", "set", "ip", TableName, sHairpin).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if want := fmt.Sprintf("size %d", sizeFor(10*n)); !strings.Contains(string(out), want) {
			t.Errorf("%d Services: the kernel's hairpin set has no %q:\n%.300s", n, want, out)
		}
		elems, err := nft.ListElements(ctx, "set", sHairpin)
		if err != nil {
			t.Fatal(err)
		}
		if len(elems) != 10*n {
			t.Errorf("%d Services: %d hairpin elements in the kernel, want %d", n, len(elems), 10*n)
		}
	}
}

// BenchmarkKernelSetSize: 100,000 hairpin elements written over netlink
// into a set declared with a size (nf_tables' fixed-size hash) and into
// one without (its resizable hash), in turn.
//
//	go test -run XXX -bench KernelSetSize -benchtime 5x ./proxier/nftables/
//
// Measured on the 2-core test machine (2026-12, Linux 6.18): sized
// 70-110 ms, unsized 160-205 ms.
func BenchmarkKernelSetSize(b *testing.B) {
	fd := benchNetns(b)
	conn, err := nfnl.Dial(fd)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	w := newElemWriter(proxier.IPv4, conn)
	ops := make([]elemOp, 100000)
	for i := range ops {
		a := addrAtom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		ops[i] = elemOp{add: true, e: elem{set: sHairpin, key: tupleOf(a, a)}}
	}
	ctx := context.Background()
	for b.Loop() {
		for _, decl := range []string{"", "size 262144;"} {
			b.StopTimer()
			exec.Command("nft", "delete", "table", "ip", TableName).Run()
			def := fmt.Sprintf("table ip %s { set %s { type ipv4_addr . ipv4_addr; %s }; }", TableName, sHairpin, decl)
			if out, err := exec.Command("nft", def).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
			b.StartTimer()
			start := time.Now()
			if err := w.apply(ctx, ops); err != nil {
				b.Fatal(err)
			}
			name := "unsized-ms"
			if decl != "" {
				name = "sized-ms"
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000, name)
		}
	}
}
