package guard

import (
	"context"
	"time"

	"github.com/mdlayher/netlink"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// Subscribing has a cost: the kernel builds the notifications only while
// someone listens, one per element for a full sync, and the listener must
// read them all. The proxier's own bulk writes mute the watchers (Begin),
// and the sentinel mutes them during others' long commits (sentinel.go).

// DefaultBuffer is the receive buffer a watcher asks for (the kernel
// doubles it): room for the notifications of a full sync of the largest
// tables svcproxy is measured with.
const DefaultBuffer = 32 << 20

// subscription is a socket subscribed to the notifications (an
// *nfnl.Subscription).
type subscription interface {
	Receive() ([]netlink.Message, error)
	Close() error
}

// watcher is where one guard's watch reads.
type watcher struct {
	dial func() (subscription, error)
	// gen reads the ruleset generation (on a connection of its own).
	gen func() (uint32, error)
	// found is called, once the damage is noted for the next sync, with
	// what was altered and what the next sync rewrites.
	found func(what, rewrite string)
	// sentinel, when set, is what the group's sentinel uses; it runs
	// beside the group's first watcher.
	sentinel *sentinelConns
}

// judgement is what the reader hands the decider, in order: a transaction
// that touched the table, or (lost) a loss of notifications after
// transaction from (when fromOK) up to generation cur.
type judgement struct {
	tx            txEvent
	lost          bool
	from, cur     uint32
	fromOK, curOK bool
}

// decide judges what the reader hands it, until judgements is closed: the
// damage of someone else's transaction, or of lost notifications, waits
// for the next sync. It holds the guard while it judges, so a transaction
// of ours is recorded before it is judged.
func (g *Guard) decide(judgements <-chan judgement, found func(what, rewrite string)) {
	for j := range judgements {
		g.mu.Lock()
		var what string
		dmg := Damage{Broad: true}
		switch {
		case !j.lost:
			what, dmg = g.judge(j.tx), j.tx.dmg
		case !j.curOK:
			what = "notifications lost, and the generation unreadable"
		default:
			what = g.lost(j.cur, j.from, j.fromOK)
		}
		var rewrite string
		if what != "" {
			g.note(dmg)
			rewrite = g.pending.String()
		}
		g.mu.Unlock()
		if what != "" {
			found(what, rewrite)
		}
	}
}

// note takes the damage of someone else's transaction. Broad damage makes
// the next sync a full one, which makes judging anything before it moot.
// Callers hold g.mu.
func (g *Guard) note(d Damage) {
	if !g.valid {
		return
	}
	g.pending.merge(d)
	if g.pending.Broad {
		g.valid = false
	}
}

// watch reads notifications until ctx ends. One goroutine reads, so the
// kernel's queue is emptied even while a sync holds the guard; another
// decides.
func (g *Guard) watch(ctx context.Context, w watcher) {
	judgements := make(chan judgement, 1024)
	decided := make(chan struct{})
	go func() {
		defer close(decided)
		g.decide(judgements, w.found)
	}()
	defer func() {
		close(judgements)
		<-decided
	}()

	d := txDecoder{family: g.family, table: []byte(g.cfg.Table), traffic: g.cfg.Traffic}
	var seen uint32 // the last transaction heard of
	seenOK := false
	// lossy: notifications after transaction lossFrom (when lossFromOK)
	// may have been dropped.
	lossy := false
	var lossFrom uint32
	lossFromOK := false
	loss := func() {
		if !lossy {
			lossy, lossFrom, lossFromOK = true, seen, seenOK
		}
	}
	for backoff := time.Second; ctx.Err() == nil; {
		conn, err := w.dial()
		if err != nil {
			klog.ErrorS(err, "Cannot subscribe to nf_tables notifications", "family", g.cfg.Family)
			backoff = wait(ctx, backoff)
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		g.ev.attach(conn, judgements)
		sctx, stopSentinel := context.WithCancel(ctx)
		if w.sentinel != nil && g.group.members[0] == &g.ev {
			go g.sentinel(sctx, &g.ev, w.sentinel)
		}
		// What was committed before the subscription went unheard.
		loss()
		d.reset()
		for {
			if lossy && !queued(conn) {
				// Nothing is dropped any more: what was is at most up
				// to the present generation.
				cur, err := w.gen()
				judgements <- judgement{lost: true, from: lossFrom, fromOK: lossFromOK, cur: cur, curOK: err == nil}
				if err == nil {
					g.ev.heard(cur)
				}
				lossy = false
			}
			msgs, err := conn.Receive()
			if nfnl.Lost(err) {
				// The kernel drops notifications until the queue is
				// empty again; what it dropped is decided once it is.
				klog.V(2).InfoS("Lost nf_tables notifications (receive queue full)", "family", g.cfg.Family)
				g.overflows.Add(1)
				loss()
				continue
			}
			if err != nil {
				if ctx.Err() == nil {
					klog.V(2).InfoS("Reading nf_tables notifications failed", "family", g.cfg.Family, "err", err)
				}
				break
			}
			backoff = time.Second
			for _, m := range msgs {
				if ev, ok := d.add(m); ok {
					seen, seenOK = ev.gen, true
					g.ev.heard(ev.gen)
					if ev.touched {
						judgements <- judgement{tx: ev}
					}
				}
			}
		}
		stopSentinel()
		g.ev.attach(nil, nil)
		stop()
		conn.Close()
		loss()
		backoff = wait(ctx, backoff)
	}
}

// wait waits for backoff, or until ctx ends, and returns the next backoff.
func wait(ctx context.Context, backoff time.Duration) time.Duration {
	select {
	case <-ctx.Done():
	case <-time.After(backoff):
	}
	return min(2*backoff, time.Minute)
}

// queued reports whether notifications wait in conn's queue (false for a
// subscription that cannot tell).
func queued(conn subscription) bool {
	q, ok := conn.(interface{ Queued() bool })
	return ok && q.Queued()
}
