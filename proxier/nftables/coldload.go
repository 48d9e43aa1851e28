package nftables

import (
	"context"
	"io"
	"slices"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
)

// coldLoad writes a full sync's table when the kernel has none: first the
// table with its chains, rules, sets and maps and the elements netlink
// cannot write, through nft; then every other element in one netlink
// batch, grouped per set. The two steps are two transactions; between
// them the table has rules and no service elements, which serves no
// traffic, exactly as the missing table before it did.
func (w *writer) coldLoad(ctx context.Context, ws *guard.Writes, ch *change) error {
	start := time.Now()
	text, ops := groupOps(ch.elems, nil, nil, false)
	tSplit := time.Since(start)
	send := w.batch.ahead(ops)
	tx := w.fullTx(ch, false)
	if err := w.runText(ctx, func(out io.Writer) error { return w.writeText(out, tx, sortElems(text), nil) }); err != nil {
		return err
	}
	tText := time.Since(start)
	ws.Step(ctx)
	err := send(ctx)
	klog.V(2).InfoS("Loaded the table", "family", w.family, "split", tSplit, "rules", tText-tSplit, "elements", time.Since(start)-tText, "count", ops.n)
	return err
}

// groupOps groups the elements of x and fixed for a full change: those of
// the sets netlink does not write (text), and the netlink ops: for each
// set of sets in order (nil: every set netlink writes that has elements,
// sorted), a flush when flush, then an addition of each of its elements.
// The ops are read from x as they are encoded, not copied.
func groupOps(x *index, fixed []elem, sets []string, flush bool) (text []elem, ops opSeq) {
	perSet := map[string][]elem{}
	for _, e := range fixed {
		perSet[e.set] = append(perSet[e.set], e)
	}
	for s, m := range x.sets {
		if !netlinkWrites(s) {
			for k, en := range m {
				text = append(text, elemID{s, k}.with(en))
			}
		}
	}
	for s, es := range perSet {
		if !netlinkWrites(s) {
			text = append(text, es...)
			delete(perSet, s)
		}
	}
	if sets == nil {
		for s := range x.sets {
			if netlinkWrites(s) {
				sets = append(sets, s)
			}
		}
		for s := range perSet {
			if _, ok := x.sets[s]; !ok {
				sets = append(sets, s)
			}
		}
		slices.Sort(sets)
	}
	for _, s := range sets {
		if flush {
			ops.n++
		}
		ops.n += len(perSet[s]) + len(x.sets[s])
	}
	ops.each = func(yield func(elemOp) bool) {
		for _, s := range sets {
			if flush && !yield(elemOp{flush: true, e: elem{set: s}}) {
				return
			}
			for _, e := range perSet[s] {
				if !yield(elemOp{add: true, e: e}) {
					return
				}
			}
			for k, en := range x.sets[s] {
				if !yield(elemOp{add: true, e: elemID{s, k}.with(en)}) {
					return
				}
			}
		}
	}
	return text, ops
}
