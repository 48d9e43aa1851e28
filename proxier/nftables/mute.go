package nftables

import (
	"context"
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

// muteAbove is how many element operations a sync writes before it leaves
// the group for them.
const muteAbove = 1000

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
}

// attach makes conn (nil: none) the connection a sync mutes.
func (m *eventMute) attach(conn eventConn, judgements chan<- judgement) {
	m.mu.Lock()
	m.conn, m.judgements = conn, judgements
	m.mu.Unlock()
}

// mute leaves the notification group when a watcher is subscribed and
// returns the function that joins it again, or nil. Callers hold p.mu.
func (p *Proxier) mute(ctx context.Context) func() {
	m := &p.ev
	m.mu.Lock()
	defer m.mu.Unlock()
	gc, ok := m.conn.(groupConn)
	if !ok || m.judgements == nil {
		return nil
	}
	if err := gc.LeaveGroup(nfnlgrpNFTables); err != nil {
		return nil
	}
	// A transaction committing as the group was left may be heard only
	// in part, so the range starts before the generation read after,
	// unless the watcher has heard that transaction's end (NEWGEN, its
	// last notification) already.
	from, fromOK := p.genBefore(ctx)
	if s := m.seen.Load(); !fromOK || s != uint64(from)+1 {
		from--
	}
	conn := m.conn
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.conn != conn {
			// The watcher redialled meanwhile, and judges that loss.
			return
		}
		if err := gc.JoinGroup(nfnlgrpNFTables); err != nil {
			klog.V(2).InfoS("Cannot rejoin the nf_tables notifications; reconnecting", "family", p.cfg.Family, "err", err)
			conn.Close()
			return
		}
		cur, curOK := p.genBefore(ctx)
		select {
		case m.judgements <- judgement{lost: true, from: from, fromOK: fromOK, cur: cur, curOK: curOK}:
		default:
			// The decider is behind: rewrite everything.
			p.synced = false
		}
	}
}
