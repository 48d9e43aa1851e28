package nftables

import (
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// changedV4 is goldenV4 with one endpoint replaced in web, a Service gone
// and one added: a partial sync's worth of change.
func changedV4(st *proxier.State) *proxier.State {
	st2 := *st
	st2.Services = slices.Clone(st.Services)
	i := slices.IndexFunc(st2.Services, func(s *proxier.Service) bool { return s.Name.Name == "web" })
	web := *st2.Services[i]
	web.Endpoints = append(slices.Clone(web.Endpoints[1:]), pt.Endpoint("10.244.3.2", 8080))
	st2.Services[i] = &web
	st2.Services = slices.Delete(st2.Services, 0, 1)
	st2.Services = append(st2.Services, pt.Service("ns5/added", proxier.UDP, "10.96.0.30", 5353, pt.Endpoints(pt.Endpoint("10.244.1.30", 5353, pt.Local))))
	return &st2
}

// snapshot copies what a table's index and record chains hold.
func snapshot(t *table) [3]any {
	return [3]any{flatElems(t.idx), maps.Clone(t.idx.lbChains), maps.Clone(t.affChains)}
}

// flatElems is x's elements in one map.
func flatElems(x *index) map[elemID]entry {
	return maps.Collect(x.all())
}

// TestBuildLeavesLastTable: building a partial sync changes nothing of the
// last table, two builds give the same change, and the committed index is
// the one a full build of the new State counts.
func TestBuildLeavesLastTable(t *testing.T) {
	tr := newTranslator(goldenConfig(proxier.IPv4, pt.ServiceRange("10.96.0.0/16")))
	now := time.Unix(1000, 0)
	st := goldenV4()
	last := tr.build(st, nil, true, true, now).commit()
	before := snapshot(last)
	st2 := changedV4(st)
	d := tr.build(st2, last, false, false, now)
	if d.change.full {
		t.Fatal("want a partial change")
	}
	if again := tr.build(st2, last, false, false, now); !reflect.DeepEqual(again.change, d.change) {
		t.Error("two builds of one State gave different changes")
	}
	if !reflect.DeepEqual(snapshot(last), before) {
		t.Error("build changed the last table")
	}
	next := d.commit()
	whole := tr.build(st2, nil, true, true, now).commit()
	if !reflect.DeepEqual(flatElems(next.idx), flatElems(whole.idx)) || !reflect.DeepEqual(next.idx.lbChains, whole.idx.lbChains) {
		t.Error("the committed partial sync's index differs from a full build's")
	}
}

// TestOperationsCount: a change counts its operations as the nft
// transaction the writer makes of it does.
func TestOperationsCount(t *testing.T) {
	tr := newTranslator(goldenConfig(proxier.IPv4, pt.ServiceRange("10.96.0.0/16")))
	w := &writer{f: famOf(proxier.IPv4), nft: knftables.NewFake(knftables.IPv4Family, TableName)}
	st := goldenV4()
	full := tr.build(st, nil, true, true, time.Time{})
	if got, want := full.change.operations(), w.fullTx(full.change, true).NumOperations(); got != want {
		t.Errorf("full change: %d operations, its transaction %d", got, want)
	}
	partial := tr.build(changedV4(st), full.commit(), false, false, time.Time{})
	if got, want := partial.change.operations(), w.partialTx(partial.change, nil).NumOperations(); got != want || got == 0 {
		t.Errorf("partial change: %d operations, its transaction %d", got, want)
	}
}

// TestRepairContents: a repair rewrites a damaged set with what the set
// holds once the sync is committed, and a damaged chain with its rules.
func TestRepairContents(t *testing.T) {
	tr := newTranslator(goldenConfig(proxier.IPv4, pt.ServiceRange("10.96.0.0/16")))
	st := goldenV4()
	last := tr.build(st, nil, true, true, time.Time{}).commit()
	d := tr.build(changedV4(st), last, false, false, time.Time{})
	dmg := guard.Damage{Chains: map[string]bool{chServices: true, "lb-ip-tcp-3": true},
		Sets: map[string]bool{mServiceIPs: true, poolIP.endpointsMap("tcp"): false, sNodePortIPs: false}}
	if !last.repairable(dmg) {
		t.Fatal("damage to the skeleton's and lb objects is not repairable")
	}
	if last.repairable(guard.Damage{Chains: map[string]bool{"someone-elses": true}}) {
		t.Error("a chain the table does not have is repairable")
	}
	rep := tr.repair(d, dmg)
	whole := tr.build(changedV4(st), nil, true, true, time.Time{}).commit()
	for _, s := range rep.sets {
		var want []elem
		for id, en := range whole.idx.all() {
			if id.set == s.name {
				want = append(want, id.with(en))
			}
		}
		for _, e := range whole.sk.elems {
			if e.set == s.name {
				want = append(want, e)
			}
		}
		if got := sortElems(s.elems); !reflect.DeepEqual(got, sortElems(want)) || len(got) == 0 && s.name != sNodePortIPs {
			t.Errorf("repair of %s: %d elements, want %d", s.name, len(got), len(want))
		}
		if s.flush != dmg.Sets[s.name] || s.def == nil {
			t.Errorf("repair of %s: flush %v, definition %v", s.name, s.flush, s.def)
		}
	}
	for _, c := range rep.chains {
		if want := dynRules(tr.f, c.name, nil); c.name != chServices && !slices.Equal(c.rules, want) || len(c.rules) == 0 {
			t.Errorf("repair of chain %s: rules %q", c.name, c.rules)
		}
	}
}

// TestElemsBound: elemsBound is enough for every Service port of the
// golden States, so that a render's slice never grows.
func TestElemsBound(t *testing.T) {
	for _, tc := range goldenCases {
		st := tc.st()
		for i, r := range renderAll(tc.cfg(), st, st.Services) {
			if bound := elemsBound(&r.plan); cap(r.elems) != bound || len(r.elems) > bound {
				t.Errorf("%s: %s: %d elements, bound %d, capacity %d", tc.name, st.Services[i].Name, len(r.elems), bound, cap(r.elems))
			}
		}
	}
}
