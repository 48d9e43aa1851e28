package nftables

import (
	"context"
	"io"
	"maps"
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
	tx := w.fullTx(ch, false)
	if err := w.runText(ctx, func(out io.Writer) error { return w.writeText(out, tx, sortElems(text), nil) }); err != nil {
		return err
	}
	tText := time.Since(start)
	ws.Step(ctx)
	err := w.batch.apply(ctx, ops)
	klog.V(2).InfoS("Loaded the table", "family", w.family, "split", tSplit, "rules", tText-tSplit, "elements", time.Since(start)-tText, "count", len(ops))
	return err
}

// groupOps groups the elements of x and fixed for a full change: those of
// the sets netlink does not write (text), and, for each set of sets in
// order (nil: every set netlink writes that has elements, sorted), a flush
// when flush, then an addition of each of its elements, in one slice
// allocated once.
func groupOps(x *index, fixed []elem, sets []string, flush bool) (text []elem, ops []elemOp) {
	each := func(f func(e elem)) {
		for _, e := range fixed {
			f(e)
		}
		for id, en := range x.elems {
			f(id.with(en))
		}
	}
	count := map[string]int{}
	each(func(e elem) {
		if netlinkWrites(e.set) {
			count[e.set]++
		} else {
			text = append(text, e)
		}
	})
	if sets == nil {
		sets = slices.Sorted(maps.Keys(count))
	}
	at := make(map[string]int, len(sets))
	n := 0
	for _, s := range sets {
		if flush {
			n++
		}
		at[s] = n
		n += count[s]
	}
	ops = make([]elemOp, n)
	for _, s := range sets {
		if flush {
			ops[at[s]-1] = elemOp{flush: true, e: elem{set: s}}
		}
	}
	each(func(e elem) {
		if i, ok := at[e.set]; ok {
			ops[i] = elemOp{add: true, e: e}
			at[e.set] = i + 1
		}
	})
	return text, ops
}
