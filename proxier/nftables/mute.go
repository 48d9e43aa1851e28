package nftables

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"
)

// While anyone listens to the nf_tables notifications, the kernel builds
// one per element a transaction adds or deletes, and the listener must read
// them all: with the watcher subscribed, refilling a map of 100,000
// endpoints took 3.2 s instead of 0.43 s (BenchmarkKernelRepair10k and its
// kin). So our own bulk writes (full syncs, large repairs and partial
// syncs) leave the multicast group for their duration. What others
// committed meanwhile is then unheard, and is judged as lost notifications
// are (see Proxier.lost): every transaction from the one that may have
// been committing when the group was left up to the generation after
// rejoining must be one of ours, or the table is rewritten.
//
// Every listener of the namespace must leave: the kernel builds the
// notifications as long as one socket is subscribed. svcproxy runs one
// proxier per family in the same namespace, each with its watcher, so the
// proxiers of a namespace share a listeners group (Share): a bulk write of
// either family mutes both watchers, and the transactions of either count
// as ours when a watcher judges what it missed. (A transaction of one
// family's proxier writes only that family's table.)

// groupConn is an event connection whose subscription can be dropped and
// taken again (a *netlink.Conn).
type groupConn interface {
	JoinGroup(group uint32) error
	LeaveGroup(group uint32) error
}

// eventMute is the watcher's connection as the syncs see it.
type eventMute struct {
	mu   sync.Mutex
	conn eventConn
	// judgements is the watcher's queue, for the loss a muted write
	// leaves; nil when no watcher reads.
	judgements chan<- judgement
	// seen is 1 + the generation of the last transaction whose end the
	// watcher read, or 0.
	seen atomic.Uint64
	// overrun is set when a loss could not be queued (the watcher's
	// decider is behind): the owner's next sync rewrites everything.
	overrun atomic.Bool
	// muted counts the bulk writes (and sentinel) that have the
	// connection out of the group.
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

// attach makes conn (nil: none) the connection a sync mutes.
func (m *eventMute) attach(conn eventConn, judgements chan<- judgement) {
	m.mu.Lock()
	m.conn, m.judgements = conn, judgements
	m.mu.Unlock()
}

// ownGens is how many of the group's own single-transaction generations
// are remembered.
const ownGens = 256

// listeners are the notification watchers of one network namespace and
// the generations of their proxiers' own transactions.
type listeners struct {
	mu      sync.Mutex
	members []*eventMute
	// gens is a ring of generations committed by exactly one transaction
	// of one of the members' proxiers.
	gens [ownGens]uint32
	next int
}

func newListeners(m *eventMute) *listeners { return &listeners{members: []*eventMute{m}} }

// Share makes the proxiers, which program the same network namespace,
// mute each other's watchers during bulk writes and count each other's
// transactions as their own when judging lost notifications. Call it
// before the proxiers sync or watch.
func Share(ps ...*Proxier) {
	g := &listeners{}
	for _, p := range ps {
		p.group = g
		g.members = append(g.members, &p.ev)
	}
}

// own records generation gen as committed by one transaction of a member.
func (g *listeners) own(gen uint32) {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.gens[g.next%ownGens] = gen
	g.next++
	g.mu.Unlock()
}

// owns reports whether gen was committed by one transaction of a member.
func (g *listeners) owns(gen uint32) bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, x := range g.gens[:min(g.next, ownGens)] {
		if x == gen {
			return true
		}
	}
	return false
}

// muted is one member's connection out of the group, and the loss its
// watcher is to judge once it is back.
type muted struct {
	m      *eventMute
	gc     groupConn
	conn   eventConn
	from   uint32
	fromOK bool
}

// mute takes every watcher of the group out of the notification group and
// returns the function that puts them back, or nil when none was
// subscribed. Callers hold p.mu.
func (p *Proxier) mute(ctx context.Context) func() {
	var out []muted
	members := []*eventMute{&p.ev}
	if p.group != nil {
		members = p.group.members
	}
	for _, m := range members {
		if mm, ok := m.leave(func() (uint32, bool) { return p.bulkFrom(ctx, m) }); ok {
			out = append(out, mm)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return func() {
		for _, mm := range out {
			p.rejoin(ctx, mm)
		}
	}
}

// leave takes m's connection out of the notification group; from, called
// once it is out, is where the loss to judge on rejoining starts.
func (m *eventMute) leave(from func() (uint32, bool)) (muted, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	gc, ok := m.conn.(groupConn)
	if !ok || m.judgements == nil {
		return muted{}, false
	}
	if err := gc.LeaveGroup(nfnlgrpNFTables); err != nil {
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
// hold p.mu.
func (p *Proxier) bulkFrom(ctx context.Context, m *eventMute) (uint32, bool) {
	from, fromOK := p.genBefore(ctx)
	if s := m.seen.Load(); !fromOK || s != uint64(from)+1 {
		from--
	}
	return from, fromOK
}

// rejoin puts a muted connection back and queues the loss for its
// watcher to judge. Callers hold p.mu.
func (p *Proxier) rejoin(ctx context.Context, mm muted) {
	mm.m.muted.Add(-1)
	p.rejoinWith(mm, func() (uint32, error) {
		g, ok := p.genBefore(ctx)
		if !ok {
			return 0, errNoGeneration
		}
		return g, nil
	})
}

var errNoGeneration = errors.New("generation unreadable")

// rejoinWith is rejoin, with gen reading the generation.
func (p *Proxier) rejoinWith(mm muted, gen func() (uint32, error)) {
	m := mm.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != mm.conn {
		// The watcher redialled meanwhile, and judges that loss.
		return
	}
	if err := mm.gc.JoinGroup(nfnlgrpNFTables); err != nil {
		klog.V(2).InfoS("Cannot rejoin the nf_tables notifications; reconnecting", "family", p.cfg.Family, "err", err)
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
