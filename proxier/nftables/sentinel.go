package nftables

import (
	"context"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// While anyone listens, a transaction that adds or deletes many elements
// costs the kernel one notification per element, built during its commit
// and sent at its end: measured here, someone's `nft flush map` of our
// 100,000 endpoints took 1.0-1.4 s with our watchers subscribed and 0.1 s
// without, and the map stayed empty all that time (packets see the new
// generation from the commit's start). Our own bulk writes mute the
// watchers (mute.go); others' cannot be foreseen, but their commit bumps
// the ruleset generation at its start, long before its notifications.
//
// So a sentinel polls the generation. When it has moved past the last
// transaction the watchers heard the end of, with no notification waiting
// to be read, for sentinelAfter, a commit is under way whose
// notifications the kernel is building: the sentinel takes every watcher
// of the namespace out of the notification group (the kernel checks for
// listeners element by element, so the rest of the commit builds none),
// waits for the commit to end (an empty batch: the kernel runs one batch
// at a time), puts the watchers back and has each judge the gap as lost
// notifications. A transaction that was not ours then rewrites the table:
// with the notifications not built, a flushed 100,000-element map is
// whole again in well under a second (BenchmarkKernelRepair10k).
//
// Our own syncs either commit quickly (partial syncs, whose notifications
// arrive within milliseconds) or mute the watchers first, and the sentinel
// stands aside while they are muted.
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

// newSentinelConns dials nothing yet: each connection is made on first use
// in the network namespace netns (0: the current one).
func newSentinelConns(r *netlinkReader) *sentinelConns {
	var conn *netlink.Conn
	return &sentinelConns{
		gen: func() (uint32, error) { return r.generation(context.Background()) },
		barrier: func() error {
			if conn == nil {
				c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.netns})
				if err != nil {
					return err
				}
				conn = c
			}
			conn.SetDeadline(time.Now().Add(time.Minute))
			if _, err := conn.SendMessages(emptyBatch()); err != nil {
				conn.Close()
				conn = nil
				return err
			}
			return nil
		},
	}
}

// emptyBatch is an nf_tables batch without messages: the kernel takes the
// commit lock for it (after any commit under way) and commits nothing.
func emptyBatch() []netlink.Message {
	batch := func(typ uint16) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
			Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
		}
	}
	return []netlink.Message{batch(unix.NFNL_MSG_BATCH_BEGIN), batch(unix.NFNL_MSG_BATCH_END)}
}

// sentinel watches for others' long commits, for the group of the watcher
// m, until ctx ends.
func (p *Proxier) sentinel(ctx context.Context, m *eventMute, sc *sentinelConns) {
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
			p.sitOut(sc)
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
	g, err := gen()
	if err != nil || g == uint32(s-1) {
		return false
	}
	m.mu.Lock()
	conn := m.conn
	m.mu.Unlock()
	return conn != nil && !queued(conn)
}

// sitOut takes the group's watchers out of the notification group until
// the commit under way ends, then puts them back with the gap to judge.
func (p *Proxier) sitOut(sc *sentinelConns) {
	start := time.Now()
	var out []muted
	for _, m := range p.group.members {
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
		p.rejoinWith(mm, sc.gen)
	}
	klog.V(2).InfoS("Left the nf_tables notifications during someone's long commit", "family", p.cfg.Family,
		"watchers", len(out), "took", time.Since(start), "err", err)
}
