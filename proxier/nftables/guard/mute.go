package guard

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"
)

// While anyone listens to the nf_tables notifications, the kernel builds
// one per element a transaction adds or deletes, and the listener must read
// them all, which makes a bulk write several times slower
// (BenchmarkKernelRepair10k in package nftables). So the proxier's own bulk
// writes leave the multicast group for their duration. What others
// committed meanwhile is unheard, and is judged as lost notifications are
// (see Guard.lost): every transaction from the one that may have been
// committing when the group was left up to the generation after rejoining
// must be one of ours, or the table is rewritten.
//
// Every listener of the namespace must leave: the kernel builds the
// notifications as long as one socket is subscribed. svcproxy runs one
// proxier per family in the same namespace, each with its guard, so the
// guards of a namespace share a group (Share): a bulk write of either
// family mutes both watchers, and the transactions of either count as ours
// when a watcher judges what it missed. (A transaction of one family's
// proxier writes only that family's table.)

// groupConn is a subscription that can leave the group and join it again
// (an *nfnl.Subscription).
type groupConn interface {
	Leave() error
	Join() error
}

// eventMute is a guard's subscription as the writes see it.
type eventMute struct {
	mu   sync.Mutex
	conn subscription
	// judgements is the watcher's queue, for the loss a muted write
	// leaves; nil when no watcher reads.
	judgements chan<- judgement
	// seen is 1 + the generation of the last transaction whose end the
	// watcher read, or 0.
	seen atomic.Uint64
	// overrun is set when a loss could not be queued (the watcher's
	// decider is behind): the next sync rewrites everything.
	overrun atomic.Bool
	// muted counts the bulk writes (and sentinel) that have the
	// subscription out of the group.
	muted atomic.Int32
}

// heard records that everything up to generation gen is heard or judged:
// seen only moves forward.
func (m *eventMute) heard(gen uint32) {
	for {
		s := m.seen.Load()
		if s != 0 && genLE(gen, uint32(s-1)) {
			return
		}
		if m.seen.CompareAndSwap(s, uint64(gen)+1) {
			return
		}
	}
}

// attach makes conn (nil: none) the subscription the writes mute.
func (m *eventMute) attach(conn subscription, judgements chan<- judgement) {
	m.mu.Lock()
	m.conn, m.judgements = conn, judgements
	m.mu.Unlock()
}

// ownGens is how many of the group's own single-transaction generations
// are remembered.
const ownGens = 256

// group is the notification watchers of one network namespace and the
// generations of their proxiers' own transactions.
type group struct {
	mu      sync.Mutex
	members []*eventMute
	// gens is a ring of generations committed by exactly one transaction
	// of one of the members' proxiers.
	gens [ownGens]uint32
	next int
}

// Share makes the guards, which watch the same network namespace, mute
// each other's watchers during bulk writes and count each other's
// proxiers' transactions as their own when judging lost notifications.
// Call it before their proxiers sync or their watchers start.
func Share(gs ...*Guard) {
	grp := &group{}
	for _, g := range gs {
		g.group = grp
		grp.members = append(grp.members, &g.ev)
	}
}

// own records generation gen as committed by one transaction of a member.
func (grp *group) own(gen uint32) {
	grp.mu.Lock()
	grp.gens[grp.next%ownGens] = gen
	grp.next++
	grp.mu.Unlock()
}

// owns reports whether gen was committed by one transaction of a member.
func (grp *group) owns(gen uint32) bool {
	grp.mu.Lock()
	defer grp.mu.Unlock()
	for _, x := range grp.gens[:min(grp.next, ownGens)] {
		if x == gen {
			return true
		}
	}
	return false
}

// muted is one member's subscription out of the group, and the loss its
// watcher is to judge once it is back.
type muted struct {
	m      *eventMute
	gc     groupConn
	conn   subscription
	from   uint32
	fromOK bool
}

// Mute takes every watcher of the guard's group out of the notification
// group, as a bulk write does, and returns the function that puts them
// back (and has each judge what it missed), or nil when none was
// subscribed.
func (g *Guard) Mute(ctx context.Context) func() {
	g.mu.Lock()
	unmute := g.mute(ctx)
	g.mu.Unlock()
	if unmute == nil {
		return nil
	}
	return func() {
		g.mu.Lock()
		unmute()
		g.mu.Unlock()
	}
}

// mute is Mute; callers hold g.mu, and call what it returns holding g.mu.
func (g *Guard) mute(ctx context.Context) func() {
	var out []muted
	for _, m := range g.group.members {
		if mm, ok := m.leave(func() (uint32, bool) { return g.bulkFrom(ctx, m) }); ok {
			out = append(out, mm)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return func() {
		for _, mm := range out {
			mm.m.muted.Add(-1)
			g.rejoin(mm, func() (uint32, error) {
				gen, ok := g.generation(ctx)
				if !ok {
					return 0, errNoGeneration
				}
				return gen, nil
			})
		}
	}
}

var errNoGeneration = errors.New("generation unreadable")

// leave takes m's subscription out of the notification group; from,
// called once it is out, is where the loss to judge on rejoining starts.
func (m *eventMute) leave(from func() (uint32, bool)) (muted, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gc, ok := m.conn.(groupConn)
	if !ok || m.judgements == nil {
		return muted{}, false
	}
	if err := gc.Leave(); err != nil {
		return muted{}, false
	}
	f, fromOK := from()
	m.muted.Add(1)
	return muted{m: m, gc: gc, conn: m.conn, from: f, fromOK: fromOK}, true
}

// bulkFrom is where the loss of a bulk write's mute starts: a transaction
// committing as the group was left may be heard only in part, so the range
// starts before the generation read after, unless the watcher has heard
// that transaction's end (NEWGEN, its last notification) already. Callers
// hold g.mu.
func (g *Guard) bulkFrom(ctx context.Context, m *eventMute) (uint32, bool) {
	from, fromOK := g.generation(ctx)
	if s := m.seen.Load(); !fromOK || s != uint64(from)+1 {
		from--
	}
	return from, fromOK
}

// rejoin puts a muted subscription back and queues the loss for its
// watcher to judge, with gen reading the generation.
func (g *Guard) rejoin(mm muted, gen func() (uint32, error)) {
	m := mm.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != mm.conn {
		// The watcher resubscribed meanwhile, and judges that loss.
		return
	}
	if err := mm.gc.Join(); err != nil {
		klog.V(2).InfoS("Cannot rejoin the nf_tables notifications; resubscribing", "family", g.cfg.Family, "err", err)
		mm.conn.Close()
		return
	}
	cur, err := gen()
	select {
	case m.judgements <- judgement{lost: true, from: mm.from, fromOK: mm.fromOK, cur: cur, curOK: err == nil}:
	default:
		// The decider is behind: its proxier rewrites everything.
		m.overrun.Store(true)
	}
	if err == nil {
		// Up to cur, the judgement covers what was not heard.
		m.heard(cur)
	}
}
