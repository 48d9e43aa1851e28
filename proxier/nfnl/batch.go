package nfnl

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Element batches are encoded here rather than by github.com/google/nftables
// (Conn.SetAddElements): it builds every element through the generic
// attribute encoder, five allocations per element, which at 100,000
// elements takes several times the CPU of appending them into one buffer
// per message and makes the whole batch markedly slower
// (BenchmarkElementBatch100k compares the two).

// VerdictKind is the verdict of a verdict map's element.
type VerdictKind uint8

const (
	// NoVerdict: the element is not a verdict map's.
	NoVerdict VerdictKind = iota
	Accept
	Drop
	Continue
	Return
	Jump
	Goto
)

// Verdict is a verdict map element's data: a kind, and the chain of a
// jump or goto.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

// code is the verdict code nf_tables carries (NF_ACCEPT, NF_DROP, NFT_*).
func (v Verdict) code() (uint32, error) {
	switch v.Kind {
	case Accept:
		return 1, nil
	case Drop:
		return 0, nil
	case Continue:
		return 0xffffffff, nil // NFT_CONTINUE (-1)
	case Return:
		return 0xfffffffb, nil // NFT_RETURN (-5)
	case Jump:
		return 0xfffffffd, nil // NFT_JUMP (-3)
	case Goto:
		return 0xfffffffc, nil // NFT_GOTO (-4)
	}
	return 0, fmt.Errorf("verdict kind %d", v.Kind)
}

// Elem is one element of a set or map, its key and data encoded as
// nf_tables registers hold them (see AppendAddr and its kin).
type Elem struct {
	Key []byte
	// KeyEnd is the last key of a range, in a concatenated interval set.
	KeyEnd []byte
	// IntervalEnd marks the element that ends a range in a plain interval
	// set (see PrefixElems).
	IntervalEnd bool
	// Value is a data map element's data; Verdict a verdict map's. A
	// deletion sends neither: the kernel finds the element by its key.
	Value   []byte
	Verdict Verdict
}

// nftaSetElemKeyEnd is NFTA_SET_ELEM_KEY_END (Linux 5.6).
const nftaSetElemKeyEnd = 10

// nftDataValueMaxLen is NFT_DATA_VALUE_MAXLEN: the longest key or data.
const nftDataValueMaxLen = 64

// maxElemBytes bounds the encoded elements of one message: a netlink
// attribute's length is 16 bits and the elements nest in one attribute.
// The bound is checked before each element, which takes well under 1 KiB.
const maxElemBytes = 63 << 10

// Batch is element changes to the sets and maps of one table of one
// family, which Conn.Send commits as one transaction: all of them or
// none. Consecutive changes of one set in one direction share messages.
type Batch struct {
	family Family
	table  string
	msgs   []netlink.Message
	// The message being filled: its set and type, and where its elements
	// attribute starts (open is false when there is none).
	open    bool
	set     string
	typ     uint16
	elemsAt int
	changes int
	err     error
}

// NewBatch starts a batch of changes to table in family f.
func NewBatch(f Family, table string) *Batch { return &Batch{family: f, table: table} }

// Add adds e to set (a map element with its data). The kernel refuses an
// element that exists already, with other data. Add and Delete copy e
// into the batch: the caller may reuse its slices.
func (b *Batch) Add(set string, e Elem) { b.elem(unix.NFT_MSG_NEWSETELEM, set, e) }

// Delete deletes e from set. The kernel refuses an element that does not
// exist.
func (b *Batch) Delete(set string, e Elem) { b.elem(unix.NFT_MSG_DELSETELEM, set, e) }

// Flush deletes every element of set.
func (b *Batch) Flush(set string) {
	b.close()
	data := b.start(set)
	b.msgs = append(b.msgs, netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_DELSETELEM), Flags: netlink.Request | netlink.Acknowledge},
		Data:   data,
	})
	b.changes++
}

// Len is the number of changes (elements and flushes) in the batch.
func (b *Batch) Len() int { return b.changes }

// Err is the first change the batch could not encode, or nil.
func (b *Batch) Err() error { return b.err }

// Messages returns the batch's nf_tables messages, in order, without the
// messages that begin and end it.
func (b *Batch) Messages() []netlink.Message {
	b.close()
	return b.msgs
}

// start begins a message's data: nfgenmsg, table and set.
func (b *Batch) start(set string) []byte {
	data := append(make([]byte, 0, 64+len(b.table)+len(set)), header(b.family, 0)...)
	data = appendString(data, unix.NFTA_SET_ELEM_LIST_TABLE, b.table)
	return appendString(data, unix.NFTA_SET_ELEM_LIST_SET, set)
}

// close ends the message being filled.
func (b *Batch) close() {
	if !b.open {
		return
	}
	m := &b.msgs[len(b.msgs)-1]
	m.Data = endAttr(m.Data, b.elemsAt, unix.NFTA_SET_ELEM_LIST_ELEMENTS|unix.NLA_F_NESTED)
	b.open = false
}

func (b *Batch) elem(typ uint16, set string, e Elem) {
	if b.err != nil {
		return
	}
	if err := e.check(typ); err != nil {
		b.err = fmt.Errorf("%s: %w", set, err)
		return
	}
	if b.open && (b.set != set || b.typ != typ || len(b.msgs[len(b.msgs)-1].Data)-b.elemsAt > maxElemBytes) {
		b.close()
	}
	if !b.open {
		data := b.start(set)
		// Room for a message's worth of elements, allocated once.
		data = append(make([]byte, 0, maxElemBytes+2<<10), data...)
		data, at := beginAttr(data)
		flags := netlink.Request | netlink.Acknowledge
		if typ == unix.NFT_MSG_NEWSETELEM {
			flags |= netlink.Create
		}
		b.msgs = append(b.msgs, netlink.Message{Header: netlink.Header{Type: msgType(typ), Flags: flags}, Data: data})
		b.open, b.set, b.typ, b.elemsAt = true, set, typ, at
	}
	m := &b.msgs[len(b.msgs)-1]
	m.Data = appendElem(m.Data, e, typ == unix.NFT_MSG_NEWSETELEM)
	b.changes++
}

// check reports an element the kernel could not take.
func (e *Elem) check(typ uint16) error {
	switch {
	case len(e.Key) == 0:
		return fmt.Errorf("element without a key")
	case len(e.Key) > nftDataValueMaxLen || len(e.KeyEnd) > nftDataValueMaxLen || len(e.Value) > nftDataValueMaxLen:
		return fmt.Errorf("element key or data over %d bytes", nftDataValueMaxLen)
	case typ == unix.NFT_MSG_NEWSETELEM && e.Verdict.Kind != NoVerdict && len(e.Value) > 0:
		return fmt.Errorf("element with both data and a verdict")
	case e.Verdict.Kind > Goto || len(e.Verdict.Chain) > 255:
		return fmt.Errorf("verdict %v", e.Verdict)
	}
	return nil
}

// appendElem appends e as an NFTA_LIST_ELEM; its data only when adding.
func appendElem(b []byte, e Elem, add bool) []byte {
	b, at := beginAttr(b)
	var flags, data, verd, code int
	if e.IntervalEnd {
		b, flags = beginAttr(b)
		b = binary.BigEndian.AppendUint32(b, unix.NFT_SET_ELEM_INTERVAL_END)
		b = endAttr(b, flags, unix.NFTA_SET_ELEM_FLAGS)
	}
	b = appendValue(b, unix.NFTA_SET_ELEM_KEY, e.Key)
	if len(e.KeyEnd) > 0 {
		b = appendValue(b, nftaSetElemKeyEnd, e.KeyEnd)
	}
	switch {
	case !add:
	case e.Verdict.Kind != NoVerdict:
		v, _ := e.Verdict.code()
		b, data = beginAttr(b)
		b, verd = beginAttr(b)
		b, code = beginAttr(b)
		b = binary.BigEndian.AppendUint32(b, v)
		b = endAttr(b, code, unix.NFTA_VERDICT_CODE)
		if e.Verdict.Chain != "" {
			b = appendString(b, unix.NFTA_VERDICT_CHAIN, e.Verdict.Chain)
		}
		b = endAttr(b, verd, unix.NFTA_DATA_VERDICT|unix.NLA_F_NESTED)
		b = endAttr(b, data, unix.NFTA_SET_ELEM_DATA|unix.NLA_F_NESTED)
	case len(e.Value) > 0:
		b = appendValue(b, unix.NFTA_SET_ELEM_DATA, e.Value)
	}
	return endAttr(b, at, unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED)
}

// beginAttr starts an attribute whose payload the caller appends next;
// endAttr closes it, given where it started, and pads it.
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

// appendValue appends attribute typ nesting an NFTA_DATA_VALUE of v.
func appendValue(b []byte, typ uint16, v []byte) []byte {
	b, outer := beginAttr(b)
	b, inner := beginAttr(b)
	b = append(b, v...)
	b = endAttr(b, inner, unix.NFTA_DATA_VALUE)
	return endAttr(b, outer, typ|unix.NLA_F_NESTED)
}

// Send commits batch as one nf_tables transaction: every change or, when
// the kernel refuses one, none. It returns once the kernel has answered
// each message. The socket's buffers grow to hold the batch, which must
// reach the kernel in one piece.
func (c *Conn) Send(ctx context.Context, batch *Batch) error {
	if batch.err != nil {
		return batch.err
	}
	body := batch.Messages()
	if len(body) == 0 {
		return nil
	}
	msgs := make([]netlink.Message, 0, len(body)+2)
	msgs = append(append(append(msgs, batchMsg(unix.NFNL_MSG_BATCH_BEGIN)), body...), batchMsg(unix.NFNL_MSG_BATCH_END))
	// After a failure, answers to the rest of the batch may be queued
	// still: call resets the socket.
	err := c.call(ctx, batchTimeout, nil, func(nl *netlink.Conn) error {
		if err := c.grow(nl, msgs); err != nil {
			return err
		}
		return commit(nl, msgs)
	})
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("nf_tables batch: %w", err)
	}
	return err
}

// grow makes the socket's send buffer hold msgs and its receive buffer an
// answer (an skb each) to every one. Callers hold c.mu.
func (c *Conn) grow(nl *netlink.Conn, msgs []netlink.Message) error {
	total := 0
	for _, m := range msgs {
		total += unix.NLMSG_HDRLEN + len(m.Data) + unix.NLMSG_ALIGNTO
	}
	if total > c.sndbuf {
		if err := setSockBuf(nl, unix.SO_SNDBUFFORCE, total+64<<10); err != nil {
			return fmt.Errorf("nf_tables batch of %d bytes: %w", total, err)
		}
		c.sndbuf = total
	}
	if need := len(msgs) * 1024; need > c.rcvbuf && need > 1<<20 {
		if err := setSockBuf(nl, unix.SO_RCVBUFFORCE, need); err != nil {
			return fmt.Errorf("nf_tables batch of %d messages: %w", len(msgs), err)
		}
		c.rcvbuf = need
	}
	return nil
}

// commit sends msgs in one piece and waits for the answer to each message
// between the first and the last.
func commit(nl *netlink.Conn, msgs []netlink.Message) error {
	sent, err := nl.SendMessages(msgs)
	if err != nil {
		return err
	}
	want := make(map[uint32]bool, len(sent)-2)
	for _, m := range sent[1 : len(sent)-1] {
		want[m.Header.Sequence] = true
	}
	for len(want) > 0 {
		replies, err := nl.Receive()
		if err != nil {
			return err
		}
		for _, r := range replies {
			delete(want, r.Header.Sequence)
		}
	}
	return nil
}

// Keys and data are the concatenation of their fields, each as nf_tables
// registers hold it: padded to a multiple of 4 bytes.

// AppendAddr appends an IPv4 (4 bytes) or IPv6 (16 bytes) address. An
// IPv4-mapped IPv6 address takes 16 bytes: unmap it for an IPv4 field.
func AppendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(b, v[:]...)
	}
	v := a.As16()
	return append(b, v[:]...)
}

// AppendProto appends a transport protocol number (inet_proto).
func AppendProto(b []byte, proto uint8) []byte { return append(b, proto, 0, 0, 0) }

// AppendPort appends a port (inet_service, big endian).
func AppendPort(b []byte, port uint16) []byte {
	return append(binary.BigEndian.AppendUint16(b, port), 0, 0)
}

// AppendUint32 appends a 32-bit integer in host byte order, as the numgen
// and meta expressions write it (a mark, a random index).
func AppendUint32(b []byte, v uint32) []byte { return binary.NativeEndian.AppendUint32(b, v) }

// PrefixRange returns the first and last addresses of p (masked first):
// the Key and KeyEnd of p in a concatenated interval set.
func PrefixRange(p netip.Prefix) (first, last netip.Addr) {
	p = p.Masked()
	first = p.Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	last, _ = netip.AddrFromSlice(b)
	return first, last
}

// PrefixElems returns the elements of p in a plain interval set: its first
// address, and the address after its last flagged IntervalEnd, which the
// kernel reads as the range's end. A prefix that reaches the top of the
// address space has no end element.
func PrefixElems(p netip.Prefix) []Elem {
	first, last := PrefixRange(p)
	elems := []Elem{{Key: AppendAddr(nil, first)}}
	if next := last.Next(); next.IsValid() {
		elems = append(elems, Elem{Key: AppendAddr(nil, next), IntervalEnd: true})
	}
	return elems
}
