package nfnl

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Family is an nf_tables address family, as a request's nfgenmsg carries
// it. Dumps in a family list only that family's objects; Unspec lists all.
type Family uint8

const (
	Unspec Family = unix.NFPROTO_UNSPEC
	Inet   Family = unix.NFPROTO_INET
	IPv4   Family = unix.NFPROTO_IPV4
	IPv6   Family = unix.NFPROTO_IPV6
)

// Default timeouts of one call, when its context has no earlier deadline.
const (
	requestTimeout = 5 * time.Second
	dumpTimeout    = 30 * time.Second
	batchTimeout   = 10 * time.Second
	barrierTimeout = time.Minute
)

// Conn is a netlink socket to the nf_tables of one network namespace. The
// socket is kept between calls. After an error that may have left it out
// of step with the kernel (a timeout, a half-read reply, a failed batch)
// it is closed, and the next call dials again (see Dial for where); a
// request the kernel refused (see IsNotFound) keeps it. Calls take turns,
// so a Conn is safe for concurrent use; give a caller that must not wait
// for another its own Conn.
type Conn struct {
	mu sync.Mutex
	// ns is the network namespace every dial goes to (nil: the dialling
	// thread's); closed is set by Close.
	ns     *os.File
	closed bool
	nl     *netlink.Conn
	// sndbuf and rcvbuf are the buffer sizes set on nl (0: the default).
	sndbuf, rcvbuf int
}

// Dial connects to the nf_tables of the network namespace netns, an open
// file descriptor of it, which the Conn duplicates (the caller may close
// its own). With netns 0 every dial goes to the namespace of the thread
// that dials: in a process whose threads share one namespace, the
// process's. That needs no setns, and so no CAP_SYS_ADMIN.
func Dial(netns int) (*Conn, error) {
	c := &Conn{}
	if netns != 0 {
		fd, err := unix.FcntlInt(uintptr(netns), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("nfnl: network namespace fd %d: %w", netns, err)
		}
		c.ns = os.NewFile(uintptr(fd), "netns")
	}
	if _, err := c.socket(context.Background()); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the socket and releases the namespace.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset()
	c.closed = true
	if c.ns == nil {
		return nil
	}
	err := c.ns.Close()
	c.ns = nil
	return err
}

// socket returns the kept socket, dialling it when there is none, unless
// ctx has ended. Callers hold c.mu.
func (c *Conn) socket(ctx context.Context) (*netlink.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.nl != nil {
		return c.nl, nil
	}
	if c.closed {
		return nil, errors.New("nfnl: connection closed")
	}
	cfg := &netlink.Config{}
	if c.ns != nil {
		cfg.NetNS = int(c.ns.Fd())
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("nfnl: dial: %w", err)
	}
	c.nl = nl
	return nl, nil
}

// reset closes the socket; the next call dials again. Callers hold c.mu.
func (c *Conn) reset() {
	if c.nl != nil {
		c.nl.Close()
		c.nl = nil
		c.sndbuf, c.rcvbuf = 0, 0
	}
}

// IsNotFound reports an error of a request for an object (table, chain,
// set) that does not exist.
func IsNotFound(err error) bool { return errors.Is(err, unix.ENOENT) }

// refused reports an error the kernel replied with: the request was read
// whole and answered, so the socket is still in step.
func refused(err error) bool {
	var oe *netlink.OpError
	return errors.As(err, &oe) && oe.Sequence != 0
}

// deadline sets nl's deadline to the earlier of ctx's and timeout from now,
// and moves it to the past when ctx ends first. The returned function ends
// the call: when ctx ended during it, the socket is reset, as that late
// deadline could still land on the next call. Callers hold c.mu.
func (c *Conn) deadline(ctx context.Context, nl *netlink.Conn, timeout time.Duration) func() {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	nl.SetDeadline(d)
	stop := context.AfterFunc(ctx, func() { nl.SetDeadline(time.Unix(1, 0)) })
	return func() {
		if !stop() {
			c.reset()
		}
	}
}

// header is the nfgenmsg that starts every nf_tables message: family,
// version, resource id (big endian).
func header(f Family, resID uint16) []byte {
	return []byte{byte(f), unix.NFNETLINK_V0, byte(resID >> 8), byte(resID)}
}

// msgType is the netlink message type of nf_tables message msg.
func msgType(msg uint16) netlink.HeaderType {
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msg)
}

// request sends one nf_tables request (a dump when dump is set) and hands
// each reply to each, in order, on the kept socket. Each reply's Data
// starts after the nfgenmsg. each must not keep the slice.
func (c *Conn) request(ctx context.Context, f Family, msg uint16, dump bool, attrs []netlink.Attribute, each func(attrs []byte) error) error {
	data := header(f, 0)
	if len(attrs) > 0 {
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return err
		}
		data = append(data, b...)
	}
	flags, timeout := netlink.Request, requestTimeout
	if dump {
		flags, timeout = netlink.Request|netlink.Dump, dumpTimeout
	}
	req := netlink.Message{Header: netlink.Header{Type: msgType(msg), Flags: flags}, Data: data}
	return c.call(ctx, timeout, refused, func(nl *netlink.Conn) error { return exchange(nl, req, each) })
}

// call runs f on the kept socket, with c.mu held and a deadline from ctx
// and timeout. After f fails the socket is reset, unless keep (when set)
// says the error left it in step.
func (c *Conn) call(ctx context.Context, timeout time.Duration, keep func(error) bool, f func(nl *netlink.Conn) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	nl, err := c.socket(ctx)
	if err != nil {
		return err
	}
	done := c.deadline(ctx, nl, timeout)
	err = f(nl)
	done()
	if err != nil && (keep == nil || !keep(err)) {
		c.reset()
	}
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// exchange sends req and reads its replies (all parts of a dump).
func exchange(nl *netlink.Conn, req netlink.Message, each func([]byte) error) error {
	sent, err := nl.Send(req)
	if err != nil {
		return err
	}
	for m, err := range nl.ReceiveIter() {
		if err != nil {
			return err
		}
		if m.Header.Sequence != sent.Header.Sequence {
			return fmt.Errorf("nfnl: reply %d to request %d", m.Header.Sequence, sent.Header.Sequence)
		}
		if len(m.Data) < 4 {
			continue
		}
		if err := each(m.Data[4:]); err != nil {
			return err
		}
	}
	return nil
}

// Generation is the namespace's nf_tables ruleset generation
// (NFT_MSG_GETGEN). The kernel moves it by one on every committed
// transaction, whoever commits it.
func (c *Conn) Generation(ctx context.Context) (uint32, error) {
	var gen uint32
	found := false
	err := c.request(ctx, Unspec, unix.NFT_MSG_GETGEN, false, nil, func(attrs []byte) error {
		if g, ok := attrUint32(attrs, unix.NFTA_GEN_ID); ok {
			gen, found = g, true
		}
		return nil
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("nf_tables generation: %w", err)
	case !found:
		return 0, errors.New("nf_tables generation: no id in the reply")
	}
	return gen, nil
}

// Barrier sends an empty batch and returns once the kernel took it: the
// kernel runs one batch at a time, so any commit under way when Barrier
// was called has ended. Nothing is committed and nobody is notified.
func (c *Conn) Barrier(ctx context.Context) error {
	err := c.call(ctx, barrierTimeout, nil, func(nl *netlink.Conn) error {
		_, err := nl.SendMessages([]netlink.Message{batchMsg(unix.NFNL_MSG_BATCH_BEGIN), batchMsg(unix.NFNL_MSG_BATCH_END)})
		return err
	})
	if err != nil {
		return fmt.Errorf("nf_tables barrier: %w", err)
	}
	return nil
}

// batchMsg is the message that begins or ends an nf_tables batch.
func batchMsg(typ uint16) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
		Data:   header(Unspec, unix.NFNL_SUBSYS_NFTABLES),
	}
}

// setSockBuf sets a socket buffer option (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
// the forced forms pass the rmem_max and wmem_max limits (they need
// CAP_NET_ADMIN, which nf_tables needs anyway).
func setSockBuf(nl *netlink.Conn, opt, size int) error {
	rc, err := nl.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size)
	}); err != nil {
		return err
	}
	return serr
}

// Attr returns the payload of the first attribute of type typ in attrs (a
// message's attributes after its nfgenmsg, or a nested attribute's
// payload), without allocating; ok is false when there is none.
func Attr(attrs []byte, typ uint16) (payload []byte, ok bool) {
	for len(attrs) >= 4 {
		n := int(binary.NativeEndian.Uint16(attrs))
		if n < 4 || n > len(attrs) {
			return nil, false
		}
		if binary.NativeEndian.Uint16(attrs[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == typ {
			return attrs[4:n], true
		}
		attrs = attrs[min((n+3)&^3, len(attrs)):]
	}
	return nil, false
}

// Uint32 decodes a 32-bit nf_tables integer attribute (big endian).
func Uint32(b []byte) (uint32, bool) {
	if len(b) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(b), true
}

// String decodes a NUL-terminated string attribute.
func String(b []byte) string { return string(bytes.TrimRight(b, "\x00")) }

// attrUint32 and attrString decode attribute typ of attrs.
func attrUint32(attrs []byte, typ uint16) (uint32, bool) {
	b, _ := Attr(attrs, typ)
	return Uint32(b)
}

func attrString(attrs []byte, typ uint16) string {
	b, _ := Attr(attrs, typ)
	return String(b)
}
