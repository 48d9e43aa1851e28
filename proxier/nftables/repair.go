package nftables

import (
	"maps"
	"slices"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
)

// Others' damage is usually narrow (see package guard): a chain flushed, a
// map flushed, an element deleted. A sync repairs narrow damage by
// rewriting only what it names, over the table the sync makes: the chains
// flushed and given their rules again, the sets given their elements again
// (flushed first when someone added to them).

// repairable reports whether every object d names is one the last sync
// wrote: a chain of the skeleton, an lb chain or an affinity record
// chain, a set or map of the skeleton that is not dynamic.
func (t *table) repairable(d guard.Damage) bool {
	sk := t.sk
	for c := range d.Chains {
		if _, ok := sk.rules[c]; !ok && t.idx.lbChains[c] == 0 && t.affChains[c] == nil {
			return false
		}
	}
	for s := range d.Sets {
		if sk.static(s) == nil {
			return false
		}
	}
	return true
}

// repair is what a narrow repair rewrites, from the table a sync makes:
// the damaged chains with their rules, and the damaged sets with their
// elements.
type repair struct {
	dmg    guard.Damage
	chains []dynChain
	sets   []repairSet
}

// repairSet is one damaged set or map: its definition, its elements, and
// whether someone added to it (then it is flushed before it is refilled).
type repairSet struct {
	name  string
	def   knftables.Object
	flush bool
	elems []elem
}

// repair is the repair of dmg over the table d makes (its delta
// applied). dmg must be repairable on the last table, whose skeleton d
// keeps.
func (tr *translator) repair(d *desired, dmg guard.Damage) *repair {
	t := d.next
	rep := &repair{dmg: dmg}
	for _, c := range slices.Sorted(maps.Keys(dmg.Chains)) {
		rules, ok := t.sk.rules[c]
		if !ok {
			rules = dynRules(tr.f, c, t.affChains)
		}
		rep.chains = append(rep.chains, dynChain{c, rules})
	}
	contents := d.contents(dmg.Sets)
	for _, s := range slices.Sorted(maps.Keys(dmg.Sets)) {
		rep.sets = append(rep.sets, repairSet{name: s, def: t.sk.static(s), flush: dmg.Sets[s], elems: contents[s]})
	}
	return rep
}

// contents is, per set named in sets, its elements once d is committed:
// the skeleton's fixed ones and the index's, moved by the delta.
func (d *desired) contents(sets map[string]bool) map[string][]elem {
	out := map[string][]elem{}
	for _, e := range d.next.sk.elems {
		if _, ok := sets[e.set]; ok {
			out[e.set] = append(out[e.set], e)
		}
	}
	x := d.next.idx
	for s := range sets {
		for k, en := range x.sets[s] {
			id := elemID{s, k}
			if en, in := d.delta.after(id, en); in {
				out[s] = append(out[s], id.with(en))
			}
		}
	}
	if d.delta != nil {
		for id := range d.delta.elems {
			_, named := sets[id.set]
			if _, old := x.get(id); named && !old {
				if en, in := d.delta.after(id, entry{}); in {
					out[id.set] = append(out[id.set], id.with(en))
				}
			}
		}
	}
	return out
}
