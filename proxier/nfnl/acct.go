package nfnl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfacct objects (nfnetlink_acct) are named packet and byte counters of a
// network namespace, which iptables rules feed with -m nfacct
// --nfacct-name. kube-proxy's iptables mode keeps two and exports them as
// metrics; these calls create and read them on the same sockets as the
// nf_tables requests, in their own netfilter subsystem.

// nfnetlink_acct's messages and attributes (linux/netfilter/nfnetlink_acct.h).
const (
	acctMsgNew = 0 // NFNL_MSG_ACCT_NEW
	acctMsgGet = 1 // NFNL_MSG_ACCT_GET

	acctName    = 1 // NFACCT_NAME, string
	acctPackets = 2 // NFACCT_PKTS, u64 big endian
	acctBytes   = 3 // NFACCT_BYTES, u64 big endian

	// AcctNameMax is the longest name of an nfacct object, in bytes
	// (NFACCT_NAME_MAX less its NUL).
	AcctNameMax = 31
)

// Acct is the content of one nfacct object.
type Acct struct {
	Name    string
	Packets uint64
	Bytes   uint64
}

// acctMsgType is the netlink message type of nfnetlink_acct message msg.
func acctMsgType(msg uint16) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_ACCT<<8 | msg)
}

// EnsureAcct creates the nfacct object name, with its counters at zero,
// unless it exists: an existing one keeps its counts. It fails when the
// kernel has no nfnetlink_acct.
func (c *Conn) EnsureAcct(ctx context.Context, name string) error {
	if err := checkAcctName(name); err != nil {
		return err
	}
	// Excl: the kernel refuses to create a second one (EEXIST) instead of
	// answering EBUSY, or resetting it (with Replace).
	req, err := acctMessage(acctMsgNew, netlink.Request|netlink.Create|netlink.Excl|netlink.Acknowledge, name)
	if err == nil {
		err = c.acctRequest(ctx, req, func([]byte) error { return nil })
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create nfacct object %s: %w", name, err)
	}
	return nil
}

// Accts reads every nfacct object of the namespace, by name.
//
// It is one dump: the kernel's reply to a GET of one object is flagged as
// a part of a multi-part message that no end follows, on which a netlink
// reader waits for more until its deadline.
func (c *Conn) Accts(ctx context.Context) (map[string]Acct, error) {
	req, err := acctMessage(acctMsgGet, netlink.Request|netlink.Dump, "")
	if err != nil {
		return nil, err
	}
	out := map[string]Acct{}
	err = c.acctRequest(ctx, req, func(attrs []byte) error {
		a, err := parseAcct(attrs)
		if err != nil {
			return err
		}
		out[a.Name] = a
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list nfacct objects: %w", err)
	}
	return out, nil
}

// Acct reads the counters of the nfacct object name. An object that does
// not exist fails with an error IsNotFound reports.
func (c *Conn) Acct(ctx context.Context, name string) (Acct, error) {
	all, err := c.Accts(ctx)
	if err != nil {
		return Acct{}, err
	}
	a, ok := all[name]
	if !ok {
		return Acct{}, fmt.Errorf("nfacct object %s: %w", name, unix.ENOENT)
	}
	return a, nil
}

// checkAcctName refuses a name the kernel would cut or refuse.
func checkAcctName(name string) error {
	if name == "" || len(name) > AcctNameMax {
		return fmt.Errorf("nfacct: invalid object name %q (1 to %d bytes)", name, AcctNameMax)
	}
	return nil
}

// acctRequest sends req and hands each reply to each, as request does.
func (c *Conn) acctRequest(ctx context.Context, req netlink.Message, each func(attrs []byte) error) error {
	timeout := requestTimeout
	if req.Header.Flags&netlink.Dump != 0 {
		timeout = dumpTimeout
	}
	return c.call(ctx, timeout, refused, func(nl *netlink.Conn) error { return exchange(nl, req, each) })
}

// acctMessage is the nfnetlink_acct request msg for the object name ("":
// none, for a dump).
func acctMessage(msg uint16, flags netlink.HeaderFlags, name string) (netlink.Message, error) {
	data := header(Unspec, 0)
	if name != "" {
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{nameAttr(acctName, name)})
		if err != nil {
			return netlink.Message{}, err
		}
		data = append(data, attrs...)
	}
	return netlink.Message{Header: netlink.Header{Type: acctMsgType(msg), Flags: flags}, Data: data}, nil
}

// parseAcct decodes the attributes of an nfacct object message (after
// its nfgenmsg).
func parseAcct(attrs []byte) (Acct, error) {
	var a Acct
	name, ok := Attr(attrs, acctName)
	if !ok {
		return a, errors.New("nfacct: object without a name")
	}
	a.Name = String(name)
	for _, f := range []struct {
		typ uint16
		dst *uint64
	}{{acctPackets, &a.Packets}, {acctBytes, &a.Bytes}} {
		b, ok := Attr(attrs, f.typ)
		if !ok || len(b) != 8 {
			return a, fmt.Errorf("nfacct: object %s without a 64-bit counter %d", a.Name, f.typ)
		}
		*f.dst = binary.BigEndian.Uint64(b)
	}
	return a, nil
}
