package nftables

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Element-level damage (a flushed map, a deleted element) does not show in
// the table's shape, and counting elements means dumping them (seconds at
// 10,000 Services). So the proxier listens instead to the nf_tables
// notifications of its namespace (the NFNLGRP_NFTABLES multicast group, what
// `nft monitor` reads): the kernel sends one message per object a committed
// transaction created or deleted, then NFT_MSG_NEWGEN with the transaction's
// generation id and the pid and name of the process that committed it.
// Object messages carry the table name as attribute 1 and the family in
// their nfgenmsg, which is all we decode (plus the set name of element
// messages: entries of the dynamic affinity maps are traffic state, not
// damage).
//
// A transaction that touched our table is ours when its generation is one
// our own syncs produced (genAfter records them, under p.mu; the watcher
// decides under p.mu too, so an event read before the sync that caused it
// recorded its generation waits for it). Anything else that touched our
// table forces a full sync now. When notifications were lost (a full
// receive queue), every transaction since the last one heard must have been
// ours, or the table is rewritten.
//
// Subscribing has a cost: the kernel builds the notifications only when
// someone listens, one per element for a full sync. Measured at 10,000
// Services × 10 endpoints (152,000 elements): a full sync costs about 5%
// more CPU (4.35 → 4.55 s, nft and the kernel included), and its
// notifications take 35 MB of the receive queue until read.

// nfnlgrpNFTables is NFNLGRP_NFTABLES (linux/netfilter/nfnetlink.h).
const nfnlgrpNFTables = 7

// eventBuffer is the receive buffer asked for (the kernel doubles it): the
// notifications of a full sync at 10,000 Services × 10 endpoints take 35 MB
// of it.
const eventBuffer = 32 << 20

// txEvent is what the notifications say of one committed transaction.
type txEvent struct {
	gen     uint32
	touched bool // it changed our table in our family
	pid     uint32
	proc    string
	// dmg is what it changed in our table (when touched).
	dmg *damage
}

// txDecoder turns notifications into transactions.
type txDecoder struct {
	family  uint8
	touched bool // the current transaction touched our table so far
	dmg     damage
}

// tableName is TableName as notifications carry it.
var tableName = []byte(TableName)

// add takes one notification and returns the transaction it ends, if it is
// a NEWGEN. Of a notification in our family it decodes the table name and
// the chain or set name, without allocating unless the name differs from
// the previous notification's (a full sync of ours sends one per element).
func (d *txDecoder) add(m netlink.Message) (txEvent, bool) {
	typ := uint16(m.Header.Type)
	if typ>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return txEvent{}, false
	}
	if typ&0xff != unix.NFT_MSG_NEWGEN {
		if m.Data[0] != d.family {
			return txEvent{}, false
		}
		// NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,
		// SET_ELEM_LIST_TABLE,OBJ_TABLE,FLOWTABLE_TABLE} are all 1.
		// Without one, count it as ours, to be safe.
		attrs := m.Data[4:]
		msg := typ & 0xff
		switch msg {
		case nftMsgDestroyRule:
			msg = unix.NFT_MSG_DELRULE
		case nftMsgDestroySetElem:
			msg = unix.NFT_MSG_DELSETELEM
		}
		name, ok := attr(attrs, unix.NFTA_TABLE_NAME)
		switch {
		case !ok:
			d.touched = true
			d.dmg.broad = true
		case bytes.Equal(bytes.TrimRight(name, "\x00"), tableName) && !dynamicElems(msg, attrs):
			d.touched = true
			d.dmg.note(msg, attrs)
		}
		return txEvent{}, false
	}
	ev := txEvent{touched: d.touched}
	if d.touched {
		dmg := d.dmg
		dmg.last = nil
		ev.dmg = &dmg
	}
	d.touched = false
	d.dmg = damage{last: d.dmg.last[:0]}
	if a, err := attrsOf(m); err == nil {
		ev.gen, _ = be32(a[unix.NFTA_GEN_ID])
		ev.pid, _ = be32(a[unix.NFTA_GEN_PROC_PID])
		ev.proc = str(a[unix.NFTA_GEN_PROC_NAME])
	}
	return ev, true
}

// NFT_MSG_DESTROYRULE and NFT_MSG_DESTROYSETELEM (Linux 6.3), should a
// kernel notify them as such.
const (
	nftMsgDestroyRule    = 0x1c
	nftMsgDestroySetElem = 0x1e
)

// dynamicElems reports a notification of elements added to or deleted from
// an affinity map (see affinityMap): the packet path fills those and
// session affinity prunes them (forgetAffinity), so their elements are not
// the sync's to restore.
func dynamicElems(msg uint16, attrs []byte) bool {
	switch msg {
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
	default:
		return false
	}
	set, ok := attr(attrs, unix.NFTA_SET_ELEM_LIST_SET)
	return ok && bytes.HasPrefix(set, affinityPrefixBytes) && !bytes.HasPrefix(set, affinityDestsPrefixBytes)
}

// The prefixes of isAffinityMap, for names read without allocating.
var affinityPrefixBytes, affinityDestsPrefixBytes = []byte(affinityPrefix), []byte(affinityDestsPrefix)

// attr returns the value of the attribute typ in b, without allocating.
func attr(b []byte, typ uint16) ([]byte, bool) {
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b))
		if n < 4 || n > len(b) {
			return nil, false
		}
		if binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == typ {
			return b[4:n], true
		}
		b = b[min((n+3)&^3, len(b)):]
	}
	return nil, false
}

func be32(b []byte) (uint32, bool) {
	if len(b) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// ownSpans is how many of our recent transactions are remembered.
const ownSpans = 64

// span is the generations one transaction of ours may have produced:
// lo..hi holds exactly one of ours (hi > lo when others committed while
// ours ran, so which one is not known).
type span struct {
	lo, hi  uint32
	touched int // transactions in it seen touching our table
}

// genLE reports a <= b for generations (which wrap).
func genLE(a, b uint32) bool { return int32(a-b) <= 0 }

// owned records a transaction of ours: the generation went from before to
// after. Callers hold p.mu.
func (c *checkState) owned(before, after uint32, full bool) {
	c.spans[c.next%ownSpans] = span{lo: before + 1, hi: after}
	c.next++
	if full {
		// What anyone committed before a full sync is gone with the
		// table it replaced.
		c.floor, c.floorOK = before, true
	}
}

// findSpan returns the span holding gen, or nil.
func (c *checkState) findSpan(gen uint32) *span {
	for i := range c.spans {
		s := &c.spans[i]
		if s.hi != 0 && genLE(s.lo, gen) && genLE(gen, s.hi) {
			return s
		}
	}
	return nil
}

// judge decides about one committed transaction: it returns what was
// altered when someone else touched our table, or "". Callers hold p.mu.
func (p *Proxier) judge(ev txEvent) string {
	c := &p.chk
	switch {
	case !ev.touched || !p.synced:
		// Not our table; or a full sync is due anyway.
		return ""
	case c.floorOK && genLE(ev.gen, c.floor):
		return ""
	}
	if s := c.findSpan(ev.gen); s != nil {
		// One transaction of a span that touched our table is ours;
		// a second is someone else's, and may have come after ours.
		if s.touched++; s.touched == 1 {
			return ""
		}
	}
	c.foreign++
	return fmt.Sprintf("transaction %d of %s (pid %d) changed table %s", ev.gen, ev.proc, ev.pid, TableName)
}

// lost decides after notifications may have been lost (a full receive
// buffer, none read before the subscription, a bulk write muted): each
// transaction after generation from (when fromOK) up to the present one,
// cur, must be ours or one of the namespace's other proxiers', or the
// table may have been altered. Callers hold p.mu.
func (p *Proxier) lost(cur, from uint32, fromOK bool) string {
	c := &p.chk
	switch {
	case !p.synced:
		return ""
	case !c.floorOK:
		return "notifications lost before our table's generation was known"
	case !fromOK || genLE(from, c.floor):
		from = c.floor
	}
	if genLE(cur, from) {
		return ""
	}
	if cur-from > ownSpans {
		return fmt.Sprintf("notifications lost for up to %d transactions", cur-from)
	}
	for g := from + 1; genLE(g, cur); g++ {
		// Ours, or the namespace's other proxier's (which writes only
		// its own family's table).
		if s := c.findSpan(g); (s == nil || s.lo != s.hi) && !p.group.owns(g) {
			return fmt.Sprintf("notifications lost, and transaction %d may not be ours", g)
		}
	}
	return ""
}

// eventConn is a socket subscribed to the notifications.
type eventConn interface {
	Receive() ([]netlink.Message, error)
	Close() error
}

// dialEvents subscribes to the nf_tables notifications of a network
// namespace (0: the current one), with a receive buffer of buffer bytes.
func dialEvents(netns, buffer int) (eventConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, err
	}
	// SO_RCVBUFFORCE passes the rmem_max limit (needs CAP_NET_ADMIN,
	// which nf_tables needs anyway).
	forced := false
	if raw, err := c.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			forced = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, buffer) == nil
		})
	}
	if !forced {
		c.SetReadBuffer(buffer)
	}
	if err := c.JoinGroup(nfnlgrpNFTables); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// watcher reads the notifications of one network namespace.
type watcher struct {
	dial func() (eventConn, error)
	// gen reads the ruleset generation (on a connection of its own).
	gen func() (uint32, error)
	// repair is called, once the next sync is set to rewrite what
	// (what the table or a list of chains and sets), with what was
	// altered.
	repair func(what, rewrite string)
	// sentinel, when set, is what the group's sentinel (sentinel.go)
	// uses; it runs beside the group's first watcher.
	sentinel *sentinelConns
}

// judgement is what the reader hands the decider, in order: a transaction
// that touched our table, or (lost) a loss of notifications after
// transaction from (when fromOK) up to generation cur.
type judgement struct {
	tx            txEvent
	lost          bool
	from, cur     uint32
	fromOK, curOK bool
}

// watch reads notifications until ctx ends and has the table repaired
// whenever someone else touched it. One goroutine reads, so the kernel's
// queue is emptied even while a sync holds p.mu; another decides, under
// p.mu (so a transaction of ours is recorded before it is judged).
func (p *Proxier) watch(ctx context.Context, w watcher) {
	judgements := make(chan judgement, 1024)
	decided := make(chan struct{})
	go func() {
		defer close(decided)
		for j := range judgements {
			p.mu.Lock()
			var what string
			dmg := &damage{broad: true}
			switch {
			case !j.lost:
				what, dmg = p.judge(j.tx), j.tx.dmg
			case !j.curOK:
				what = "notifications lost, and the generation unreadable"
			default:
				what = p.lost(j.cur, j.from, j.fromOK)
			}
			var rewrite string
			if what != "" {
				p.noteDamage(dmg)
				rewrite = "the table"
				if p.damage != nil {
					rewrite = p.damage.String()
				}
			}
			p.mu.Unlock()
			if what != "" {
				w.repair(what, rewrite)
			}
		}
	}()
	defer func() {
		close(judgements)
		<-decided
	}()

	d := txDecoder{family: newNetlinkReader(p.f.family).family}
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
			klog.ErrorS(err, "Cannot subscribe to nf_tables notifications", "family", p.cfg.Family)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Minute)
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		p.ev.attach(conn, judgements)
		sctx, stopSentinel := context.WithCancel(ctx)
		if w.sentinel != nil && (p.group == nil || p.group.members[0] == &p.ev) {
			go p.sentinel(sctx, &p.ev, w.sentinel)
		}
		// What was committed before the subscription went unheard.
		loss()
		d.touched, d.dmg = false, damage{}
		for {
			if lossy && !queued(conn) {
				// Nothing is dropped any more: what was is at most
				// up to the present generation.
				cur, err := w.gen()
				judgements <- judgement{lost: true, from: lossFrom, fromOK: lossFromOK, cur: cur, curOK: err == nil}
				if err == nil {
					p.ev.heard(cur)
				}
				lossy = false
			}
			msgs, err := conn.Receive()
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel drops notifications until the queue is
				// empty again; what it dropped is decided once it is.
				klog.V(2).InfoS("Lost nf_tables notifications (receive queue full)", "family", p.cfg.Family)
				p.chk.overflows.Add(1)
				loss()
				continue
			}
			if err != nil {
				if ctx.Err() == nil {
					klog.V(2).InfoS("Reading nf_tables notifications failed", "family", p.cfg.Family, "err", err)
				}
				break
			}
			backoff = time.Second
			for _, m := range msgs {
				if ev, ok := d.add(m); ok {
					seen, seenOK = ev.gen, true
					p.ev.heard(ev.gen)
					if ev.touched {
						judgements <- judgement{tx: ev}
					}
				}
			}
		}
		stopSentinel()
		p.ev.attach(nil, nil)
		stop()
		conn.Close()
		loss()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// queued reports whether notifications wait in conn's queue. A netlink
// socket stops dropping notifications once a read found its queue empty,
// and this peek is such a read.
func queued(conn eventConn) bool {
	sc, ok := conn.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, _ = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	return n > 0
}
