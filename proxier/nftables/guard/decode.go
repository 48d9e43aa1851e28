package guard

import (
	"bytes"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// After each committed transaction the kernel sends one notification per
// object the transaction created or deleted, then NFT_MSG_NEWGEN with the
// transaction's generation and the pid and name of the process that
// committed it. Object notifications carry the table name as attribute 1
// and the family in their nfgenmsg, which is all the decoder reads, with
// the chain or set name of rule and element notifications.

// txEvent is what the notifications say of one committed transaction.
type txEvent struct {
	gen     uint32
	touched bool // it changed the table in the guard's family
	pid     uint32
	proc    string
	// dmg is what it changed in the table (when touched).
	dmg Damage
}

// txDecoder turns notifications into transactions.
type txDecoder struct {
	family nfnl.Family
	table  []byte
	// traffic reports a set whose elements the packet path writes.
	traffic func(set []byte) bool
	// touched: the current transaction touched the table so far; dmg is
	// what it changed.
	touched bool
	dmg     Damage
	// last is the chain or set the previous notification named (a flush
	// sends one per rule or element), lastKind its message type.
	last     []byte
	lastKind uint16
}

// add takes one notification and returns the transaction it ends, if it is
// a NEWGEN. Of a notification in the decoder's family it reads the table
// name and the chain or set name, without allocating unless the name
// differs from the previous notification's (a full sync sends one per
// element).
func (d *txDecoder) add(m netlink.Message) (txEvent, bool) {
	if g, ok := nfnl.ParseGen(m); ok {
		ev := txEvent{gen: g.ID, pid: g.PID, proc: g.Proc, touched: d.touched}
		if d.touched {
			ev.dmg = d.dmg
		}
		d.reset()
		return ev, true
	}
	msg, f, attrs, ok := nfnl.Parse(m)
	if !ok || f != d.family {
		return txEvent{}, false
	}
	switch msg {
	case nfnl.MsgDestroyRule:
		msg = unix.NFT_MSG_DELRULE
	case nfnl.MsgDestroySetElem:
		msg = unix.NFT_MSG_DELSETELEM
	}
	// NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,
	// SET_ELEM_LIST_TABLE,OBJ_TABLE,FLOWTABLE_TABLE} are all 1. Without
	// one, count it as the table's, to be safe.
	name, ok := nfnl.Attr(attrs, unix.NFTA_TABLE_NAME)
	switch {
	case !ok:
		d.touched = true
		d.dmg.Broad = true
	case bytes.Equal(bytes.TrimRight(name, "\x00"), d.table) && !d.trafficElems(msg, attrs):
		d.touched = true
		d.note(msg, attrs)
	}
	return txEvent{}, false
}

// reset starts the next transaction.
func (d *txDecoder) reset() {
	d.touched, d.dmg, d.last = false, Damage{}, d.last[:0]
}

// trafficElems reports a notification of elements added to or deleted
// from a set the packet path fills (session affinity): they are not the
// sync's to restore.
func (d *txDecoder) trafficElems(msg uint16, attrs []byte) bool {
	switch msg {
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
	default:
		return false
	}
	set, ok := nfnl.Attr(attrs, unix.NFTA_SET_ELEM_LIST_SET)
	return ok && d.traffic != nil && d.traffic(bytes.TrimRight(set, "\x00"))
}

// note records what one notification (msg, its attributes after the
// nfgenmsg) of a transaction that touched the table changed.
func (d *txDecoder) note(msg uint16, attrs []byte) {
	if d.dmg.Broad {
		return
	}
	var name []byte
	var ok, add bool
	switch msg {
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		name, ok = nfnl.Attr(attrs, unix.NFTA_RULE_CHAIN)
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		name, ok = nfnl.Attr(attrs, unix.NFTA_SET_ELEM_LIST_SET)
		add = msg == unix.NFT_MSG_NEWSETELEM
	}
	if !ok {
		d.dmg.Broad = true
		return
	}
	if len(d.last) > 0 && msg == d.lastKind && bytes.Equal(name, d.last) {
		return
	}
	n := nfnl.String(name)
	if msg == unix.NFT_MSG_NEWRULE || msg == unix.NFT_MSG_DELRULE {
		d.dmg.addChain(n)
	} else {
		d.dmg.addSet(n, add)
	}
	d.last, d.lastKind = append(d.last[:0], name...), msg
}
