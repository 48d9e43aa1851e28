package nftables

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
)

// DefaultFullSyncPeriod bounds the time between full rewrites of the table.
const DefaultFullSyncPeriod = time.Hour

// Proxier programs one address family into the table "svcproxy" in one
// nftables transaction per sync. After the first (full) sync, a sync carries
// only the elements and chains that changed; the table is never listed on a
// normal sync.
type Proxier struct {
	cfg proxier.Config
	f   fam
	nft knftables.Interface
	// flagCIDRs are the service-cidrs elements from --service-cluster-ip-range,
	// used when a State carries no ServiceCIDRs of this family.
	flagCIDRs []elem
	// cidrs holds the service-cidrs elements of the last successful sync.
	cidrs *svcRender
	// FullSyncPeriod bounds the time between full syncs.
	FullSyncPeriod time.Duration
	now            func() time.Time

	mu       sync.Mutex
	synced   bool
	lastFull time.Time
	node     [2]string // node name and zone the renders were made for
	skelKey  string
	skel     *skeleton
	reader   shapeReader // reads the kernel's table for Check; nil: no checks
	// readAffinity reads an affinity map's entries for a full sync to keep
	// (affinity.go); nil: full syncs start affinity afresh.
	readAffinity affinityReader
	chk          checkState // what Check remembers (check.go)
	// damage is others' narrow damage the next sync repairs (repair.go).
	damage *damage
	// ev is the watcher's connection, which bulk writes mute (mute.go);
	// group holds it and those of the namespace's other proxiers.
	ev    eventMute
	group *listeners
	// noAffinity: this nft cannot write the affinity rules of the family
	// (see ipv6AffinityWorks); Services are balanced without affinity.
	noAffinity bool
	// runText runs a transaction given as nft -f text (full syncs); nil:
	// every transaction goes through nft.Run.
	runText func(ctx context.Context, write func(io.Writer) error) error
	// writer, when set, writes element-only partial syncs over netlink.
	writer   *elemWriter
	services map[*proxier.Service]*svcRender
	elems    map[elemID]*elemRef
	lbChains map[string]int
	affinity map[affinityKey]int
	// affChains are the record chains of the Service ports with affinity
	// (name → rules).
	affChains map[string][]string
	last      SyncResult
	after     []func(*proxier.Plan) error
}

type elemRef struct {
	e    elem
	refs int
}

// SyncResult summarises a sync.
type SyncResult struct {
	Full       bool
	Operations int
	Services   int
	Changed    int
	Elements   int // set and map elements in the table after the sync
}

// New returns a Proxier for cfg.Family using nft, whose table must be
// TableName in that family.
func New(cfg proxier.Config, nft knftables.Interface, serviceCIDRs []string) *Proxier {
	p := &Proxier{cfg: cfg, f: famOf(cfg.Family), nft: nft, flagCIDRs: serviceCIDRElems(cfg.Family, parseCIDRs(serviceCIDRs)),
		FullSyncPeriod: DefaultFullSyncPeriod, now: time.Now}
	p.group = newListeners(&p.ev)
	return p
}

// Family is the address family this proxier programs.
func (p *Proxier) Family() proxier.IPFamily { return p.cfg.Family }

// LastResult summarises the last successful sync.
func (p *Proxier) LastResult() SyncResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// LastSyncFull reports whether the last sync was a full one.
func (p *Proxier) LastSyncFull() bool { return p.LastResult().Full }

// ForceFullSync makes the next sync rewrite the whole table.
func (p *Proxier) ForceFullSync() {
	p.mu.Lock()
	p.synced = false
	p.mu.Unlock()
}

// OnSynced registers f to run with the plan after every successful sync.
func (p *Proxier) OnSynced(f func(*proxier.Plan) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.after = append(p.after, f)
}

// DryRun returns the transaction a first sync of st would run, in nft -f
// syntax. It never touches the kernel.
func DryRun(cfg proxier.Config, serviceCIDRs []string, st *proxier.State) string {
	p := New(cfg, knftables.NewFake(famOf(cfg.Family).family, TableName), serviceCIDRs)
	pd := p.transaction(st, false)
	var b strings.Builder
	p.writeText(&b, pd)
	return b.String()
}

// pending is a transaction built but not yet run.
type pending struct {
	tx   *knftables.Transaction
	full bool
	// fresh: a full sync that rendered everything anew; a full sync
	// that is not fresh moved the last sync's index in place.
	fresh bool
	// elems is every element of a full sync whose elements are not in tx
	// (they are written as text, grouped per set).
	elems map[elemID]*elemRef
	// ops, when set, is the whole of a partial sync: element changes only,
	// all of which netlink can write.
	ops    []elemOp
	commit func() *proxier.Plan
	// staleAffinity is what to forget of the affinity maps once the
	// transaction is in (see affinity.go).
	staleAffinity []*staleAffinity
	// renders are every service's render (full syncs only), and carried
	// the affinity entries a full sync writes back (see carriedAffinity).
	renders map[*proxier.Service]*svcRender
	carried []string
	// sk, lbChains and affChains are the skeleton, lb chains and
	// affinity record chains of a full sync.
	sk        *skeleton
	lbChains  map[string]int
	affChains map[string][]string
	// err is the error of a refill that got under way; refilled says
	// one ran (and kept the affinity maps).
	err      error
	refilled bool
}

// writeText writes pd as nft -f input: tx, then pd.elems with one command
// per set or map (at most maxGroup elements each), sorted.
func (p *Proxier) writeText(w io.Writer, pd *pending) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.WriteString(pd.tx.String())
	cur, n := "", 0
	var sp setSpec
	var buf []byte
	for _, e := range sortedElems(pd.elems) {
		if e.set != cur || n >= maxGroup {
			if cur != "" {
				bw.WriteString(" }\n")
			}
			cur, n, sp = e.set, 0, mustSpec(e.set)
			fmt.Fprintf(bw, "add element %s %s %s { ", p.f.family, TableName, e.set)
		} else {
			bw.WriteString(", ")
		}
		n++
		buf = e.appendText(buf[:0], sp)
		bw.Write(buf)
	}
	if cur != "" {
		bw.WriteString(" }\n")
	}
	for _, l := range pd.carried {
		bw.WriteString(l + "\n")
	}
	return bw.Flush()
}

// Sync makes the table hold the rules for st, then runs the after-sync steps.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State) error {
	p.mu.Lock()
	if p.ev.overrun.Swap(false) {
		p.synced = false
	}
	textMode := p.runText != nil
	t0 := time.Now()
	pd := p.transaction(st, !textMode)
	tRender := time.Since(t0)
	tx := pd.tx
	if pd.full {
		// It rewrites what others damaged too.
		p.damage = nil
	}
	var unmute func()
	if pd.full || tx.NumOperations() > muteAbove || len(pd.ops) > muteAbove || p.damage != nil && len(p.damage.sets) > 0 {
		unmute = p.mute(ctx)
	}
	unlock := func() {
		if unmute != nil {
			unmute()
		}
		p.mu.Unlock()
	}
	// Affinity entries pinned to endpoints this partial sync removes go in
	// its netlink batch (else they are deleted after it).
	var affOps []elemOp
	forgotten, affInTx := false, false
	switch {
	case pd.full || len(pd.staleAffinity) == 0:
	case pd.ops != nil && p.writer != nil:
		affOps, forgotten = p.staleAffinityOps(ctx, pd.staleAffinity)
	case tx.NumOperations() > 0:
		// Or in its nft transaction.
		var ops []elemOp
		if ops, forgotten = p.staleAffinityOps(ctx, pd.staleAffinity); forgotten {
			for _, op := range ops {
				tx.Delete(p.element(op.e))
			}
			affInTx = len(ops) > 0
		}
	}
	var err error
	t0 = time.Now()
	gen, genOK := p.genBefore(ctx)
	way := "partial"
	switch {
	case pd.full && textMode && p.writer != nil && p.tableAbsent(ctx):
		// A cold start (or the table was deleted): nothing to replace
		// atomically, so nft writes the rules and netlink the elements,
		// several times faster than nft parsing them.
		way = "load"
		err = p.coldLoad(ctx, pd, &gen, &genOK)
	case pd.full && textMode && p.writer != nil && p.refill(ctx, pd, &gen, &genOK):
		// The table is there: rules rewritten in place, sets refilled
		// over netlink (refill.go).
		way = "refill"
		err = pd.err
		pd.refilled = true
	case pd.full && textMode:
		way = "replace"
		// A full sync loads every element: one command per set or map
		// instead of one per element makes nft several times faster, and
		// the text streams into nft as it is written.
		if p.readAffinity != nil {
			pd.carried = p.carriedAffinity(ctx, pd.renders)
		}
		err = p.runText(ctx, func(w io.Writer) error { return p.writeText(w, pd) })
	case tx.NumOperations() == 0:
	case pd.ops != nil && p.writer != nil:
		err = p.writer.apply(append(pd.ops[:len(pd.ops):len(pd.ops)], affOps...))
		if err != nil && len(affOps) > 0 {
			// An entry may have timed out since it was read: without
			// them, and forget them afterwards.
			// The failed batch committed nothing.
			forgotten = false
			err = p.writer.apply(pd.ops)
		}
	default:
		err = p.nft.Run(ctx, tx)
		if err != nil && affInTx {
			// An entry may have timed out since it was read: the same
			// sync without them (nothing was committed), and forget
			// them afterwards.
			forgotten = false
			pd = p.transaction(st, !textMode)
			tx = pd.tx
			err = p.nft.Run(ctx, tx)
		}
	}
	if err != nil {
		p.synced = false
		if pd.full && !pd.fresh {
			// The index is already moved: start afresh.
			p.services = nil
		}
		unlock()
		if klog.V(4).Enabled() {
			klog.InfoS("Failed nftables transaction", "family", p.cfg.Family, "transaction", tx.String())
		}
		return fmt.Errorf("%v nftables sync: %w", p.cfg.Family, err)
	}
	p.genAfter(ctx, gen, genOK, pd.full)
	tApply := time.Since(t0)
	t0 = time.Now()
	plan := pd.commit()
	if pd.full {
		klog.V(2).InfoS("Full sync", "family", p.cfg.Family, "way", way, "fresh", pd.fresh, "render", tRender, "apply", tApply, "commit", time.Since(t0),
			"muted", unmute != nil)
	}
	if d := p.damage; d != nil {
		// Others' narrow damage, repaired over the table now up to date.
		p.damage = nil
		if err := p.repairDamage(ctx, d); err != nil {
			p.synced = false
			unlock()
			return fmt.Errorf("%v nftables repair of %v: %w", p.cfg.Family, d, err)
		}
	}
	after := slices.Clone(p.after)
	unlock()
	if len(pd.staleAffinity) > 0 && !forgotten {
		p.forgetAffinity(ctx, pd.staleAffinity)
	}
	if pd.refilled && p.readAffinity != nil {
		p.pruneAffinity(ctx, pd.renders)
	}
	for _, f := range after {
		if err := f(plan); err != nil {
			klog.ErrorS(err, "After-sync step failed", "family", p.cfg.Family)
		}
	}
	return nil
}

// transaction builds the transaction for st and returns it with a commit
// function that records it as applied (to be called once it succeeded).
// On a full sync, elements go into the transaction only when elemsInTx;
// otherwise they are returned in pending.elems.
func (p *Proxier) transaction(st *proxier.State, elemsInTx bool) *pending {
	tx := p.nft.NewTransaction()
	node := [2]string{st.NodeName, st.NodeZone}
	periodic := p.now().Sub(p.lastFull) > p.FullSyncPeriod
	full := !p.synced || node != p.node || periodic
	// fresh: every Service is planned and rendered anew and the element
	// index rebuilt. A full sync that is due only because the kernel's
	// table must be rewritten (a repair, a retry) starts from the last
	// sync's renders and index instead, as a partial sync does: they
	// depend only on the Services, the node and the config. At 10,000
	// Services that saves most of half a second.
	fresh := full && (p.services == nil || node != p.node || periodic)

	// Render the services that changed (all of them on a full sync); keep
	// the renders of unchanged *Service pointers.
	plan := &proxier.Plan{Config: p.cfg, Services: make([]proxier.ServicePlan, 0, len(st.Services))}
	renders := make(map[*proxier.Service]*svcRender, len(st.Services))
	var changed []*proxier.Service
	for _, svc := range st.Services {
		// An unchanged *Service keeps its plan and render: the plan depends
		// only on the service and the node, and a node change is a full sync.
		if r, ok := p.services[svc]; ok && !fresh {
			renders[svc] = r
			continue
		}
		changed = append(changed, svc)
	}
	for i, r := range renderAll(p.cfg, st, changed, p.noAffinity) {
		renders[changed[i]] = r
	}
	for _, svc := range st.Services {
		plan.Services = append(plan.Services, renders[svc].plan)
	}
	var removed []*svcRender
	if !fresh {
		for svc, r := range p.services {
			if _, ok := renders[svc]; !ok {
				removed = append(removed, r)
			}
		}
	}

	cidrR := p.serviceCIDRRender(st)
	var elems map[elemID]*elemRef
	var lbChains map[string]int
	var affinity map[affinityKey]int
	if fresh {
		n := 0
		for _, r := range renders {
			n += len(r.elems)
		}
		elems, lbChains, affinity = make(map[elemID]*elemRef, n), map[string]int{}, map[affinityKey]int{}
		for _, r := range renders {
			addRender(elems, lbChains, affinity, r, 1)
		}
		addRender(elems, lbChains, affinity, cidrR, 1)
	} else {
		elems, lbChains, affinity = p.elems, p.lbChains, p.affinity
	}

	// The affinity record chains: all of them on a full sync; else those
	// of the last sync, less the removed renders', plus the new ones' (a
	// copy only when one of them has any).
	affChains := p.affChains
	if fresh {
		affChains = map[string][]string{}
	}
	copied := fresh
	edit := func() {
		if !copied {
			affChains, copied = maps.Clone(p.affChains), true
			if affChains == nil {
				affChains = map[string][]string{}
			}
		}
	}
	for _, r := range removed {
		if r.affChain != "" {
			edit()
			delete(affChains, r.affChain)
		}
	}
	for _, svc := range changed {
		if r := renders[svc]; r.affChain != "" {
			edit()
			affChains[r.affChain] = r.affRules
		}
	}

	// The delta of a partial sync, computed without touching the index.
	type change struct {
		refs int
		pos  bool // a contribution was added: e is the new element
		e    elem
	}
	delta := map[elemID]*change{}
	lbDelta := map[string]int{}
	affDelta := map[affinityKey]int{}
	var staleAff []*staleAffinity
	if !fresh {
		apply := func(r *svcRender, sign int) {
			for _, e := range r.elems {
				c := delta[e.id()]
				if c == nil {
					c = &change{e: e}
					delta[e.id()] = c
				}
				c.refs += sign
				if sign > 0 {
					c.pos, c.e = true, e
				}
			}
			for lb := range r.lbCounts {
				lbDelta[lb] += sign
			}
			if r.affinity != nil {
				affDelta[*r.affinity] += sign
			}
		}
		for _, r := range removed {
			apply(r, -1)
		}
		for _, svc := range changed {
			if old, ok := p.services[svc]; ok {
				apply(old, -1)
			}
			apply(renders[svc], 1)
		}
		if !full {
			staleAff = staleAffinities(removed, changed, renders)
		}
		if p.cidrs == nil || !sameElems(p.cidrs.elems, cidrR.elems) {
			if p.cidrs != nil {
				apply(p.cidrs, -1)
			}
			apply(cidrR, 1)
		}
	}

	affNow := func() []affinityKey {
		var out []affinityKey
		for k, n := range affinity {
			if n+affDelta[k] > 0 {
				out = append(out, k)
			}
		}
		for k, n := range affDelta {
			if _, ok := affinity[k]; !ok && n > 0 {
				out = append(out, k)
			}
		}
		slices.SortFunc(out, func(a, b affinityKey) int {
			return strings.Compare(affinityMap(a.proto, a.timeout), affinityMap(b.proto, b.timeout))
		})
		return out
	}()
	sk := newSkeleton(p.cfg, affNow)
	skelKey := sk.key()
	if !full && skelKey != p.skelKey {
		// A new affinity map (or config change): rewrite everything.
		p.synced = false
		return p.transaction(st, elemsInTx)
	}

	res := SyncResult{Full: full, Services: len(st.Services), Changed: len(changed) + len(removed)}
	// applyDelta moves the index to the desired state: at commit for a
	// partial sync, before writing for a full one that is not fresh (a
	// failure then discards the index: see Sync).
	applied := false
	applyDelta := func() {
		if applied {
			return
		}
		applied = true
		for id, c := range delta {
			r := elems[id]
			if r == nil {
				r = &elemRef{}
				elems[id] = r
			}
			r.refs += c.refs
			if c.pos {
				r.e = c.e
			}
			if r.refs <= 0 {
				delete(elems, id)
			}
		}
		for lb, d := range lbDelta {
			if lbChains[lb] += d; lbChains[lb] <= 0 {
				delete(lbChains, lb)
			}
		}
		for k, d := range affDelta {
			if affinity[k] += d; affinity[k] <= 0 {
				delete(affinity, k)
			}
		}
	}
	var ops []elemOp // a partial sync's element changes, as tx has them
	elemOnly := false
	if full {
		applyDelta()
		p.writeFull(tx, sk, dynChains(p.f, lbChains, affChains), elems, elemsInTx)
	} else {
		// New lb chains first, so elements can refer to them; stale ones
		// last, once no element refers to them.
		var newLB, staleLB []string
		for lb, d := range lbDelta {
			before := lbChains[lb]
			switch {
			case before == 0 && before+d > 0:
				newLB = append(newLB, lb)
			case before > 0 && before+d == 0:
				staleLB = append(staleLB, lb)
			}
		}
		slices.Sort(newLB)
		slices.Sort(staleLB)
		// Record chains created or rewritten first too, deleted last.
		var newRec, staleRec []string
		for c, rules := range affChains {
			if old, ok := p.affChains[c]; !ok || !slices.Equal(old, rules) {
				newRec = append(newRec, c)
			}
		}
		for c := range p.affChains {
			if _, ok := affChains[c]; !ok {
				staleRec = append(staleRec, c)
			}
		}
		slices.Sort(newRec)
		slices.Sort(staleRec)
		elemOnly = len(newLB) == 0 && len(staleLB) == 0 && len(newRec) == 0 && len(staleRec) == 0
		for _, lb := range newLB {
			addChain(tx, lb, dynRules(p.f, lb, nil))
		}
		for _, c := range newRec {
			addChain(tx, c, affChains[c])
		}
		ids := make([]elemID, 0, len(delta))
		for id := range delta {
			ids = append(ids, id)
		}
		sortIDs(ids)
		var adds []elem
		for _, id := range ids {
			c := delta[id]
			before := 0
			var old elem
			if r := elems[id]; r != nil {
				before, old = r.refs, r.e
			}
			after := before + c.refs
			switch {
			case before > 0 && after <= 0:
				tx.Delete(p.element(c.e))
				ops = append(ops, elemOp{e: c.e})
			case before == 0 && after > 0:
				adds = append(adds, c.e)
			case before > 0 && after > 0 && c.pos && (old.value != c.e.value || old.verdict != c.e.verdict):
				tx.Delete(p.element(c.e))
				ops = append(ops, elemOp{e: c.e})
				adds = append(adds, c.e)
			}
		}
		for _, e := range adds {
			tx.Add(p.element(e))
			ops = append(ops, elemOp{add: true, e: e})
		}
		for _, lb := range staleLB {
			tx.Delete(&knftables.Chain{Name: lb})
		}
		for _, c := range staleRec {
			tx.Flush(&knftables.Chain{Name: c})
			tx.Delete(&knftables.Chain{Name: c})
		}
	}
	res.Operations = tx.NumOperations()

	commit := func() *proxier.Plan {
		applyDelta()
		if fresh {
			p.lastFull = p.now()
		}
		p.elems, p.lbChains, p.affinity, p.affChains = elems, lbChains, affinity, affChains
		res.Elements = len(elems)
		p.services = renders
		p.cidrs = cidrR
		p.skelKey, p.skel = skelKey, sk
		p.node = node
		p.synced = true
		p.last = res
		return plan
	}
	pd := &pending{tx: tx, full: full, fresh: fresh, commit: commit, staleAffinity: staleAff}
	if full {
		pd.renders, pd.sk, pd.lbChains, pd.affChains = renders, sk, lbChains, affChains
	}
	if elemOnly && netlinkWritable(ops) {
		pd.ops = ops
	}
	if full && !elemsInTx {
		pd.elems = elems
		res.Operations += len(elems)
	}
	return pd
}

// addRender adds (sign 1) a render's contributions to an index.
func addRender(elems map[elemID]*elemRef, lb map[string]int, aff map[affinityKey]int, r *svcRender, sign int) {
	for _, e := range r.elems {
		ref := elems[e.id()]
		if ref == nil {
			ref = &elemRef{e: e}
			elems[e.id()] = ref
		}
		ref.refs += sign
	}
	for name := range r.lbCounts {
		lb[name] += sign
	}
	if r.affinity != nil {
		aff[*r.affinity] += sign
	}
}

// writeFull replaces the whole table, atomically: packets see either the old
// table or the new one, never none.
func (p *Proxier) writeFull(tx *knftables.Transaction, sk *skeleton, dyn []dynChain, elems map[elemID]*elemRef, withElems bool) {
	comment := "rules for svcproxy"
	tx.Add(&knftables.Table{Comment: &comment})
	tx.Delete(&knftables.Table{})
	tx.Add(&knftables.Table{Comment: &comment})
	for _, c := range sk.chains {
		tx.Add(c)
	}
	for _, c := range dyn {
		tx.Add(&knftables.Chain{Name: c.name})
	}
	for _, s := range sk.sets {
		tx.Add(s)
	}
	for _, m := range sk.maps {
		tx.Add(m)
	}
	for _, c := range sk.chains {
		for _, r := range sk.rules[c.Name] {
			tx.Add(&knftables.Rule{Chain: c.Name, Rule: r})
		}
	}
	for _, c := range dyn {
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.name, Rule: r})
		}
	}
	for _, e := range sk.elems {
		tx.Add(p.element(e))
	}
	if !withElems {
		return
	}
	for _, e := range sortedElems(elems) {
		tx.Add(p.element(e))
	}
}

// dynChain is a chain outside the skeleton: an lb chain (its rule follows
// from its name) or an affinity record chain.
type dynChain struct {
	name  string
	rules []string
}

// dynChains lists the lb chains and affinity record chains, sorted.
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
// its name, a record chain's from affChains.
func dynRules(f fam, name string, affChains map[string][]string) []string {
	if pl, proto, k, ok := lbChainPool(name); ok {
		return []string{lbRule(f, pl, proto, k)}
	}
	return affChains[name]
}

// addChain creates chain name (or empties it) and gives it rules.
func addChain(tx *knftables.Transaction, name string, rules []string) {
	tx.Add(&knftables.Chain{Name: name})
	tx.Flush(&knftables.Chain{Name: name})
	for _, r := range rules {
		tx.Add(&knftables.Rule{Chain: name, Rule: r})
	}
}

// element is e as knftables writes it.
func (p *Proxier) element(e elem) *knftables.Element {
	sp := mustSpec(e.set)
	key := texts(sp.key, e.key[:])
	switch sp.kind {
	case kindVMap:
		return &knftables.Element{Map: e.set, Key: key, Value: []string{e.verdict.String()}}
	case kindMap:
		return &knftables.Element{Map: e.set, Key: key, Value: texts(sp.value, e.value[:])}
	}
	return &knftables.Element{Set: e.set, Key: key}
}

// sortedElems lists the elements of an index as nft text sorts them: by
// set, then key text.
func sortedElems(elems map[elemID]*elemRef) []elem {
	ids := make([]elemID, 0, len(elems))
	for id := range elems {
		ids = append(ids, id)
	}
	sortIDs(ids)
	out := make([]elem, len(ids))
	for i, id := range ids {
		out[i] = elems[id].e
	}
	return out
}

// sortIDs sorts element ids by set, then key text.
func sortIDs(ids []elemID) {
	keys := make(map[elemID]string, len(ids))
	for _, id := range ids {
		keys[id] = elem{set: id.set, key: id.key}.keyText(mustSpec(id.set))
	}
	slices.SortFunc(ids, func(a, b elemID) int {
		if c := strings.Compare(a.set, b.set); c != 0 {
			return c
		}
		return strings.Compare(keys[a], keys[b])
	})
}

// key is a fingerprint of the skeleton: a change means a full rewrite.
func (sk *skeleton) key() string {
	var b strings.Builder
	for _, c := range sk.chains {
		fmt.Fprintf(&b, "%s|%v|%v|%v\n", c.Name, deref(c.Type), deref(c.Hook), deref(c.Priority))
		for _, r := range sk.rules[c.Name] {
			b.WriteString(r + "\n")
		}
	}
	for _, s := range sk.sets {
		fmt.Fprintf(&b, "set %s %s %s %v\n", s.Name, s.Type, s.TypeOf, s.Flags)
	}
	for _, m := range sk.maps {
		fmt.Fprintf(&b, "map %s %s %s %v %v\n", m.Name, m.Type, m.TypeOf, m.Flags, deref(m.Timeout))
	}
	for _, e := range sk.elems {
		fmt.Fprintf(&b, "element %s %s\n", e.set, e.keyText(mustSpec(e.set)))
	}
	return b.String()
}

func deref[T any](v *T) any {
	if v == nil {
		return nil
	}
	return *v
}

// renderAll plans and renders svcs, on every CPU when there are many;
// without session affinity when noAffinity.
func renderAll(cfg proxier.Config, st *proxier.State, svcs []*proxier.Service, noAffinity bool) []*svcRender {
	out := make([]*svcRender, len(svcs))
	workers := runtime.GOMAXPROCS(0)
	if len(svcs) < 1000 || workers < 2 {
		workers = 1
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(svcs); i += workers {
				sp := proxier.PlanService(cfg, st, svcs[i])
				out[i] = renderService(cfg, &sp, noAffinity)
			}
		}(w)
	}
	wg.Wait()
	return out
}
