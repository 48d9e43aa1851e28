package nftables

import (
	"bufio"
	"context"
	"fmt"
	"io"
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
	tr  *translator
	// FullSyncPeriod bounds the time between full syncs.
	FullSyncPeriod time.Duration
	now            func() time.Time

	mu sync.Mutex
	// last is the table the last successful sync left; synced says the
	// next sync may carry only what changed.
	last   *table
	synced bool
	reader shapeReader // reads the kernel's table for Check; nil: no checks
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
	// runText runs a transaction given as nft -f text (full syncs); nil:
	// every transaction goes through nft.Run.
	runText func(ctx context.Context, write func(io.Writer) error) error
	// writer, when set, writes element-only partial syncs over netlink.
	writer *elemWriter
	res    SyncResult
	after  []func(*proxier.Plan) error
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
	p := &Proxier{cfg: cfg, f: famOf(cfg.Family), nft: nft, tr: newTranslator(cfg, serviceCIDRs),
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
	return p.res
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
	d := p.tr.build(st, nil, true, true, time.Time{})
	var b strings.Builder
	p.writeText(&b, p.fullTx(d.change, false), d.change.elems.sorted(), nil)
	return b.String()
}

// writeText writes tx, then elems with one command per set or map (at most
// maxGroup elements each), then the lines of extra, as nft -f input.
func (p *Proxier) writeText(w io.Writer, tx *knftables.Transaction, elems []elem, extra []string) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.WriteString(tx.String())
	cur, n := "", 0
	var sp setSpec
	var buf []byte
	for _, e := range elems {
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
	for _, l := range extra {
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
	periodic := p.last == nil || p.now().Sub(p.last.rendered) > p.FullSyncPeriod
	d := p.tr.build(st, p.last, !p.synced, periodic, p.now())
	ch := d.change
	tRender := time.Since(t0)
	if ch.full {
		// It rewrites what others damaged too.
		p.damage = nil
	}
	var unmute func()
	if ch.full || ch.operations() > muteAbove || p.damage != nil && len(p.damage.sets) > 0 {
		unmute = p.mute(ctx)
	}
	unlock := func() {
		if unmute != nil {
			unmute()
		}
		p.mu.Unlock()
	}
	netlinkOnly := ch.elementsOnly() && p.writer != nil && netlinkWritable(ch.ops)
	// Affinity entries pinned to endpoints this partial sync removes go in
	// its netlink batch or nft transaction (else they are deleted after it).
	var affOps []elemOp
	forgotten := false
	if !ch.full && len(d.stale) > 0 && ch.operations() > 0 {
		affOps, forgotten = p.staleAffinityOps(ctx, d.stale)
	}
	var err error
	t0 = time.Now()
	gen, genOK := p.genBefore(ctx)
	way := "partial"
	var tx *knftables.Transaction
	switch {
	case ch.full && textMode && p.writer != nil && p.tableAbsent(ctx):
		// A cold start (or the table was deleted): nothing to replace
		// atomically, so nft writes the rules and netlink the elements,
		// several times faster than nft parsing them.
		way = "load"
		err = p.coldLoad(ctx, ch, &gen, &genOK)
	case ch.full && textMode && p.writer != nil:
		var ok bool
		if ok, err = p.refill(ctx, ch, &gen, &genOK); ok {
			// The table is there: rules rewritten in place, sets
			// refilled over netlink (refill.go).
			way = "refill"
			break
		}
		fallthrough
	case ch.full && textMode:
		way = "replace"
		// A full sync loads every element: one command per set or map
		// instead of one per element makes nft several times faster, and
		// the text streams into nft as it is written.
		var carried []string
		if p.readAffinity != nil {
			carried = p.carriedAffinity(ctx, d.next.renders)
		}
		tx = p.fullTx(ch, false)
		err = p.runText(ctx, func(w io.Writer) error { return p.writeText(w, tx, ch.elems.sorted(), carried) })
	case ch.full:
		tx = p.fullTx(ch, true)
		err = p.nft.Run(ctx, tx)
	case ch.operations() == 0:
	case netlinkOnly:
		err = p.writer.apply(append(ch.ops[:len(ch.ops):len(ch.ops)], affOps...))
		if err != nil && len(affOps) > 0 {
			// An entry may have timed out since it was read: without
			// them (the failed batch committed nothing), and forget
			// them afterwards.
			forgotten = false
			err = p.writer.apply(ch.ops)
		}
	default:
		tx = p.partialTx(ch, affOps)
		err = p.nft.Run(ctx, tx)
		if err != nil && len(affOps) > 0 {
			// The same: the transaction without them.
			forgotten = false
			tx = p.partialTx(ch, nil)
			err = p.nft.Run(ctx, tx)
		}
	}
	if err != nil {
		p.synced = false
		unlock()
		if klog.V(4).Enabled() && tx != nil {
			klog.InfoS("Failed nftables transaction", "family", p.cfg.Family, "transaction", tx.String())
		}
		return fmt.Errorf("%v nftables sync: %w", p.cfg.Family, err)
	}
	p.genAfter(ctx, gen, genOK, ch.full)
	tApply := time.Since(t0)
	p.last, p.synced = d.commit(), true
	p.res = d.result
	if ch.full {
		klog.V(2).InfoS("Full sync", "family", p.cfg.Family, "way", way, "fresh", d.fresh, "render", tRender, "apply", tApply,
			"muted", unmute != nil)
	}
	if dmg := p.damage; dmg != nil {
		// Others' narrow damage, repaired over the table now up to date.
		p.damage = nil
		if err := p.repairDamage(ctx, dmg); err != nil {
			p.synced = false
			unlock()
			return fmt.Errorf("%v nftables repair of %v: %w", p.cfg.Family, dmg, err)
		}
	}
	after := slices.Clone(p.after)
	unlock()
	if len(d.stale) > 0 && !forgotten {
		p.forgetAffinity(ctx, d.stale)
	}
	if way == "refill" && p.readAffinity != nil {
		p.pruneAffinity(ctx, d.next.renders)
	}
	for _, f := range after {
		if err := f(d.plan); err != nil {
			klog.ErrorS(err, "After-sync step failed", "family", p.cfg.Family)
		}
	}
	return nil
}

// fullTx is the nft transaction that replaces the whole table with ch,
// atomically: packets see either the old table or the new one, never none.
// The elements of the index are in it only when withElems.
func (p *Proxier) fullTx(ch *change, withElems bool) *knftables.Transaction {
	tx := p.nft.NewTransaction()
	sk := ch.sk
	comment := "rules for svcproxy"
	tx.Add(&knftables.Table{Comment: &comment})
	tx.Delete(&knftables.Table{})
	tx.Add(&knftables.Table{Comment: &comment})
	for _, c := range sk.chains {
		tx.Add(c)
	}
	for _, c := range ch.dyn {
		tx.Add(&knftables.Chain{Name: c.name})
	}
	for _, s := range sk.sets {
		tx.Add(s)
	}
	for _, m := range sk.maps {
		tx.Add(m)
	}
	addRules(tx, sk, ch.dyn)
	for _, e := range sk.elems {
		tx.Add(p.element(e))
	}
	if withElems {
		for _, e := range ch.elems.sorted() {
			tx.Add(p.element(e))
		}
	}
	return tx
}

// addRules adds the rules of the skeleton's chains and of dyn.
func addRules(tx *knftables.Transaction, sk *skeleton, dyn []dynChain) {
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
}

// partialTx is the nft transaction of a partial change, with the element
// deletions extra (stale affinity entries) after the change's own.
func (p *Proxier) partialTx(ch *change, extra []elemOp) *knftables.Transaction {
	tx := p.nft.NewTransaction()
	for _, c := range ch.chains {
		addChain(tx, c.name, c.rules)
	}
	for _, op := range append(ch.ops[:len(ch.ops):len(ch.ops)], extra...) {
		if op.add {
			tx.Add(p.element(op.e))
		} else {
			tx.Delete(p.element(op.e))
		}
	}
	for _, lb := range ch.staleLB {
		tx.Delete(&knftables.Chain{Name: lb})
	}
	for _, c := range ch.staleRec {
		tx.Flush(&knftables.Chain{Name: c})
		tx.Delete(&knftables.Chain{Name: c})
	}
	return tx
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
