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
	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
)

// DefaultFullSyncPeriod bounds the time between full rewrites of the table.
const DefaultFullSyncPeriod = time.Hour

// Proxier programs one address family into the table "svcproxy". It is
// three parts: the translator turns each State into the table and the
// change from the last one (translate.go), the writer puts the change in
// the kernel (writer.go), and the guard watches the table for others'
// changes (package guard), which the next sync takes as an input. After the
// first (full) sync, a sync carries only the elements and chains that
// changed; the table is never listed on a normal sync.
type Proxier struct {
	cfg   proxier.Config
	tr    *translator
	w     *writer
	guard *guard.Guard
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
}

// SyncResult summarises a sync.
type SyncResult struct {
	Full       bool
	Operations int
	Services   int
	Changed    int
	Elements   int // set and map elements in the table after the sync
	// CleanupFailures counts, since New, the syncs that could not delete
	// stale chains, sets or maps (kube-proxy's cleanup failures).
	CleanupFailures int
}

// New returns a Proxier for cfg.Family using nft, whose table must be
// TableName in that family. It writes through nft alone, and its guard
// reads nothing: NewKernel makes the Proxier svcproxy runs. The plan is
// made in kube-proxy's nftables mode (cfg.Mode is set to
// proxier.NFTablesMode); cfg.ServiceClusterIPRange stands for the service
// CIDRs while a State carries none.
func New(cfg proxier.Config, nft knftables.Interface) *Proxier {
	tr := newTranslator(cfg)
	f := famOf(cfg.Family)
	g := guard.New(guard.Config{Family: cfg.Family, Table: TableName, Traffic: isTrafficSet})
	return &Proxier{cfg: tr.cfg, tr: tr, guard: g,
		w:              &writer{family: cfg.Family, f: f, nft: nft, guard: g},
		FullSyncPeriod: DefaultFullSyncPeriod, now: time.Now}
}

// Share makes the proxiers, which program the same network namespace,
// mute each other's notification watchers during bulk writes and count
// each other's transactions as their own (see guard.Share). Call it before
// the proxiers sync or watch.
func Share(ps ...*Proxier) {
	gs := make([]*guard.Guard, len(ps))
	for i, p := range ps {
		gs[i] = p.guard
	}
	guard.Share(gs...)
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

// LastSyncOperations is the operations of the last sync's transaction (0
// when it wrote nothing).
func (p *Proxier) LastSyncOperations() int { return p.LastResult().Operations }

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

// Watch starts the guard: it checks every interval that the rules are in
// place and watches the nf_tables notifications for others' changes to
// the table. The channel asks for a sync when it finds the table altered;
// that sync rewrites what was damaged.
func (p *Proxier) Watch(ctx context.Context, interval time.Duration) <-chan struct{} {
	return p.guard.Watch(ctx, interval)
}

// DryRun returns the transaction a first sync of st would run, in nft -f
// syntax. It never touches the kernel.
func DryRun(cfg proxier.Config, st *proxier.State) string {
	p := New(cfg, knftables.NewFake(famOf(cfg.Family).family, TableName))
	ch := p.tr.build(st, nil, true, true, time.Time{}).change
	var b strings.Builder
	p.w.writeText(&b, p.w.fullTx(ch, false), ch.elems.sorted(), nil)
	return b.String()
}

// Sync makes the table hold the rules for st, repairing what others
// damaged since the last sync, then runs the after-sync steps.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State) error {
	return p.sync(ctx, st, p.guard.Take())
}

// sync is Sync with the damage to repair. Narrow damage the last table can
// name the content of is rewritten over a partial sync; any other makes
// the sync a full one.
func (p *Proxier) sync(ctx context.Context, st *proxier.State, dmg guard.Damage) error {
	p.mu.Lock()
	narrow := !dmg.Empty() && !dmg.Broad && p.last != nil && p.last.repairable(dmg)
	force := !p.synced || !dmg.Empty() && !narrow
	start := time.Now()
	periodic := p.last == nil || p.now().Sub(p.last.rendered) > p.FullSyncPeriod
	d := p.tr.build(st, p.last, force, periodic, p.now())
	var rep *repair
	if narrow && !d.change.full {
		rep = p.tr.repair(d, dmg)
	}
	tRender := time.Since(start)
	cleanupFailures := p.w.cleanupFailures
	o, err := p.w.write(ctx, d, rep)
	if err != nil {
		p.synced = false
		p.mu.Unlock()
		return err
	}
	p.last, p.synced, p.res = d.commit(), true, d.result
	p.res.CleanupFailures = p.w.cleanupFailures
	if p.w.cleanupFailures > cleanupFailures {
		// A full sync deletes what is left: the next one tries again.
		p.synced = false
	}
	if d.change.full {
		klog.V(2).InfoS("Full sync", "family", p.cfg.Family, "way", o.way, "fresh", d.fresh, "render", tRender,
			"apply", time.Since(start)-tRender, "muted", o.muted)
	}
	after := slices.Clone(p.after)
	p.mu.Unlock()
	p.w.settle(ctx, d, o)
	plan := d.fullPlan()
	for _, f := range after {
		if err := f(plan); err != nil {
			klog.ErrorS(err, "After-sync step failed", "family", p.cfg.Family)
		}
	}
	return nil
}
