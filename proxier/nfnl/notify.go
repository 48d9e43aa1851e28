package nfnl

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// After each committed transaction the kernel sends the members of the
// NFNLGRP_NFTABLES multicast group (what `nft monitor` reads) one
// message per object the transaction created or deleted, elements
// included, then NFT_MSG_NEWGEN with the new generation and the pid and
// name of the process that committed it. It builds them only while
// someone is subscribed, one per element: a subscriber that does not need
// a transaction's notifications leaves the group for it.

// GroupNFTables is NFNLGRP_NFTABLES (linux/netfilter/nfnetlink.h).
const GroupNFTables = 7

// The NFT_MSG_DESTROY* message types (Linux 6.3), which golang.org/x/sys
// does not name.
const (
	MsgDestroyTable     = 0x1a
	MsgDestroyChain     = 0x1b
	MsgDestroyRule      = 0x1c
	MsgDestroySet       = 0x1d
	MsgDestroySetElem   = 0x1e
	MsgDestroyObj       = 0x1f
	MsgDestroyFlowtable = 0x20
)

// Subscription is a socket subscribed to the nf_tables notifications of
// one network namespace.
type Subscription struct {
	nl *netlink.Conn
}

// Subscribe joins the nf_tables notifications of the network namespace
// netns (an open file descriptor of it; 0 for the calling thread's), with
// a receive buffer of buffer bytes (the kernel doubles it) that may pass
// the system's rmem_max.
func Subscribe(netns, buffer int) (*Subscription, error) {
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("nfnl: dial: %w", err)
	}
	if setSockBuf(nl, unix.SO_RCVBUFFORCE, buffer) != nil {
		nl.SetReadBuffer(buffer)
	}
	if err := nl.JoinGroup(GroupNFTables); err != nil {
		nl.Close()
		return nil, fmt.Errorf("nfnl: join the nf_tables notifications: %w", err)
	}
	return &Subscription{nl: nl}, nil
}

// Receive blocks for the next notifications. When the receive queue was
// full the kernel dropped some; Receive then fails with an error Lost
// reports, and the subscription goes on from the next one.
func (s *Subscription) Receive() ([]netlink.Message, error) { return s.nl.Receive() }

// Lost reports the error of a Receive whose notifications the kernel
// dropped.
func Lost(err error) bool { return errors.Is(err, unix.ENOBUFS) }

// Leave leaves the notification group: the kernel builds no more
// notifications for this socket until Join.
func (s *Subscription) Leave() error { return s.nl.LeaveGroup(GroupNFTables) }

// Join joins the notification group again.
func (s *Subscription) Join() error { return s.nl.JoinGroup(GroupNFTables) }

// Queued reports whether notifications wait to be read. It peeks without
// blocking; a socket that dropped notifications stops dropping once a
// read finds its queue empty, and this peek is such a read.
func (s *Subscription) Queued() bool {
	raw, err := s.nl.SyscallConn()
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

// Close closes the socket; a Receive blocked on it returns.
func (s *Subscription) Close() error { return s.nl.Close() }

// Parse splits an nf_tables message into its type (NFT_MSG_*), its
// family and its attributes (after the nfgenmsg, for Attr), without
// allocating; ok is false for a message of another subsystem.
func Parse(m netlink.Message) (msg uint16, f Family, attrs []byte, ok bool) {
	typ := uint16(m.Header.Type)
	if typ>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
		return 0, 0, nil, false
	}
	return typ & 0xff, Family(m.Data[0]), m.Data[4:], true
}

// Gen is what NFT_MSG_NEWGEN says of a committed transaction.
type Gen struct {
	// ID is the generation the transaction made.
	ID uint32
	// PID and Proc are the process that committed it.
	PID  uint32
	Proc string
}

// ParseGen decodes a NEWGEN notification; ok is false for any other
// message.
func ParseGen(m netlink.Message) (g Gen, ok bool) {
	msg, _, attrs, ok := Parse(m)
	if !ok || msg != unix.NFT_MSG_NEWGEN {
		return Gen{}, false
	}
	g.ID, _ = attrUint32(attrs, unix.NFTA_GEN_ID)
	g.PID, _ = attrUint32(attrs, unix.NFTA_GEN_PROC_PID)
	g.Proc = attrString(attrs, unix.NFTA_GEN_PROC_NAME)
	return g, true
}
