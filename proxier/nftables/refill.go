package nftables

import (
	"context"
	"slices"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
)

// A full sync over a table that exists (a periodic full sync, the first
// sync after a restart, a repair) need not replace the table: its chains
// are few and small, and every per-Service item is a set or map element.
// refill rewrites it in place, in up to three transactions:
//
//  1. through nft: every chain of the skeleton and every lb chain is
//     created if missing, flushed and given its rules again, every set and
//     map is created if missing, and the sets netlink does not write
//     (intervals) are flushed and refilled;
//  2. over netlink, one batch: every other static set and map is flushed
//     and refilled;
//  3. through nft, when the kernel holds chains, sets or maps the skeleton
//     no longer has: they are deleted, now that nothing refers to them (a
//     failure here is counted in cleanupFailures and fails nothing).
//
// Each step is atomic and each only moves the table towards the desired
// one: between steps 1 and 2 the new rules meet the old elements, which
// are the desired ones but for what changed since the last sync (the same
// mixture a partial sync goes through). Dynamic maps (session affinity)
// are never flushed, so affinity outlives the sync. It costs a fraction of
// a replacement, in which nft parses every element
// (BenchmarkKernelFullSync10k compares the ways).
//
// refill reports false, having changed nothing, when the table cannot be
// listed or a set or map of the kernel has a definition the skeleton does
// not (an older layout): the caller then replaces the table as a whole.
// After that, it reports true and the error of the step that failed.
func (w *writer) refill(ctx context.Context, ws *guard.Writes, ch *change) (bool, error) {
	sk := ch.sk
	start := time.Now()
	var tList, t1, t2 time.Duration
	defer func() {
		if t1 > 0 {
			klog.V(2).InfoS("Refilled the table", "family", w.family, "list", tList, "rules", t1-tList, "elements", t2-t1, "stale", time.Since(start)-t2)
		}
	}()
	if w.shapes == nil {
		return false, nil
	}
	// Names only, over netlink: nft would list every element too.
	kernel, err := w.shapes.Shape(ctx)
	if err != nil || !kernel.Exists {
		klog.V(2).InfoS("Cannot list the table; replacing it", "family", w.family, "err", err)
		return false, nil
	}

	tList = time.Since(start)

	// Step 1.
	tx := w.nft.NewTransaction()
	comment := "rules for svcproxy"
	tx.Add(&knftables.Table{Comment: &comment})
	dyn := ch.dyn
	want := map[string]bool{}
	for _, c := range sk.chains {
		tx.Add(c)
		tx.Flush(c)
		want[c.Name] = true
	}
	for _, c := range dyn {
		tx.Add(&knftables.Chain{Name: c.name})
		tx.Flush(&knftables.Chain{Name: c.name})
		want[c.name] = true
	}
	var netlinkSets []string
	for _, s := range sk.setDefs() {
		tx.Add(s.obj)
		want[s.name] = true
		switch sp := mustSpec(s.name); {
		case sp.dynamic:
		case !sp.interval:
			netlinkSets = append(netlinkSets, s.name)
		default:
			tx.Flush(s.obj)
		}
	}
	addRules(tx, sk, dyn)
	slices.Sort(netlinkSets)
	text, ops := groupOps(ch.elems, sk.elems, netlinkSets, true)
	send := w.batch.ahead(ops)
	for _, e := range text {
		tx.Add(element(e))
	}
	if err := w.nft.Run(ctx, tx); err != nil {
		// Most likely a set or map whose definition changed: replace
		// the table instead.
		klog.V(2).InfoS("Cannot rewrite the table in place; replacing it", "family", w.family, "err", err)
		return false, nil
	}
	ws.Step(ctx)
	t1 = time.Since(start)

	// Step 2.
	err = send(ctx)
	t2 = time.Since(start)
	if err != nil {
		return true, err
	}

	// Step 3.
	stale := w.nft.NewTransaction()
	var staleChains, staleSets []string
	for c := range kernel.Chains {
		if !want[c] {
			staleChains = append(staleChains, c)
		}
	}
	for s := range kernel.Sets {
		if !want[s] {
			staleSets = append(staleSets, s)
		}
	}
	slices.Sort(staleChains)
	slices.Sort(staleSets)
	// Stale chains are emptied first (their rules may name stale sets),
	// then stale sets and maps deleted (their elements may jump to stale
	// chains), then the chains.
	for _, c := range staleChains {
		stale.Flush(&knftables.Chain{Name: c})
	}
	for _, s := range staleSets {
		if kernel.Sets[s].IsMap() {
			stale.Delete(&knftables.Map{Name: s})
		} else {
			stale.Delete(&knftables.Set{Name: s})
		}
	}
	for _, c := range staleChains {
		stale.Delete(&knftables.Chain{Name: c})
	}
	if stale.NumOperations() > 0 {
		ws.Step(ctx)
		if err := w.nft.Run(ctx, stale); err != nil {
			// As kube-proxy's deletion of stale chains: the table holds
			// what the sync meant and nothing refers to what is left, so
			// the sync stands; the failure is counted apart, and the
			// next sync is a full one that tries again (Proxier.sync).
			w.cleanupFailures++
			klog.ErrorS(err, "Unable to delete stale chains, sets and maps; will retry later", "family", w.family,
				"chains", staleChains, "sets", staleSets)
		}
	}
	return true, nil
}
