package guard

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// Besides the notifications, the guard checks the table every tick: it
// reads the namespace's ruleset generation (one request, whatever the size
// of the ruleset), which the kernel bumps on every committed transaction,
// by anyone. After each of the proxier's transactions the guard records the
// generation they left, so an unchanged generation means nobody touched
// anything and the tick ends there. When the generation moved, and not by
// the proxier, the check reads the table's shape (its chains with their
// rule counts, its sets and maps: no elements, so the same cost at any
// number of Services) and compares it with what the last sync left.

// Reader reads the kernel for the guard.
type Reader interface {
	// Generation is the namespace's ruleset generation.
	Generation(ctx context.Context) (uint32, error)
	// Shape is the table's outline.
	Shape(ctx context.Context) (*nfnl.Shape, error)
}

// TableReader is a Reader of one table over a connection.
type TableReader struct {
	Conn   *nfnl.Conn
	Family nfnl.Family
	Table  string
}

// Generation is the namespace's ruleset generation.
func (r TableReader) Generation(ctx context.Context) (uint32, error) { return r.Conn.Generation(ctx) }

// Shape is the table's outline.
func (r TableReader) Shape(ctx context.Context) (*nfnl.Shape, error) {
	return r.Conn.Shape(ctx, r.Family, r.Table)
}

// Check reports what the last successful sync put in the table that is no
// longer there (the table, a chain, a chain's rules, a set or map), or "".
// While the generation stays where the proxier's own last transaction left
// it, a check is one small request; after someone else's transaction it
// reads the shape, never elements. It waits for a sync in progress.
func (g *Guard) Check(ctx context.Context) (string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	want, r := g.expected, g.cfg.Reader
	if want == nil || !g.valid || r == nil {
		return "", nil
	}
	gen, err := r.Generation(ctx)
	if err != nil {
		return "", fmt.Errorf("read the ruleset generation: %w", err)
	}
	if g.ledger.known && gen == g.ledger.gen {
		g.stats.IdleChecks++
		return "", nil
	}
	g.stats.ShapeReads++
	// Read after the generation: a change during the read is either seen
	// by it or moves the generation past gen, and the next tick reads
	// again.
	got, err := r.Shape(ctx)
	if err != nil {
		return "", err
	}
	if d := diff(g.cfg.Table, want, got); d != "" {
		return d, nil
	}
	g.ledger.gen, g.ledger.known = gen, true
	return "", nil
}

// diff describes the first way got lacks what want has, or "".
func diff(table string, want, got *nfnl.Shape) string {
	if !got.Exists {
		return "table " + table + " is gone"
	}
	for _, c := range slices.Sorted(maps.Keys(want.Chains)) {
		n, ok := got.Chains[c]
		switch {
		case !ok:
			return "chain " + c + " is gone"
		case n != want.Chains[c]:
			return fmt.Sprintf("chain %s has %d rules, want %d", c, n, want.Chains[c])
		}
	}
	for _, s := range slices.Sorted(maps.Keys(want.Sets)) {
		if _, ok := got.Sets[s]; !ok {
			return "set or map " + s + " is gone"
		}
	}
	return ""
}
