package guard

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// While anyone listens, a transaction that adds or deletes many elements
// costs the kernel one notification per element, built during its commit
// and sent at its end; the table's sets hold the commit's state all that
// time (packets see the new generation from the commit's start). The
// proxier's own bulk writes mute the watchers; others' cannot be foreseen,
// but their commit bumps the ruleset generation at its start, long before
// its notifications.
//
// So a sentinel polls the generation. When it has moved past the last
// transaction the watchers heard the end of, with no notification waiting
// to be read, for sentinelAfter, a commit is under way whose notifications
// the kernel is building: the sentinel takes every watcher of the
// namespace out of the notification group (the kernel checks for
// listeners element by element, so the rest of the commit builds none),
// waits for the commit to end (an empty batch: the kernel runs one batch
// at a time), puts the watchers back and has each judge the gap as lost
// notifications. A transaction that was not the proxier's then rewrites
// the table.
//
// The proxier's own syncs either commit quickly (partial syncs, whose
// notifications arrive at once) or mute the watchers first, and the
// sentinel stands aside while they are muted.
const (
	sentinelTick  = 20 * time.Millisecond
	sentinelAfter = 40 * time.Millisecond
)

// sentinelConns are the sentinel's own connections: one reads the
// generation, one sends the empty batch.
type sentinelConns struct {
	gen     func() (uint32, error)
	barrier func() error
}

// sentinel watches for others' long commits, for the group of the watcher
// m, until ctx ends.
func (g *Guard) sentinel(ctx context.Context, m *eventMute, sc *sentinelConns) {
	t := time.NewTicker(sentinelTick)
	defer t.Stop()
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !m.behind(sc.gen) {
			since = time.Time{}
			continue
		}
		if since.IsZero() {
			since = time.Now()
			continue
		}
		if time.Since(since) >= sentinelAfter {
			since = time.Time{}
			g.sitOut(sc)
		}
	}
}

// behind reports a commit whose end the watcher has not heard, with
// nothing queued for it to read, while nothing of ours is muted.
func (m *eventMute) behind(gen func() (uint32, error)) bool {
	s := m.seen.Load()
	if s == 0 || m.muted.Load() > 0 {
		return false
	}
	cur, err := gen()
	if err != nil || cur == uint32(s-1) {
		return false
	}
	m.mu.Lock()
	conn := m.conn
	m.mu.Unlock()
	return conn != nil && !queued(conn)
}

// sitOut takes the group's watchers out of the notification group until
// the commit under way ends, then puts them back with the gap to judge.
func (g *Guard) sitOut(sc *sentinelConns) {
	start := time.Now()
	var out []muted
	for _, m := range g.group.members {
		// The loss starts after the last transaction the watcher heard.
		if mm, ok := m.leave(func() (uint32, bool) { s := m.seen.Load(); return uint32(s - 1), s != 0 }); ok {
			out = append(out, mm)
		}
	}
	if len(out) == 0 {
		return
	}
	err := sc.barrier()
	for _, mm := range out {
		mm.m.muted.Add(-1)
		g.rejoin(mm, sc.gen)
	}
	klog.V(2).InfoS("Left the nf_tables notifications during someone's long commit", "family", g.cfg.Family,
		"watchers", len(out), "took", time.Since(start), "err", err)
}
