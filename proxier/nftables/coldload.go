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
	text, ops := splitColdLoad(ch)
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

// splitColdLoad splits a full change's elements into those nft writes (of
// the sets netlink does not write) and the element ops netlink writes,
// grouped per set in set order.
func splitColdLoad(ch *change) ([]elem, []elemOp) {
	var text []elem
	// Counted first, so that every set's run is allocated once.
	count := map[string]int{}
	for id, en := range ch.elems.elems {
		if !netlinkWrites(id.set) {
			text = append(text, id.with(en))
			continue
		}
		count[id.set]++
	}
	sets := slices.Sorted(maps.Keys(count))
	at := make(map[string]int, len(sets))
	n := 0
	for _, s := range sets {
		at[s] = n
		n += count[s]
	}
	ops := make([]elemOp, n)
	for id, en := range ch.elems.elems {
		i, ok := at[id.set]
		if !ok {
			continue
		}
		ops[i] = elemOp{add: true, e: id.with(en)}
		at[id.set] = i + 1
	}
	return text, ops
}
