package nftables

import (
	"context"
	"io"
	"slices"

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
func (p *Proxier) coldLoad(ctx context.Context, pd *pending, gen *uint32, genOK *bool) error {
	bySet := map[string][]elemOp{}
	text := &pending{tx: pd.tx, elems: map[string]*elemRef{}}
	for id, r := range pd.elems {
		if _, _, _, ok := setLayout(r.e.set); !ok {
			text.elems[id] = r
			continue
		}
		bySet[r.e.set] = append(bySet[r.e.set], elemOp{add: true, e: r.e})
	}
	if err := p.runText(ctx, func(w io.Writer) error { return p.writeText(w, text) }); err != nil {
		return err
	}
	p.stepOwn(ctx, gen, genOK)
	sets := make([]string, 0, len(bySet))
	n := 0
	for s, ops := range bySet {
		sets = append(sets, s)
		n += len(ops)
	}
	slices.Sort(sets)
	ops := make([]elemOp, 0, n)
	for _, s := range sets {
		ops = append(ops, bySet[s]...)
	}
	return p.writer.apply(ops)
}

// stepOwn accounts for one of several transactions of a sync: when exactly
// one transaction was committed since *gen, it was this one and *gen moves
// past it (so that genAfter, after the last one, sees one transaction of
// ours); otherwise *genOK is cleared.
func (p *Proxier) stepOwn(ctx context.Context, gen *uint32, genOK *bool) {
	if g, ok := p.genBefore(ctx); ok && *genOK && g == *gen+1 {
		*gen = g
	} else {
		*genOK = false
	}
}
