package iptables

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// DefaultFullSyncPeriod is how often a sync re-reads the kernel and rewrites
// every chain even when nothing changed.
const DefaultFullSyncPeriod = time.Hour

// Proxier programs one address family through iptables-restore.
type Proxier struct {
	cfg proxier.Config
	opt Options
	run Runner
	// FullSyncPeriod bounds the time between full syncs.
	FullSyncPeriod time.Duration
	now            func() time.Time

	mu sync.Mutex
	// applied is what the last successful sync left in the kernel: table →
	// chain → rules joined by "\n". nil means the next sync is a full one.
	applied  map[string]map[string]string
	lastFull time.Time
	last     SyncResult
	after    []func(*proxier.Plan) error

	// probe reads the cheap change stamp of the ruleset (nil: none for
	// this backend); goodStamp is a stamp known to hold what applied says
	// ("" unknown). See Check.
	probe                  probe
	goodStamp              string
	checksIdle, checksDeep int
	// serviceReadAt and serviceReadCost are when the last read of the
	// per-service chains ended and how long it took.
	serviceReadAt   time.Time
	serviceReadCost time.Duration
}

// OnSynced registers f to run with the plan after every successful sync
// (conntrack cleanup, health-check servers). Its errors are logged; they
// do not fail the sync.
func (p *Proxier) OnSynced(f func(*proxier.Plan) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.after = append(p.after, f)
}

// SyncResult summarises the last sync for logs and metrics.
type SyncResult struct {
	Full          bool
	ChainsWritten int
	ChainsDeleted int
	Rules         map[string]int // total rules per table in the desired ruleset
	// RulesWritten is, per table of Rules, the rules of the chains this
	// sync's restore input wrote (0 for a table it left alone).
	RulesWritten map[string]int
	Bytes        int
	// Operations are the rule and chain lines of the restore input (0
	// when the sync wrote nothing).
	Operations int
	// RestoreFailures counts the iptables-restore runs that failed since
	// New, PartialRestoreFailures those of them in partial syncs. Unlike
	// the rest of the result, a failed sync updates them too.
	RestoreFailures, PartialRestoreFailures int
}

// New returns a Proxier that applies through run.
func New(cfg proxier.Config, opt Options, run Runner) *Proxier {
	p := &Proxier{cfg: cfg, opt: opt, run: run, FullSyncPeriod: DefaultFullSyncPeriod, now: time.Now}
	if er, ok := run.(execRunner); ok {
		p.probe = newProbe(er.bin, er.netns, func(table string) ([]byte, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			return er.Save(ctx, table)
		})
	}
	return p
}

// Family is the address family this proxier programs.
func (p *Proxier) Family() proxier.IPFamily { return p.cfg.Family }

// LastResult returns the summary of the last successful sync, with the
// restore failures up to now.
func (p *Proxier) LastResult() SyncResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// LastSyncFull reports whether the last sync was a full one.
func (p *Proxier) LastSyncFull() bool { return p.LastResult().Full }

// LastSyncOperations is the operations of the last sync's restore input.
func (p *Proxier) LastSyncOperations() int { return p.LastResult().Operations }

// restoreOperations counts the lines of iptables-restore input that
// declare a chain (":") or add, insert, delete or remove one ("-"); table
// headers, COMMIT and comments are no operations.
func restoreOperations(data []byte) int {
	n := 0
	for len(data) > 0 {
		if data[0] == ':' || data[0] == '-' {
			n++
		}
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		data = data[i+1:]
	}
	return n
}

// ForceFullSync makes the next sync re-read the kernel and rewrite everything.
func (p *Proxier) ForceFullSync() {
	p.mu.Lock()
	p.applied = nil
	p.goodStamp = ""
	p.mu.Unlock()
}

// DryRun renders st into the complete iptables-restore input a first sync
// on a clean node would send. It never touches the kernel.
func DryRun(cfg proxier.Config, opt Options, st *proxier.State) []byte {
	rs := Render(proxier.MakePlan(cfg, st), opt)
	return rs.Bytes(JumpInserts(JumpsFor(cfg)))
}

// Sync makes the kernel hold the rules for st, in one iptables-restore,
// then runs the after-sync steps.
func (p *Proxier) Sync(ctx context.Context, st *proxier.State) error {
	plan, after, err := p.sync(ctx, st)
	if err != nil {
		return err
	}
	for _, f := range after {
		if err := f(plan); err != nil {
			klog.ErrorS(err, "After-sync step failed", "family", p.cfg.Family)
		}
	}
	return nil
}

func (p *Proxier) sync(ctx context.Context, st *proxier.State) (*proxier.Plan, []func(*proxier.Plan) error, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	plan := proxier.MakePlan(p.cfg, st)
	rs := Render(plan, p.opt)
	desired := map[string]map[string]string{}
	res := SyncResult{Rules: map[string]int{}, RulesWritten: map[string]int{},
		RestoreFailures: p.last.RestoreFailures, PartialRestoreFailures: p.last.PartialRestoreFailures}
	for _, t := range rs.Tables() {
		m := make(map[string]string, len(t.Chains))
		for _, c := range t.Chains {
			m[c.Name] = strings.Join(c.Rules, "\n")
			res.Rules[t.Name] += len(c.Rules)
		}
		desired[t.Name] = m
		res.RulesWritten[t.Name] = 0
	}

	full := p.applied == nil || p.now().Sub(p.lastFull) > p.FullSyncPeriod
	var data []byte
	if full {
		var err error
		if data, err = p.fullInput(ctx, rs, &res); err != nil {
			p.applied = nil
			return nil, nil, err
		}
	} else {
		data = p.partialInput(rs, desired, &res)
	}
	res.Full, res.Bytes, res.Operations = full, len(data), restoreOperations(data)
	if len(data) > 0 {
		// A partial sync from a good stamp leaves a good stamp when our
		// restore alone moved it. After a full sync (or anything unclear)
		// the next Check reads the tables once, which also proves a
		// repair.
		good, before := p.goodStamp, ""
		p.goodStamp = ""
		if p.probe != nil && good != "" && !full {
			before, _ = p.probe.stamp()
		}
		err := p.run.Restore(ctx, data)
		if err == nil && before != "" && before == good {
			if after, serr := p.probe.stamp(); serr == nil && p.probe.ours(before, after, strings.Count(string(data), "COMMIT\n")) {
				p.goodStamp = after
			}
		}
		if err != nil {
			p.applied = nil
			p.last.RestoreFailures++
			if !full {
				p.last.PartialRestoreFailures++
			}
			if klog.V(4).Enabled() {
				klog.InfoS("Failed iptables-restore input", "family", p.cfg.Family, "input", string(data))
			}
			return nil, nil, fmt.Errorf("%v sync: %w", p.cfg.Family, err)
		}
	}
	p.applied = desired
	if full {
		p.lastFull = p.now()
	}
	p.last = res
	return plan, slices.Clone(p.after), nil
}

// fullInput reads the kernel's tables and returns input that rewrites every
// chain we own, inserts missing jump rules, removes duplicate ones, and
// deletes stale service chains.
func (p *Proxier) fullInput(ctx context.Context, rs *Ruleset, res *SyncResult) ([]byte, error) {
	extra := map[string]Extra{}
	for _, t := range rs.Tables() {
		var e Extra
		names, err := p.run.Chains(ctx, t.Name)
		if err != nil {
			return nil, fmt.Errorf("%v full sync: %w", p.cfg.Family, err)
		}
		want := map[string]bool{}
		for _, c := range t.Chains {
			want[c.Name] = true
		}
		// Stale chains are flushed and deleted in the same transaction that
		// rewrites the chains jumping to them, so nothing references them.
		var stale []string
		for _, name := range names {
			if IsServiceChain(name) && !want[name] {
				stale = append(stale, name)
			}
		}
		slices.Sort(stale)
		e.Flush = stale
		builtin := map[string][]string{}
		for _, j := range JumpsFor(p.cfg) {
			if j.Table != t.Name {
				continue
			}
			rules, ok := builtin[j.From]
			if !ok {
				if rules, _, err = p.run.Rules(ctx, t.Name, j.From); err != nil {
					return nil, fmt.Errorf("%v full sync: %w", p.cfg.Family, err)
				}
				builtin[j.From] = rules
			}
			var found []string
			for _, rule := range rules {
				if j.matches(rule) {
					found = append(found, rule)
				}
			}
			if len(found) == 0 {
				e.Tail = append(e.Tail, fmt.Sprintf("-I %s 1 %s", j.From, j.Spec()))
			}
			for _, dup := range found[min(1, len(found)):] {
				e.Tail = append(e.Tail, fmt.Sprintf("-D %s %s", j.From, dup))
			}
		}
		for _, name := range stale {
			e.Tail = append(e.Tail, "-X "+name)
		}
		extra[t.Name] = e
		res.ChainsWritten += len(t.Chains)
		res.ChainsDeleted += len(stale)
		res.RulesWritten[t.Name] = res.Rules[t.Name]
	}
	return rs.Bytes(extra), nil
}

// partialInput returns input that rewrites only the chains whose content
// changed since the last successful sync and deletes chains no longer
// wanted. It is empty when nothing changed.
func (p *Proxier) partialInput(rs *Ruleset, desired map[string]map[string]string, res *SyncResult) []byte {
	var b strings.Builder
	for _, t := range rs.Tables() {
		prev := p.applied[t.Name]
		var changed []*Chain
		for _, c := range t.Chains {
			if old, ok := prev[c.Name]; !ok || old != desired[t.Name][c.Name] {
				changed = append(changed, c)
			}
		}
		var stale []string
		for name := range prev {
			if _, ok := desired[t.Name][name]; !ok {
				stale = append(stale, name)
			}
		}
		if len(changed) == 0 && len(stale) == 0 {
			continue
		}
		slices.Sort(stale)
		e := Extra{Flush: stale}
		for _, name := range stale {
			e.Tail = append(e.Tail, "-X "+name)
		}
		writeTable(&b, t.Name, changed, e)
		res.ChainsWritten += len(changed)
		res.ChainsDeleted += len(stale)
		for _, c := range changed {
			res.RulesWritten[t.Name] += len(c.Rules)
		}
	}
	return []byte(b.String())
}
