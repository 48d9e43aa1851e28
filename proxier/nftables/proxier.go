package nftables

import (
	"context"
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
	tr  *translator
	w   *writer
	// FullSyncPeriod bounds the time between full syncs.
	FullSyncPeriod time.Duration
	now            func() time.Time

	mu sync.Mutex
	// last is the table the last successful sync left; synced says the
	// next sync may carry only what changed.
	last   *table
	synced bool
	res    SyncResult
	after  []func(*proxier.Plan) error

	reader shapeReader // reads the kernel's table for Check; nil: no checks
	chk    checkState  // what Check remembers (check.go)
	// damage is others' narrow damage the next sync repairs (repair.go).
	damage *damage
	// ev is the watcher's connection, which bulk writes mute (mute.go);
	// group holds it and those of the namespace's other proxiers.
	ev    eventMute
	group *listeners
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
	p := &Proxier{cfg: cfg, f: famOf(cfg.Family), tr: newTranslator(cfg, serviceCIDRs),
		FullSyncPeriod: DefaultFullSyncPeriod, now: time.Now}
	p.w = &writer{family: cfg.Family, f: p.f, nft: nft, guard: proxierGuard{p}}
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
	ch := p.tr.build(st, nil, true, true, time.Time{}).change
	var b strings.Builder
	p.w.writeText(&b, p.w.fullTx(ch, false), ch.elems.sorted(), nil)
	return b.String()
}

// Sync makes the table hold the rules for st, then runs the after-sync steps.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State) error {
	p.mu.Lock()
	if p.ev.overrun.Swap(false) {
		p.synced = false
	}
	dmg := p.damage
	p.damage = nil
	start := time.Now()
	periodic := p.last == nil || p.now().Sub(p.last.rendered) > p.FullSyncPeriod
	d := p.tr.build(st, p.last, !p.synced, periodic, p.now())
	var rep *repair
	if dmg != nil && !d.change.full {
		// Others' narrow damage, repaired over the table the sync makes.
		rep = p.tr.repair(d, dmg)
	}
	tRender := time.Since(start)
	o, err := p.w.write(ctx, d, rep)
	if err != nil {
		p.synced = false
		p.mu.Unlock()
		return err
	}
	p.last, p.synced, p.res = d.commit(), true, d.result
	if d.change.full {
		klog.V(2).InfoS("Full sync", "family", p.cfg.Family, "way", o.way, "fresh", d.fresh, "render", tRender,
			"apply", time.Since(start)-tRender, "muted", o.muted)
	}
	after := slices.Clone(p.after)
	p.mu.Unlock()
	p.w.settle(ctx, d, o)
	for _, f := range after {
		if err := f(d.plan); err != nil {
			klog.ErrorS(err, "After-sync step failed", "family", p.cfg.Family)
		}
	}
	return nil
}

// proxierGuard accounts for the writer's transactions in the proxier's
// guard state (check.go, mute.go). Callers hold p.mu.
type proxierGuard struct{ p *Proxier }

type proxierWrites struct {
	p      *Proxier
	gen    uint32
	ok     bool
	unmute func()
}

func (g proxierGuard) Begin(ctx context.Context, bulk bool) writes {
	w := &proxierWrites{p: g.p}
	if bulk {
		w.unmute = g.p.mute(ctx)
	}
	w.gen, w.ok = g.p.genBefore(ctx)
	return w
}

// Step accounts for one of several transactions of a sync: when exactly
// one transaction was committed since w.gen, it was this one and w.gen
// moves past it (so that Committed, after the last one, sees one
// transaction of ours); otherwise the count is lost.
func (w *proxierWrites) Step(ctx context.Context) {
	if g, ok := w.p.genBefore(ctx); ok && w.ok && g == w.gen+1 {
		w.gen = g
		w.p.group.own(g)
	} else {
		w.ok = false
	}
}

func (w *proxierWrites) Committed(ctx context.Context, full bool) {
	w.p.genAfter(ctx, w.gen, w.ok, full)
}

func (w *proxierWrites) Own(ctx context.Context, run func() error) error {
	gen, ok := w.p.genBefore(ctx)
	if err := run(); err != nil {
		return err
	}
	w.p.genAfter(ctx, gen, ok, false)
	return nil
}

func (w *proxierWrites) Done(*tableShape) {
	if w.unmute != nil {
		w.unmute()
	}
}
