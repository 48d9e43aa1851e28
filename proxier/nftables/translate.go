package nftables

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// translator turns a State into the table that serves it, and into the
// change from the table the last sync left. It is pure: it reads the last
// table and never changes it.
type translator struct {
	cfg proxier.Config
	f   fam
}

func newTranslator(cfg proxier.Config) *translator {
	cfg.Mode = proxier.NFTablesMode
	return &translator{cfg: cfg, f: famOf(cfg.Family)}
}

// nodePlan is the plan of st without its Services: the node-wide fields
// (local pods, NodePorts, service CIDRs) the skeleton and the
// service-cidrs set translate.
func nodePlan(cfg proxier.Config, st *proxier.State) *proxier.Plan {
	return proxier.MakePlan(cfg, &proxier.State{Family: st.Family, NodeName: st.NodeName, NodeZone: st.NodeZone, ServiceCIDRs: st.ServiceCIDRs})
}

// table is what a sync put in the kernel, as the translator made it.
type table struct {
	node [2]string // node name and zone the renders were made for
	// renders are the Service ports' renders, by the State's pointers;
	// cidrs is the service-cidrs set's.
	renders map[*proxier.Service]*svcRender
	cidrs   *svcRender
	idx     *index
	// affChains are the record and pick chains of the Service ports with
	// affinity (name → rules).
	affChains map[string][]string
	sk        *skeleton
	skelKey   string
	// sizes are the sizes the skeleton declares (size.go).
	sizes map[string]uint64
	// rendered is when every Service port was last rendered afresh.
	rendered time.Time
}

// desired is a sync before it is written: the table it makes, and the
// change that makes it from the last one.
type desired struct {
	next   *table
	change *change
	// delta, for a partial sync, moves the last table's index (next.idx)
	// once the change is in the kernel (commit).
	delta *delta
	// plan is the node-wide plan; its Services are filled, in the State's
	// order, by fullPlan: a partial sync reaches the kernel before it
	// copies every Service port's plan.
	plan    *proxier.Plan
	order   []*proxier.Service
	planned bool
	// fresh: every Service port was rendered anew.
	fresh  bool
	result SyncResult
	// stale are the affinity entries a partial sync makes invalid.
	stale []*staleAffinity
}

// commit makes d the last table: it moves the index a partial sync
// shares with the table before it. Call it once, after d was written.
func (d *desired) commit() *table {
	if d.delta != nil {
		d.delta.applyTo(d.next.idx)
		d.delta = nil
	}
	d.result.Elements = d.next.idx.len()
	return d.next
}

// fullPlan is d's plan with every Service port's plan.
func (d *desired) fullPlan() *proxier.Plan {
	if !d.planned {
		d.planned = true
		d.plan.Services = make([]proxier.ServicePlan, 0, len(d.order))
		for _, svc := range d.order {
			d.plan.Services = append(d.plan.Services, d.next.renders[svc].plan)
		}
	}
	return d.plan
}

// change is what a sync writes: the whole table, or what differs from the
// last one.
type change struct {
	full bool
	// A whole table: the skeleton, the lb and record chains (sorted) and
	// every element.
	sk    *skeleton
	dyn   []dynChain
	elems *index
	// The difference, in the order it is written: chains created (or
	// rewritten), element deletions then additions, lb chains and record
	// chains no longer used.
	chains   []dynChain
	ops      []elemOp
	staleLB  []string
	staleRec []string
}

// elementsOnly reports a partial change of elements alone.
func (c *change) elementsOnly() bool {
	return !c.full && len(c.chains) == 0 && len(c.staleLB) == 0 && len(c.staleRec) == 0
}

// operations counts c as an nft transaction counts it.
func (c *change) operations() int {
	if c.full {
		// The table added, deleted and added again.
		n := 3 + len(c.sk.chains) + len(c.dyn) + len(c.sk.sets) + len(c.sk.maps) + len(c.sk.elems) + c.elems.len()
		for _, rules := range c.sk.rules {
			n += len(rules)
		}
		for _, d := range c.dyn {
			n += len(d.rules)
		}
		return n
	}
	// A chain is added, flushed and given its rules; a stale record chain
	// flushed and deleted.
	n := len(c.ops) + len(c.staleLB) + 2*len(c.staleRec)
	for _, d := range c.chains {
		n += 2 + len(d.rules)
	}
	return n
}

// dynChain is a chain outside the skeleton: an lb chain (its rule follows
// from its name) or an affinity record chain.
type dynChain struct {
	name  string
	rules []string
}

// build translates st. The sync is full when force is set, there is no
// last table, the node changed, periodic is set (then every Service port
// is rendered anew), or the skeleton changes; otherwise it carries only
// what changed. now stamps a fresh render.
func (tr *translator) build(st *proxier.State, last *table, force, periodic bool, now time.Time) *desired {
	node := [2]string{st.NodeName, st.NodeZone}
	fresh := last == nil || node != last.node || periodic
	full := fresh || force
	// An unchanged *Service keeps its render: it depends only on the
	// Service, the node and the config.
	var prev map[*proxier.Service]*svcRender
	if !fresh {
		prev = last.renders
	}
	renders := make(map[*proxier.Service]*svcRender, len(st.Services))
	var changed []*proxier.Service
	for _, svc := range st.Services {
		if r, ok := prev[svc]; ok {
			renders[svc] = r
			continue
		}
		changed = append(changed, svc)
	}
	for i, r := range renderAll(tr.cfg, st, changed) {
		renders[changed[i]] = r
	}
	var removed []*svcRender
	for svc, r := range prev {
		if _, ok := renders[svc]; !ok {
			removed = append(removed, r)
		}
	}
	plan := nodePlan(tr.cfg, st)
	d := &desired{plan: plan, order: st.Services, fresh: fresh, result: SyncResult{Services: len(st.Services), Changed: len(changed) + len(removed)}}
	next := &table{node: node, renders: renders, cidrs: serviceCIDRRender(plan)}
	if fresh {
		next.rendered = now
	} else {
		next.rendered = last.rendered
	}
	switch {
	case fresh:
		tr.whole(d, next, last, st)
	default:
		dl := tr.delta(last, next, changed, removed)
		next.affChains = recordChainsAfter(last.affChains, removed, changed, next.renders)
		if full || !tr.partial(d, next, last, dl, changed, removed) {
			tr.moved(d, next, last, dl)
		}
	}
	d.next = next
	d.result.Full = d.change.full
	d.result.Operations = d.change.operations()
	return d
}

// whole makes d a full sync of every render made afresh: the index
// counted anew.
func (tr *translator) whole(d *desired, next, last *table, st *proxier.State) {
	rs := make([]*svcRender, 0, len(st.Services)+1)
	for _, svc := range st.Services {
		rs = append(rs, next.renders[svc])
	}
	next.idx = newIndex(append(rs, next.cidrs))
	next.affChains = map[string][]string{}
	for _, r := range rs {
		for _, c := range r.affChains {
			next.affChains[c.name] = c.rules
		}
	}
	tr.full(d, next, last)
}

// moved makes d a full sync of last's renders moved by dl (a forced full
// sync, a repair): a copy of last's index moved by the delta, which costs
// less than counting it anew. An empty delta (a repair of an unchanged
// State) shares last's index: nothing moves it but a commit, which
// replaces last.
func (tr *translator) moved(d *desired, next, last *table, dl *delta) {
	next.idx = last.idx
	if !dl.empty() {
		next.idx = last.idx.clone()
		dl.applyTo(next.idx)
	}
	tr.full(d, next, last)
}

// full makes d the full change that writes next, with the sizes last
// declared (nil: none) grown to fit.
func (tr *translator) full(d *desired, next, last *table) {
	next.sk = newSkeleton(d.plan, next.idx.affinityKeys())
	var lastSizes map[string]uint64
	if last != nil {
		lastSizes = last.sizes
	}
	next.sizes = setSizes(next.idx, next.sk.elems, lastSizes)
	next.sk.sized(next.sizes)
	next.skelKey = next.sk.key()
	d.delta, d.stale = nil, nil
	d.change = &change{full: true, sk: next.sk, dyn: dynChains(tr.f, next.idx.lbChains, next.affChains), elems: next.idx}
}

// delta is what the renders removed and changed, and the service-cidrs
// set, move last's index by.
func (tr *translator) delta(last, next *table, changed []*proxier.Service, removed []*svcRender) *delta {
	dl := newDelta()
	for _, r := range removed {
		dl.add(r, -1)
	}
	for _, svc := range changed {
		dl.add(next.renders[svc], 1)
	}
	if !sameElems(last.cidrs.elems, next.cidrs.elems) {
		dl.add(last.cidrs, -1)
		dl.add(next.cidrs, 1)
	}
	return dl
}

// partial makes d the difference from last, dl. It reports false when the
// skeleton changes (a new affinity map, say), which takes a full sync.
func (tr *translator) partial(d *desired, next, last *table, dl *delta, changed []*proxier.Service, removed []*svcRender) bool {
	next.sk = newSkeleton(d.plan, dl.affinityAfter(last.idx))
	next.sizes = last.sizes
	next.sk.sized(next.sizes)
	if next.skelKey = next.sk.key(); next.skelKey != last.skelKey {
		return false
	}
	ch := tr.diff(last, dl, next.affChains)
	if overflows(last.idx, ch.ops, last.sizes) {
		return false
	}
	next.idx = last.idx
	d.delta = dl
	d.stale = staleAffinities(removed, changed, next.renders)
	d.change = ch
	return true
}

// recordChainsAfter is the affinity chains once removed are gone and
// changed rendered: last's map itself when no render has one.
func recordChainsAfter(last map[string][]string, removed []*svcRender, changed []*proxier.Service, renders map[*proxier.Service]*svcRender) map[string][]string {
	out, copied := last, false
	edit := func() {
		if !copied {
			out, copied = maps.Clone(last), true
			if out == nil {
				out = map[string][]string{}
			}
		}
	}
	for _, r := range removed {
		for _, c := range r.affChains {
			edit()
			delete(out, c.name)
		}
	}
	for _, svc := range changed {
		for _, c := range renders[svc].affChains {
			edit()
			out[c.name] = c.rules
		}
	}
	return out
}

// diff is the change that moves last's table by dl, with the record
// chains rec: new lb and record chains first, so that elements can refer
// to them; the element changes; then the chains nothing refers to any
// more.
func (tr *translator) diff(last *table, dl *delta, rec map[string][]string) *change {
	c := &change{}
	var newLB []string
	for lb, n := range dl.lb {
		switch before := last.idx.lbChains[lb]; {
		case before == 0 && n > 0:
			newLB = append(newLB, lb)
		case before > 0 && before+n == 0:
			c.staleLB = append(c.staleLB, lb)
		}
	}
	slices.Sort(newLB)
	slices.Sort(c.staleLB)
	for _, lb := range newLB {
		c.chains = append(c.chains, dynChain{lb, dynRules(tr.f, lb, nil)})
	}
	var newRec []string
	for name, rules := range rec {
		if old, ok := last.affChains[name]; !ok || !slices.Equal(old, rules) {
			newRec = append(newRec, name)
		}
	}
	for name := range last.affChains {
		if _, ok := rec[name]; !ok {
			c.staleRec = append(c.staleRec, name)
		}
	}
	slices.Sort(newRec)
	slices.Sort(c.staleRec)
	for _, name := range newRec {
		c.chains = append(c.chains, dynChain{name, rec[name]})
	}

	touched := make([]elem, 0, len(dl.elems))
	for _, ed := range dl.elems {
		touched = append(touched, ed.e)
	}
	var adds []elemOp
	for _, e := range sortElems(touched) {
		ed := dl.elems[e.id()]
		old, ok := last.idx.get(e.id())
		after := old.refs + ed.refs
		switch {
		case ok && after <= 0:
			c.ops = append(c.ops, elemOp{e: ed.e})
		case !ok && after > 0:
			adds = append(adds, elemOp{add: true, e: ed.e})
		case ok && ed.added && (old.value != ed.e.value || old.verdict != ed.e.verdict):
			// A new value: deleted, then added again.
			c.ops = append(c.ops, elemOp{e: ed.e})
			adds = append(adds, elemOp{add: true, e: ed.e})
		}
	}
	c.ops = append(c.ops, adds...)
	return c
}

// dynChains lists the lb chains and affinity chains, sorted.
func dynChains(f fam, lbChains map[string]int, affChains map[string][]string) []dynChain {
	out := make([]dynChain, 0, len(lbChains)+len(affChains))
	for lb := range lbChains {
		out = append(out, dynChain{lb, dynRules(f, lb, nil)})
	}
	for c, rules := range affChains {
		out = append(out, dynChain{c, rules})
	}
	slices.SortFunc(out, func(a, b dynChain) int { return strings.Compare(a.name, b.name) })
	return out
}

// dynRules returns the rules of the dynamic chain name: an lb chain's from
// its name, an affinity chain's from affChains.
func dynRules(f fam, name string, affChains map[string][]string) []string {
	if pl, proto, k, ok := lbChainPool(name); ok {
		return []string{lbRule(f, pl, proto, k)}
	}
	return affChains[name]
}

// serviceCIDRRender is the service-cidrs set's contribution: the plan's
// service CIDRs. Like a Service's render, it is diffed element by element
// on partial syncs.
func serviceCIDRRender(p *proxier.Plan) *svcRender {
	return &svcRender{elems: serviceCIDRElems(p.Config.Family, p.ServiceCIDRs)}
}

func sameElems(a, b []elem) bool {
	return slices.EqualFunc(a, b, func(x, y elem) bool { return x.id() == y.id() })
}

// shape is the shape of the table d makes, as the kernel holds it once d
// is written: the rule count of every chain, and its sets and maps.
func (d *desired) shape() *nfnl.Shape {
	t := d.next
	want := &nfnl.Shape{Exists: true, Chains: map[string]int{}, Sets: map[string]nfnl.SetKind{}}
	for _, c := range t.sk.chains {
		want.Chains[c.Name] = len(t.sk.rules[c.Name])
	}
	lb := t.idx.lbChains
	if d.delta != nil {
		lb = maps.Clone(lb)
		moveCounts(lb, d.delta.lb)
	}
	for c := range lb {
		want.Chains[c] = 1
	}
	for c, rules := range t.affChains {
		want.Chains[c] = len(rules)
	}
	for _, s := range t.sk.setDefs() {
		want.Sets[s.name] = [...]nfnl.SetKind{kindSet: nfnl.PlainSet, kindMap: nfnl.DataMap, kindVMap: nfnl.VerdictMap}[mustSpec(s.name).kind]
	}
	return want
}
