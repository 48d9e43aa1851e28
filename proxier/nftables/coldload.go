package nftables

import (
	"context"
	"io"
	"maps"
	"slices"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"
)

// tableAbsent reports whether the kernel has no table of ours (an error
// reading it counts as present: the caller then takes the atomic path).
func (p *Proxier) tableAbsent(ctx context.Context) bool {
	if p.reader != nil {
		shape, err := p.reader.readShape(ctx)
		return err == nil && !shape.exists
	}
	_, err := p.nft.List(ctx, "chains")
	return knftables.IsNotFound(err)
}

// coldLoad writes a full sync's table when the kernel has none: first the
// table with its chains, rules, sets and maps and the elements netlink
// cannot write, through nft; then every other element in one netlink
// batch, grouped per set. The two steps are two transactions; between
// them the table has rules and no service elements, which serves no
// traffic, exactly as the missing table before it did.
//
// *gen and *genOK are the ruleset generation before the sync (see
// genBefore); coldLoad moves them past its first transaction so that the
// caller's genAfter sees one transaction of ours, or clears *genOK when it
// cannot tell.
func (p *Proxier) coldLoad(ctx context.Context, ch *change, gen *uint32, genOK *bool) error {
	start := time.Now()
	text, ops := splitColdLoad(ch)
	tSplit := time.Since(start)
	tx := p.fullTx(ch, false)
	if err := p.runText(ctx, func(w io.Writer) error { return p.writeText(w, tx, sortElems(text), nil) }); err != nil {
		return err
	}
	tText := time.Since(start)
	p.stepOwn(ctx, gen, genOK)
	err := p.writer.apply(ops)
	klog.V(2).InfoS("Loaded the table", "family", p.cfg.Family, "split", tSplit, "rules", tText-tSplit, "elements", time.Since(start)-tText, "count", len(ops))
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

// stepOwn accounts for one of several transactions of a sync: when exactly
// one transaction was committed since *gen, it was this one and *gen moves
// past it (so that genAfter, after the last one, sees one transaction of
// ours); otherwise *genOK is cleared.
func (p *Proxier) stepOwn(ctx context.Context, gen *uint32, genOK *bool) {
	if g, ok := p.genBefore(ctx); ok && *genOK && g == *gen+1 {
		*gen = g
		p.group.own(g)
	} else {
		*genOK = false
	}
}
