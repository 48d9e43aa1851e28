package nftables

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
)

// Element-only partial syncs go over a long-lived netlink socket, in one
// nf_tables batch (atomic, like an nft -f transaction), instead of starting
// nft: the nft process costs about 10 ms per sync, the batch well under one.
// Everything else (chains, rules, full syncs) goes through nft.

// appendEncoded packs atoms as nf_tables registers hold them: each field
// padded to a multiple of 4 bytes.
func appendEncoded(out []byte, fields []field, t []atom) ([]byte, error) {
	for i, f := range fields {
		a := t[i]
		switch f {
		case fAddr:
			if a.addr.Is4() {
				b := a.addr.As4()
				out = append(out, b[:]...)
			} else {
				b := a.addr.As16()
				out = append(out, b[:]...)
			}
		case fProto:
			out = append(out, byte(a.num), 0, 0, 0)
		case fPort:
			out = binary.BigEndian.AppendUint16(out, uint16(a.num))
			out = append(out, 0, 0)
		case fIndex:
			out = binary.NativeEndian.AppendUint32(out, a.num)
		default:
			return nil, fmt.Errorf("field %d is not written over netlink", f)
		}
	}
	return out, nil
}

// elemOp is one element to add or delete or, with flush, the removal of
// every element of set e.set.
type elemOp struct {
	add   bool
	flush bool
	e     elem
}

// netlinkWritable reports whether every op can go over netlink.
func netlinkWritable(ops []elemOp) bool {
	for _, op := range ops {
		if !netlinkWrites(op.e.set) {
			return false
		}
	}
	return true
}

// elemWriter writes element batches to one network namespace's nf_tables.
type elemWriter struct {
	family uint8
	netns  int // 0: the current one
	conn   *netlink.Conn
	// batches counts the batches applied.
	batches int
	// sndbuf is the send buffer size set on conn (0: the default).
	sndbuf, rcvbuf int
}

// setSockBuf sets a socket buffer option (SO_SNDBUFFORCE, SO_RCVBUFFORCE)
// of c.
func setSockBuf(c *netlink.Conn, opt, size int) error {
	rc, err := c.SyscallConn()
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

func newElemWriter(f proxier.IPFamily) *elemWriter {
	w := &elemWriter{family: unix.NFPROTO_IPV4}
	if f == proxier.IPv6 {
		w.family = unix.NFPROTO_IPV6
	}
	return w
}

// maxElemBytes bounds the encoded elements of one message: a netlink
// attribute's length is 16 bits, and the elements nest in one attribute
// (the bound is checked before each element, which is well under 1 KiB).
const maxElemBytes = 63 << 10

// Netlink attributes are appended by hand: at 100,000 elements the
// generic attribute encoder's allocations cost more than the kernel's work.

// beginAttr starts an attribute whose payload the caller appends next;
// endAttr closes it, given what beginAttr returned.
func beginAttr(b []byte) ([]byte, int) { return append(b, 0, 0, 0, 0), len(b) }

func endAttr(b []byte, at int, typ uint16) []byte {
	binary.NativeEndian.PutUint16(b[at:], uint16(len(b)-at))
	binary.NativeEndian.PutUint16(b[at+2:], typ)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// appendString appends a NUL-terminated string attribute.
func appendString(b []byte, typ uint16, s string) []byte {
	b, at := beginAttr(b)
	b = append(append(b, s...), 0)
	return endAttr(b, at, typ)
}

// appendData appends a nested NFTA_DATA_VALUE attribute of type typ
// holding the encoded tuple.
func appendData(b []byte, typ uint16, fields []field, t []atom) ([]byte, error) {
	b, outer := beginAttr(b)
	b, inner := beginAttr(b)
	b, err := appendEncoded(b, fields, t)
	if err != nil {
		return nil, err
	}
	b = endAttr(b, inner, unix.NFTA_DATA_VALUE)
	return endAttr(b, outer, typ|unix.NLA_F_NESTED), nil
}

// appendElem appends one element (an NFTA_LIST_ELEM) of a set with spec
// sp: its key and, when op adds to a map, its value.
func appendElem(b []byte, op elemOp, sp setSpec) ([]byte, error) {
	b, at := beginAttr(b)
	b, err := appendData(b, unix.NFTA_SET_ELEM_KEY, sp.key, op.e.key[:])
	if err != nil {
		return nil, fmt.Errorf("%s key: %w", op.e.set, err)
	}
	switch {
	case !op.add:
	case sp.kind == kindVMap:
		// NF_DROP, or NFT_GOTO (-4) and the chain.
		code := uint32(0)
		if op.e.verdict.chain != "" {
			code = 0xfffffffc
		}
		var data, verd, c int
		b, data = beginAttr(b)
		b, verd = beginAttr(b)
		b, c = beginAttr(b)
		// Big endian, as every nf_tables integer attribute.
		b = binary.BigEndian.AppendUint32(b, code)
		b = endAttr(b, c, unix.NFTA_VERDICT_CODE)
		if op.e.verdict.chain != "" {
			b = appendString(b, unix.NFTA_VERDICT_CHAIN, op.e.verdict.chain)
		}
		b = endAttr(b, verd, unix.NFTA_DATA_VERDICT|unix.NLA_F_NESTED)
		b = endAttr(b, data, unix.NFTA_SET_ELEM_DATA|unix.NLA_F_NESTED)
	case sp.kind == kindMap:
		if b, err = appendData(b, unix.NFTA_SET_ELEM_DATA, sp.value, op.e.value[:]); err != nil {
			return nil, fmt.Errorf("%s value: %w", op.e.set, err)
		}
	}
	return endAttr(b, at, unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED), nil
}

// messages encodes ops as NEWSETELEM and DELSETELEM messages, in order:
// each run of ops on the same set in the same direction shares messages of
// up to maxElemBytes of elements.
func (w *elemWriter) messages(ops []elemOp) ([]netlink.Message, error) {
	var msgs []netlink.Message
	for i := 0; i < len(ops); {
		op := ops[i]
		if op.flush {
			// A DELSETELEM without elements flushes the set.
			data := []byte{w.family, unix.NFNETLINK_V0, 0, 0}
			data = appendString(data, unix.NFTA_SET_ELEM_LIST_TABLE, TableName)
			data = appendString(data, unix.NFTA_SET_ELEM_LIST_SET, op.e.set)
			msgs = append(msgs, netlink.Message{
				Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM), Flags: netlink.Request | netlink.Acknowledge},
				Data:   data,
			})
			i++
			continue
		}
		// nfgenmsg: family, version, resource id; then table and set.
		data := append(make([]byte, 0, maxElemBytes+2<<10), w.family, unix.NFNETLINK_V0, 0, 0)
		data = appendString(data, unix.NFTA_SET_ELEM_LIST_TABLE, TableName)
		data = appendString(data, unix.NFTA_SET_ELEM_LIST_SET, op.e.set)
		sp, ok := specOf(op.e.set)
		if !ok || sp.interval {
			return nil, fmt.Errorf("set %s is not written over netlink", op.e.set)
		}
		data, at := beginAttr(data)
		for start := len(data); i < len(ops) && ops[i].e.set == op.e.set && ops[i].add == op.add && !ops[i].flush && len(data)-start < maxElemBytes; i++ {
			var err error
			if data, err = appendElem(data, ops[i], sp); err != nil {
				return nil, err
			}
		}
		data = endAttr(data, at, unix.NFTA_SET_ELEM_LIST_ELEMENTS|unix.NLA_F_NESTED)
		typ, flags := uint16(unix.NFT_MSG_DELSETELEM), netlink.Request|netlink.Acknowledge
		if op.add {
			typ, flags = unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
			Data:   data,
		})
	}
	return msgs, nil
}

// apply runs ops as one nf_tables batch: all of them or none.
func (w *elemWriter) apply(ops []elemOp) error {
	if len(ops) == 0 {
		return nil
	}
	if w.conn == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: w.netns})
		if err != nil {
			return err
		}
		w.conn = c
	}
	batch := func(typ uint16) netlink.Message {
		return netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
			// nfgenmsg: AF_UNSPEC, version 0, resource id NFNL_SUBSYS_NFTABLES (big endian).
			Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
		}
	}
	body, err := w.messages(ops)
	if err != nil {
		return err
	}
	msgs := append([]netlink.Message{batch(unix.NFNL_MSG_BATCH_BEGIN)}, body...)
	msgs = append(msgs, batch(unix.NFNL_MSG_BATCH_END))
	// The whole batch goes in one send (nf_tables applies a batch only
	// when it arrives in one piece): make room for it.
	total := 0
	for _, m := range msgs {
		total += 16 + len(m.Data) + 4
	}
	if total > w.sndbuf {
		if err := setSockBuf(w.conn, unix.SO_SNDBUFFORCE, total+(64<<10)); err != nil {
			return fmt.Errorf("nf_tables batch of %d bytes: %w", total, err)
		}
		w.sndbuf = total
	}
	// And for one acknowledgement per message (an skb each).
	if need := len(msgs) * 1024; need > w.rcvbuf && need > 1<<20 {
		if err := setSockBuf(w.conn, unix.SO_RCVBUFFORCE, need); err != nil {
			return fmt.Errorf("nf_tables batch of %d messages: %w", len(msgs), err)
		}
		w.rcvbuf = need
	}
	w.conn.SetDeadline(time.Now().Add(10 * time.Second))
	sent, err := w.conn.SendMessages(msgs)
	if err != nil {
		w.close()
		return err
	}
	// One acknowledgement (or error) per element message.
	want := map[uint32]bool{}
	for _, m := range sent[1 : len(sent)-1] {
		want[m.Header.Sequence] = true
	}
	for len(want) > 0 {
		replies, err := w.conn.Receive()
		if err != nil {
			w.close()
			return fmt.Errorf("nf_tables batch: %w", err)
		}
		for _, r := range replies {
			delete(want, r.Header.Sequence)
		}
	}
	w.batches++
	return nil
}

func (w *elemWriter) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
		w.sndbuf, w.rcvbuf = 0, 0
	}
}
