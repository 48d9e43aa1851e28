package nftables

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
)

// writer is the only code that writes to the kernel. It picks how a
// change gets there:
//
//   - load: a full change into no table (a cold start, or the table was
//     deleted): nft writes the rules, netlink the elements (coldload.go);
//   - refill: a full change over the table that is there: its chains
//     rewritten in place, its sets refilled over netlink (refill.go);
//   - replace: a full change as one nft -f transaction that replaces the
//     table (the fallback, and the only way without netlink);
//   - netlink: a partial change of elements only, as one netlink batch;
//   - nft: any other partial change, as one nft transaction.
//
// Around them it deletes the session-affinity entries a change makes
// stale and carries those a full change keeps (affinity_kernel.go), and it
// repairs others' narrow damage. Every transaction it commits is accounted
// to the guard, and bulk writes mute the guard's watchers.
type writer struct {
	family proxier.IPFamily
	f      fam
	nft    knftables.Interface
	// runText runs nft -f with the text write writes; nil: every
	// transaction goes through nft.Run (a knftables.Fake).
	runText func(ctx context.Context, write func(io.Writer) error) error
	// batch writes element batches over netlink; nil: none.
	batch *elemWriter
	// shapes reads the outline of the kernel's table; nil: none.
	shapes interface {
		Shape(ctx context.Context) (*nfnl.Shape, error)
	}
	// readAffinity reads an affinity map's entries with their timeouts;
	// nil: full changes do not carry affinity.
	readAffinity affinityReader
	guard        guardian
	// cleanupFailures counts the refills that could not delete the
	// stale chains, sets and maps (refill.go, step 3).
	cleanupFailures int
}

// guardian is what the writer tells the guard of its writes (so that the
// guard does not take them for someone else's), and asks of it: to mute
// the namespace's notification watchers around bulk writes. The Writes
// it returns accounts each transaction (Step, Committed, Own) and ends
// with the table's shape (Done).
type guardian interface {
	Begin(ctx context.Context, bulk bool) *guard.Writes
}

// muteAbove is how many element operations a sync writes before it leaves
// the notification group for them.
const muteAbove = 1000

// outcome is what a write did, for what follows it.
type outcome struct {
	way   string
	muted bool
	// forgot: the stale affinity entries went with the change.
	forgot bool
}

// write puts d's change in the kernel and then, when rep is set, repairs
// others' narrow damage over it.
func (w *writer) write(ctx context.Context, d *desired, rep *repair) (outcome, error) {
	ch := d.change
	o := outcome{muted: ch.full || ch.operations() > muteAbove || rep != nil && len(rep.sets) > 0}
	ws := w.guard.Begin(ctx, o.muted)
	err := w.writeChange(ctx, ws, d, &o)
	if err == nil {
		ws.Committed(ctx, ch.full)
		if rep != nil {
			if err = w.writeRepair(ctx, ws, rep); err != nil {
				err = fmt.Errorf("repair of %v: %w", rep.dmg, err)
			}
		}
	}
	if err != nil {
		ws.Done(nil)
		return o, fmt.Errorf("%v nftables sync: %w", w.family, err)
	}
	ws.Done(d.shape())
	return o, nil
}

// writeChange writes d's change, and records in o how.
func (w *writer) writeChange(ctx context.Context, ws *guard.Writes, d *desired, o *outcome) error {
	ch := d.change
	if ch.full {
		return w.writeFull(ctx, ws, d, o)
	}
	if ch.operations() == 0 {
		o.way = "none"
		return nil
	}
	// Affinity entries pinned to endpoints this sync removes go in its
	// batch or transaction: no new connection follows them to an
	// endpoint that is gone.
	var affOps []elemOp
	if len(d.stale) > 0 {
		affOps, o.forgot = w.staleAffinityOps(ctx, d.stale)
	}
	if ch.elementsOnly() && w.batch != nil && netlinkWritable(ch.ops) {
		o.way = "netlink"
		err := w.batch.apply(ctx, append(ch.ops[:len(ch.ops):len(ch.ops)], affOps...))
		if err != nil && len(affOps) > 0 {
			// An entry may have timed out since it was read: the batch
			// without them (the failed one committed nothing); they are
			// forgotten afterwards.
			o.forgot = false
			err = w.batch.apply(ctx, ch.ops)
		}
		return err
	}
	o.way = "nft"
	tx := w.partialTx(ch, affOps)
	err := w.nft.Run(ctx, tx)
	if err != nil && len(affOps) > 0 {
		o.forgot = false
		tx = w.partialTx(ch, nil)
		err = w.nft.Run(ctx, tx)
	}
	if err != nil && klog.V(4).Enabled() {
		klog.InfoS("Failed nftables transaction", "family", w.family, "transaction", tx.String())
	}
	return err
}

// writeFull writes a full change by the fastest way the kernel's table
// allows.
func (w *writer) writeFull(ctx context.Context, ws *guard.Writes, d *desired, o *outcome) error {
	ch := d.change
	if w.runText == nil {
		o.way = "nft"
		return w.nft.Run(ctx, w.fullTx(ch, true))
	}
	if w.batch != nil {
		if w.tableAbsent(ctx) {
			o.way = "load"
			return w.coldLoad(ctx, ws, ch)
		}
		if ok, err := w.refill(ctx, ws, ch); ok {
			o.way = "refill"
			return err
		}
	}
	// One command per set or map instead of one per element makes nft
	// several times faster, and the text streams into nft as it is
	// written.
	o.way = "replace"
	var carried []string
	if w.readAffinity != nil {
		carried = w.carriedAffinity(ctx, d.next.renders)
	}
	tx := w.fullTx(ch, false)
	return w.runText(ctx, func(out io.Writer) error { return w.writeText(out, tx, ch.elems.sorted(), carried) })
}

// settle does, once the sync is committed and the lock released, what may
// wait: forgetting the stale affinity entries the change did not take,
// and, after a refill (which keeps the affinity maps), pruning the entries
// no longer valid.
func (w *writer) settle(ctx context.Context, d *desired, o outcome) {
	if len(d.stale) > 0 && !o.forgot {
		w.forgetAffinity(ctx, d.stale)
	}
	if o.way == "refill" && w.readAffinity != nil {
		w.pruneAffinity(ctx, d.next.renders)
	}
}

// fullTx is the nft transaction that replaces the whole table with ch,
// atomically: packets see either the old table or the new one, never none.
// The elements of the index are in it only when withElems.
func (w *writer) fullTx(ch *change, withElems bool) *knftables.Transaction {
	tx := w.nft.NewTransaction()
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
		tx.Add(element(e))
	}
	if withElems {
		for _, e := range ch.elems.sorted() {
			tx.Add(element(e))
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
func (w *writer) partialTx(ch *change, extra []elemOp) *knftables.Transaction {
	tx := w.nft.NewTransaction()
	for _, c := range ch.chains {
		addChain(tx, c.name, c.rules)
	}
	for _, op := range append(ch.ops[:len(ch.ops):len(ch.ops)], extra...) {
		if op.add {
			tx.Add(element(op.e))
		} else {
			tx.Delete(element(op.e))
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
func element(e elem) *knftables.Element {
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

// maxGroup bounds the elements of one add-element command.
const maxGroup = 20000

// writeText writes tx, then elems with one command per set or map (at most
// maxGroup elements each), then the lines of extra, as nft -f input.
func (w *writer) writeText(out io.Writer, tx *knftables.Transaction, elems []elem, extra []string) error {
	bw := bufio.NewWriterSize(out, 1<<16)
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
			fmt.Fprintf(bw, "add element %s %s %s { ", w.f.family, TableName, e.set)
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

// writeRepair rewrites what rep names: one nft transaction for the chains
// and the sets netlink does not write, one netlink batch for the other
// sets.
func (w *writer) writeRepair(ctx context.Context, ws *guard.Writes, rep *repair) error {
	start := time.Now()
	tx := w.nft.NewTransaction()
	for _, c := range rep.chains {
		tx.Flush(&knftables.Chain{Name: c.name})
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.name, Rule: r})
		}
	}
	var ops []elemOp
	for _, s := range rep.sets {
		if !netlinkWrites(s.name) || w.batch == nil {
			// Interval sets: nft merges and splits them, so always
			// flushed and refilled (they are small).
			switch o := s.def.(type) {
			case *knftables.Set:
				tx.Flush(o)
			case *knftables.Map:
				tx.Flush(o)
			}
			for _, e := range s.elems {
				tx.Add(element(e))
			}
			continue
		}
		if s.flush {
			ops = append(ops, elemOp{flush: true, e: elem{set: s.name}})
		}
		// Adding an element that is there, with the same value, is a
		// no-op for the kernel (no NLM_F_EXCL), so what is left of a
		// set need not be flushed.
		for _, e := range s.elems {
			ops = append(ops, elemOp{add: true, e: e})
		}
	}
	if tx.NumOperations() > 0 {
		if err := ws.Own(ctx, func() error { return w.nft.Run(ctx, tx) }); err != nil {
			return err
		}
	}
	if len(ops) > 0 {
		if err := ws.Own(ctx, func() error { return w.batch.apply(ctx, ops) }); err != nil {
			return err
		}
	}
	klog.V(2).InfoS("Repaired the table", "family", w.family, "rewritten", rep.dmg.String(), "elements", len(ops), "took", time.Since(start))
	return nil
}

// tableAbsent reports whether the kernel has no table of ours (an error
// reading it counts as present: the caller then takes the atomic path).
func (w *writer) tableAbsent(ctx context.Context) bool {
	if w.shapes != nil {
		shape, err := w.shapes.Shape(ctx)
		return err == nil && !shape.Exists
	}
	_, err := w.nft.List(ctx, "chains")
	return knftables.IsNotFound(err)
}
