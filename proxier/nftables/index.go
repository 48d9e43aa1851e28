package nftables

import (
	"iter"
	"maps"
	"slices"
	"strings"
)

// index is what the renders of a table contribute, counted: Service ports
// share elements (two ports of one ClusterIP share its cluster-ips
// element), lb chains (one per pool, protocol and endpoint count) and
// affinity sets (one per protocol and timeout). Something is in the table
// while its count is above zero.
type index struct {
	// sets holds the elements per set, so that a full write walks one
	// set at a time; n counts them.
	sets     map[string]map[tuple]entry
	n        int
	lbChains map[string]int
	affinity map[affinityKey]int
}

// entry is an element's value and count; its set and key are its id.
type entry struct {
	value   [maxValue]atom
	verdict verdict
	refs    int32
}

func (id elemID) with(en entry) elem {
	return elem{set: id.set, key: id.key, value: en.value, verdict: en.verdict}
}

// newIndex counts every render of rs.
func newIndex(rs []*svcRender) *index {
	size := map[string]int{}
	for _, r := range rs {
		for _, e := range r.elems {
			size[e.set]++
		}
	}
	x := &index{sets: make(map[string]map[tuple]entry, len(size)), lbChains: map[string]int{}, affinity: map[affinityKey]int{}}
	for s, n := range size {
		x.sets[s] = make(map[tuple]entry, n)
	}
	for _, r := range rs {
		var set string
		var m map[tuple]entry
		for _, e := range r.elems {
			if e.set != set {
				set, m = e.set, x.sets[e.set]
			}
			en, ok := m[e.key]
			if !ok {
				en = entry{value: e.value, verdict: e.verdict}
				x.n++
			}
			en.refs++
			m[e.key] = en
		}
		for lb := range r.lbCounts {
			x.lbChains[lb]++
		}
		if r.affinity != nil {
			x.affinity[*r.affinity]++
		}
	}
	return x
}

// clone is a copy of x, which the copy's moves leave alone.
func (x *index) clone() *index {
	sets := make(map[string]map[tuple]entry, len(x.sets))
	for s, m := range x.sets {
		sets[s] = maps.Clone(m)
	}
	return &index{sets: sets, n: x.n, lbChains: maps.Clone(x.lbChains), affinity: maps.Clone(x.affinity)}
}

// get is element id's entry, if x holds it.
func (x *index) get(id elemID) (entry, bool) {
	en, ok := x.sets[id.set][id.key]
	return en, ok
}

// put makes en element id's entry.
func (x *index) put(id elemID, en entry) {
	m := x.sets[id.set]
	if m == nil {
		m = map[tuple]entry{}
		x.sets[id.set] = m
	}
	if _, ok := m[id.key]; !ok {
		x.n++
	}
	m[id.key] = en
}

// del removes element id.
func (x *index) del(id elemID) {
	m := x.sets[id.set]
	if _, ok := m[id.key]; !ok {
		return
	}
	x.n--
	if delete(m, id.key); len(m) == 0 {
		delete(x.sets, id.set)
	}
}

// len is how many elements x holds.
func (x *index) len() int { return x.n }

// all lists x's elements, set by set in no order.
func (x *index) all() iter.Seq2[elemID, entry] {
	return func(yield func(elemID, entry) bool) {
		for s, m := range x.sets {
			for k, en := range m {
				if !yield(elemID{s, k}, en) {
					return
				}
			}
		}
	}
}

// delta is how a partial sync moves an index: per element, lb chain and
// affinity map, the change of its count. It is computed without touching
// the index and applied once the sync is in the kernel.
type delta struct {
	elems map[elemID]*elemDelta
	lb    map[string]int
	aff   map[affinityKey]int
}

// elemDelta is the change of one element's count; when a render added a
// contribution, e is that render's element (its value may be new).
type elemDelta struct {
	refs  int32
	added bool
	e     elem
}

func newDelta() *delta {
	return &delta{elems: map[elemID]*elemDelta{}, lb: map[string]int{}, aff: map[affinityKey]int{}}
}

// add counts r's contributions into d, with sign 1 (added) or -1 (removed).
func (d *delta) add(r *svcRender, sign int) {
	for _, e := range r.elems {
		c := d.elems[e.id()]
		if c == nil {
			c = &elemDelta{e: e}
			d.elems[e.id()] = c
		}
		c.refs += int32(sign)
		if sign > 0 {
			c.added, c.e = true, e
		}
	}
	for lb := range r.lbCounts {
		d.lb[lb] += sign
	}
	if r.affinity != nil {
		d.aff[*r.affinity] += sign
	}
}

// empty reports whether d moves nothing.
func (d *delta) empty() bool {
	return len(d.elems) == 0 && len(d.lb) == 0 && len(d.aff) == 0
}

// after is element id's entry once d moves an index that holds en for it
// (the zero entry: none), and whether the element is in the index then.
// A nil delta moves nothing.
func (d *delta) after(id elemID, en entry) (entry, bool) {
	if d != nil {
		if c := d.elems[id]; c != nil {
			en.refs += c.refs
			if c.added {
				en.value, en.verdict = c.e.value, c.e.verdict
			}
		}
	}
	return en, en.refs > 0
}

// applyTo moves x by d.
func (d *delta) applyTo(x *index) {
	for id := range d.elems {
		old, _ := x.get(id)
		if en, in := d.after(id, old); in {
			x.put(id, en)
		} else {
			x.del(id)
		}
	}
	moveCounts(x.lbChains, d.lb)
	moveCounts(x.affinity, d.aff)
}

func moveCounts[K comparable](counts, d map[K]int) {
	for k, n := range d {
		if counts[k] += n; counts[k] <= 0 {
			delete(counts, k)
		}
	}
}

// affinityAfter is the affinity maps in use once d is applied to x, sorted
// by name.
func (d *delta) affinityAfter(x *index) []affinityKey {
	var out []affinityKey
	for k, n := range x.affinity {
		if n+d.aff[k] > 0 {
			out = append(out, k)
		}
	}
	for k, n := range d.aff {
		if _, ok := x.affinity[k]; !ok && n > 0 {
			out = append(out, k)
		}
	}
	sortAffinity(out)
	return out
}

func sortAffinity(ks []affinityKey) {
	slices.SortFunc(ks, func(a, b affinityKey) int {
		return strings.Compare(affinitySet(a.proto, a.timeout), affinitySet(b.proto, b.timeout))
	})
}

// affinityKeys is the affinity maps x uses, sorted by name.
func (x *index) affinityKeys() []affinityKey {
	out := make([]affinityKey, 0, len(x.affinity))
	for k := range x.affinity {
		out = append(out, k)
	}
	sortAffinity(out)
	return out
}

// sorted lists the elements of x as nft text sorts them: by set, then key
// text.
func (x *index) sorted() []elem {
	es := make([]elem, 0, x.len())
	for id, en := range x.all() {
		es = append(es, id.with(en))
	}
	return sortElems(es)
}

// sortElems sorts es by set, then key text, and returns it.
func sortElems(es []elem) []elem {
	type keyed struct {
		key string
		i   int
	}
	ks := make([]keyed, len(es))
	for i, e := range es {
		ks[i] = keyed{e.keyText(mustSpec(e.set)), i}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		if c := strings.Compare(es[a.i].set, es[b.i].set); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	out := make([]elem, len(es))
	for i, k := range ks {
		out[i] = es[k.i]
	}
	return out
}
