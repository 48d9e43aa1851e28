package guard

import (
	"context"
	"fmt"

	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// A transaction that touched the table is the proxier's own when its
// generation is one the proxier's writes produced: the writer opens a
// Writes around every sync's transactions, which records their
// generations while holding the guard, and the watcher's decider takes
// the guard too, so a notification read before the sync that caused it
// recorded its generation waits for it. Anything else that touched the
// table is someone else's. When notifications were lost (a full receive
// queue, a muted bulk write), every transaction since the last one heard
// must have been the proxier's, or the table is rewritten.

// ownSpans is how many of the proxier's recent transactions are
// remembered.
const ownSpans = 64

// span is the generations one transaction of ours may have produced:
// lo..hi holds exactly one of ours (hi > lo when others committed while
// ours ran, so which one is not known).
type span struct {
	lo, hi  uint32
	touched int // transactions in it seen touching the table
}

// genLE reports a <= b for generations (which wrap).
func genLE(a, b uint32) bool { return int32(a-b) <= 0 }

// ledger is what the guard remembers of the proxier's transactions and
// of its checks. Callers hold the guard's mu.
type ledger struct {
	// gen is the ruleset generation known to hold the table the last sync
	// left (valid when known).
	gen   uint32
	known bool
	// spans are the generations of our recent transactions (a ring; next
	// is the next slot).
	spans [ownSpans]span
	next  int
	// Transactions up to generation floor came before our last full sync
	// (valid when floorOK).
	floor   uint32
	floorOK bool
}

// owned records a transaction of ours: the generation went from before to
// after.
func (l *ledger) owned(before, after uint32, full bool) {
	l.spans[l.next%ownSpans] = span{lo: before + 1, hi: after}
	l.next++
	if full {
		// What anyone committed before a full sync is gone with the
		// table it replaced.
		l.floor, l.floorOK = before, true
	}
}

// findSpan returns the span holding gen, or nil.
func (l *ledger) findSpan(gen uint32) *span {
	for i := range l.spans {
		s := &l.spans[i]
		if s.hi != 0 && genLE(s.lo, gen) && genLE(gen, s.hi) {
			return s
		}
	}
	return nil
}

// judge decides about one committed transaction: it returns what was
// altered when someone else touched the table, or "". Callers hold g.mu.
func (g *Guard) judge(ev txEvent) string {
	l := &g.ledger
	switch {
	case !ev.touched || !g.valid:
		// Not our table; or a full sync is due anyway.
		return ""
	case l.floorOK && genLE(ev.gen, l.floor):
		return ""
	}
	if s := l.findSpan(ev.gen); s != nil {
		// One transaction of a span that touched the table is ours; a
		// second is someone else's, and may have come after ours.
		if s.touched++; s.touched == 1 {
			return ""
		}
	}
	g.stats.Foreign++
	return fmt.Sprintf("transaction %d of %s (pid %d) changed table %s", ev.gen, ev.proc, ev.pid, g.cfg.Table)
}

// lost decides after notifications may have been lost (a full receive
// buffer, none read before the subscription, a bulk write muted): each
// transaction after generation from (when fromOK) up to the present one,
// cur, must be ours or one of the namespace's other guards' proxiers', or
// the table may have been altered. Callers hold g.mu.
func (g *Guard) lost(cur, from uint32, fromOK bool) string {
	l := &g.ledger
	switch {
	case !g.valid:
		return ""
	case !l.floorOK:
		return "notifications lost before our table's generation was known"
	case !fromOK || genLE(from, l.floor):
		from = l.floor
	}
	if genLE(cur, from) {
		return ""
	}
	if cur-from > ownSpans {
		return fmt.Sprintf("notifications lost for up to %d transactions", cur-from)
	}
	for gen := from + 1; genLE(gen, cur); gen++ {
		// Ours, or the namespace's other proxier's (which writes only
		// its own family's table).
		if s := l.findSpan(gen); (s == nil || s.lo != s.hi) && !g.group.owns(gen) {
			return fmt.Sprintf("notifications lost, and transaction %d may not be ours", gen)
		}
	}
	return ""
}

// generation reads the ruleset generation. Callers hold g.mu.
func (g *Guard) generation(ctx context.Context) (uint32, bool) {
	if g.cfg.Reader == nil {
		return 0, false
	}
	gen, err := g.cfg.Reader.Generation(ctx)
	return gen, err == nil
}

// Writes is one sync's transactions as the guard accounts them. From
// Begin to Done the guard judges nothing and checks nothing: a sync in
// progress is never mistaken for damage.
type Writes struct {
	g      *Guard
	gen    uint32
	ok     bool
	unmute func()
}

// Begin opens the accounting of one sync's writes. When bulk, it first
// takes the namespace's watchers out of the notification group (while
// anyone listens, the kernel builds a notification per element written),
// until Done.
func (g *Guard) Begin(ctx context.Context, bulk bool) *Writes {
	g.mu.Lock()
	w := &Writes{g: g}
	if bulk {
		w.unmute = g.mute(ctx)
	}
	w.gen, w.ok = g.generation(ctx)
	return w
}

// Step follows each transaction but the last of a change written in
// several: when exactly one transaction was committed since the last
// step, it was this one, and the next is counted from it; otherwise the
// guard cannot tell which were ours.
func (w *Writes) Step(ctx context.Context) {
	if gen, ok := w.g.generation(ctx); ok && w.ok && gen == w.gen+1 {
		w.gen = gen
		w.g.group.own(gen)
	} else {
		w.ok = false
	}
}

// Committed follows the last transaction of the sync's change. When
// exactly one transaction was committed since the last step, it was ours,
// and the table is what the sync meant it to be: a full sync rewrites the
// whole table (and so repairs what anyone did before), a partial one only
// on top of a table known good. Otherwise the next check reads the shape.
func (w *Writes) Committed(ctx context.Context, full bool) {
	w.g.record(ctx, w.gen, w.ok, full)
	if full {
		w.g.pending = Damage{}
	}
}

// record records the generation after a transaction of ours that started
// at generation before (when ok). Callers hold g.mu.
func (g *Guard) record(ctx context.Context, before uint32, ok, full bool) {
	l := &g.ledger
	if !ok {
		l.known = false
		return
	}
	after, ok := g.generation(ctx)
	switch {
	case !ok:
		l.known = false
	case after == before && full:
		// A full sync always commits: the one that wrote the table moved
		// before past its own commit (a cold load whose element batch
		// was empty).
		l.owned(before-1, before, true)
		l.gen, l.known = before, true
	case after == before:
		// Nothing committed (a sync without operations).
	default:
		l.owned(before, after, full)
		if after == before+1 {
			g.group.own(after)
		}
		if after == before+1 && (full || l.known && l.gen == before) {
			l.gen, l.known = after, true
		}
	}
}

// Own runs one more transaction of the sync (a repair) and accounts it.
func (w *Writes) Own(ctx context.Context, run func() error) error {
	before, ok := w.g.generation(ctx)
	if err := run(); err != nil {
		return err
	}
	w.g.record(ctx, before, ok, false)
	return nil
}

// Done ends the accounting. expected is the shape the table has now (what
// Check compares the kernel's with), or nil when the sync failed: then the
// table's content is unknown, and nothing is judged until a sync succeeds.
func (w *Writes) Done(expected *nfnl.Shape) {
	g := w.g
	g.expected, g.valid = expected, expected != nil
	if w.unmute != nil {
		w.unmute()
	}
	g.mu.Unlock()
}
