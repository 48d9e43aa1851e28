package nfnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier/nfnl/nfnltest"
)

// msg is the element message Decode should read back of a batch of
// family IPv4 and table "t".
func msg(typ uint16, flags netlink.HeaderFlags, set string, elems ...nfnltest.Elem) nfnltest.Msg {
	return nfnltest.Msg{Type: typ, Flags: flags, Family: unix.NFPROTO_IPV4, Table: "t", Set: set, Elems: elems}
}

const (
	add = netlink.Request | netlink.Acknowledge | netlink.Create
	del = netlink.Request | netlink.Acknowledge
)

// TestBatchEncoding: each kind of element is encoded as nf_tables reads
// it, and consecutive changes of one set in one direction share a
// message.
func TestBatchEncoding(t *testing.T) {
	k1, k2 := key("10.0.0.1", uint8(unix.IPPROTO_TCP), uint16(80)), key("10.0.0.2", uint8(unix.IPPROTO_UDP), uint16(53))
	for _, tc := range []struct {
		name  string
		build func(b *Batch)
		want  []nfnltest.Msg
	}{
		{"set elements, one message", func(b *Batch) {
			b.Add("s", Elem{Key: k1})
			b.Add("s", Elem{Key: k2})
		}, []nfnltest.Msg{msg(unix.NFT_MSG_NEWSETELEM, add, "s", nfnltest.Elem{Key: k1}, nfnltest.Elem{Key: k2})}},
		{"map data and verdicts", func(b *Batch) {
			b.Add("m", Elem{Key: k1, Value: key("10.1.0.1", uint16(8080))})
			b.Add("v", Elem{Key: k1, Verdict: Verdict{Kind: Goto, Chain: "lb-x"}})
			b.Add("v", Elem{Key: k2, Verdict: Verdict{Kind: Drop}})
		}, []nfnltest.Msg{
			msg(unix.NFT_MSG_NEWSETELEM, add, "m", nfnltest.Elem{Key: k1, Value: key("10.1.0.1", uint16(8080))}),
			msg(unix.NFT_MSG_NEWSETELEM, add, "v",
				nfnltest.Elem{Key: k1, Verdict: true, Code: 0xfffffffc, Chain: "lb-x"},
				nfnltest.Elem{Key: k2, Verdict: true, Code: 0},
			),
		}},
		{"a deletion sends the key only", func(b *Batch) {
			b.Delete("v", Elem{Key: k1, Verdict: Verdict{Kind: Goto, Chain: "lb-x"}})
			b.Delete("m", Elem{Key: k1, Value: key("10.1.0.1", uint16(8080))})
		}, []nfnltest.Msg{
			msg(unix.NFT_MSG_DELSETELEM, del, "v", nfnltest.Elem{Key: k1}),
			msg(unix.NFT_MSG_DELSETELEM, del, "m", nfnltest.Elem{Key: k1}),
		}},
		{"intervals", func(b *Batch) {
			for _, e := range PrefixElems(netip.MustParsePrefix("10.96.0.0/12")) {
				b.Add("cidrs", e)
			}
			b.Add("ranges", Elem{Key: key("10.0.0.0"), KeyEnd: key("10.0.0.255")})
		}, []nfnltest.Msg{
			msg(unix.NFT_MSG_NEWSETELEM, add, "cidrs", nfnltest.Elem{Key: key("10.96.0.0")}, nfnltest.Elem{Key: key("10.112.0.0"), Flags: unix.NFT_SET_ELEM_INTERVAL_END}),
			msg(unix.NFT_MSG_NEWSETELEM, add, "ranges", nfnltest.Elem{Key: key("10.0.0.0"), KeyEnd: key("10.0.0.255")}),
		}},
		{"direction and set changes start messages, in order", func(b *Batch) {
			b.Add("s", Elem{Key: k1})
			b.Delete("s", Elem{Key: k2})
			b.Flush("s")
			b.Add("s", Elem{Key: k2})
			b.Add("o", Elem{Key: k2})
		}, []nfnltest.Msg{
			msg(unix.NFT_MSG_NEWSETELEM, add, "s", nfnltest.Elem{Key: k1}),
			msg(unix.NFT_MSG_DELSETELEM, del, "s", nfnltest.Elem{Key: k2}),
			msg(unix.NFT_MSG_DELSETELEM, del, "s"),
			msg(unix.NFT_MSG_NEWSETELEM, add, "s", nfnltest.Elem{Key: k2}),
			msg(unix.NFT_MSG_NEWSETELEM, add, "o", nfnltest.Elem{Key: k2}),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBatch(IPv4, "t")
			tc.build(b)
			if b.Err() != nil {
				t.Fatal(b.Err())
			}
			var got []nfnltest.Msg
			for _, m := range b.Messages() {
				got = append(got, nfnltest.Decode(t, m))
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("messages (-want +got):\n%s", d)
			}
		})
	}
}

// TestBatchSplits: a long run of one set is split into messages before an
// attribute's 16-bit length would overflow, every element in order.
func TestBatchSplits(t *testing.T) {
	b := NewBatch(IPv4, "t")
	const n = 10000
	for i := range n {
		b.Add("m", Elem{Key: key("10.96.0.1", uint16(80), uint32(i)), Value: key("10.1.0.1", uint16(8080))})
	}
	msgs := b.Messages()
	if len(msgs) < 3 {
		t.Fatalf("%d elements in %d messages", n, len(msgs))
	}
	next := uint32(0)
	for _, m := range msgs {
		for _, e := range nfnltest.Decode(t, m).Elems {
			if i := binary.NativeEndian.Uint32(e.Key[8:]); i != next {
				t.Fatalf("element %d where %d was due", i, next)
			}
			next++
		}
	}
	if next != n || b.Len() != n {
		t.Errorf("%d elements decoded, Len %d; want %d", next, b.Len(), n)
	}
}

func TestBatchRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		e    Elem
		want string
	}{
		{"no key", Elem{}, "without a key"},
		{"long key", Elem{Key: make([]byte, 65)}, "over 64 bytes"},
		{"data and verdict", Elem{Key: key("10.0.0.1"), Value: key("10.0.0.2"), Verdict: Verdict{Kind: Drop}}, "both"},
		{"unknown verdict", Elem{Key: key("10.0.0.1"), Verdict: Verdict{Kind: Goto + 1}}, "verdict"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBatch(IPv4, "t")
			b.Add("s", tc.e)
			b.Add("s", Elem{Key: key("10.0.0.9")})
			if err := b.Err(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestFields(t *testing.T) {
	for _, tc := range []struct {
		got, want []byte
	}{
		{AppendAddr(nil, netip.MustParseAddr("10.1.2.3")), []byte{10, 1, 2, 3}},
		{AppendAddr(nil, netip.MustParseAddr("fd00::1")), []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
		{AppendProto(nil, unix.IPPROTO_SCTP), []byte{132, 0, 0, 0}},
		{AppendPort(nil, 8080), []byte{0x1f, 0x90, 0, 0}},
		{AppendUint32(nil, 7), binary.NativeEndian.AppendUint32(nil, 7)},
	} {
		if string(tc.got) != string(tc.want) {
			t.Errorf("encoded %v, want %v", tc.got, tc.want)
		}
	}
}

func TestPrefixes(t *testing.T) {
	for _, tc := range []struct {
		prefix      string
		first, last string
		elems       []nfnltest.Elem
	}{
		{"10.96.1.7/16", "10.96.0.0", "10.96.255.255", []nfnltest.Elem{{Key: key("10.96.0.0")}, {Key: key("10.97.0.0"), Flags: 1}}},
		{"192.168.1.1/32", "192.168.1.1", "192.168.1.1", []nfnltest.Elem{{Key: key("192.168.1.1")}, {Key: key("192.168.1.2"), Flags: 1}}},
		{"0.0.0.0/0", "0.0.0.0", "255.255.255.255", []nfnltest.Elem{{Key: key("0.0.0.0")}}},
		{"fd00:96::/112", "fd00:96::", "fd00:96::ffff", []nfnltest.Elem{{Key: key("fd00:96::")}, {Key: key("fd00:96::1:0"), Flags: 1}}},
		{"ffff::/16", "ffff::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", []nfnltest.Elem{{Key: key("ffff::")}}},
	} {
		p := netip.MustParsePrefix(tc.prefix)
		first, last := PrefixRange(p)
		if first.String() != tc.first || last.String() != tc.last {
			t.Errorf("PrefixRange(%s) = %s, %s; want %s, %s", p, first, last, tc.first, tc.last)
		}
		var got []nfnltest.Elem
		for _, e := range PrefixElems(p) {
			got = append(got, nfnltest.Elem{Key: e.Key, Flags: map[bool]uint32{true: 1}[e.IntervalEnd]})
		}
		if d := cmp.Diff(tc.elems, got); d != "" {
			t.Errorf("PrefixElems(%s) (-want +got):\n%s", p, d)
		}
	}
}

func attrs(as ...netlink.Attribute) []byte {
	b, err := netlink.MarshalAttributes(as)
	if err != nil {
		panic(err)
	}
	return b
}

func TestAttr(t *testing.T) {
	b := attrs(
		netlink.Attribute{Type: 1, Data: []byte("svcproxy\x00")},
		netlink.Attribute{Type: 2 | unix.NLA_F_NESTED, Data: attrs(netlink.Attribute{Type: 1, Data: []byte{1, 2, 3}})},
		netlink.Attribute{Type: 3},
	)
	for _, tc := range []struct {
		in   []byte
		typ  uint16
		want string
		ok   bool
	}{
		{b, 1, "svcproxy\x00", true},
		{b, 2, string(attrs(netlink.Attribute{Type: 1, Data: []byte{1, 2, 3}})), true},
		{b, 3, "", true},
		{b, 4, "", false},
		{b[:7], 1, "", false}, // truncated
		{nil, 1, "", false},
	} {
		got, ok := Attr(tc.in, tc.typ)
		if string(got) != tc.want || ok != tc.ok {
			t.Errorf("Attr(%d) = %q, %v; want %q, %v", tc.typ, got, ok, tc.want, tc.ok)
		}
	}
	if n := testing.AllocsPerRun(100, func() { Attr(b, 3) }); n != 0 {
		t.Errorf("Attr allocates %v times", n)
	}
}

func TestParse(t *testing.T) {
	gen := netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_NEWGEN)},
		Data: append(header(Unspec, 0), attrs(
			netlink.Attribute{Type: unix.NFTA_GEN_ID, Data: binary.BigEndian.AppendUint32(nil, 42)},
			netlink.Attribute{Type: unix.NFTA_GEN_PROC_PID, Data: binary.BigEndian.AppendUint32(nil, 7)},
			netlink.Attribute{Type: unix.NFTA_GEN_PROC_NAME, Data: []byte("nft\x00")},
		)...),
	}
	chain := netlink.Message{
		Header: netlink.Header{Type: msgType(unix.NFT_MSG_NEWCHAIN)},
		Data:   append(header(IPv6, 0), attrs(netlink.Attribute{Type: unix.NFTA_CHAIN_TABLE, Data: []byte("t\x00")})...),
	}
	other := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | 1)}, Data: header(IPv4, 0)}
	for _, tc := range []struct {
		m      netlink.Message
		msg    uint16
		family Family
		ok     bool
		gen    Gen
		genOK  bool
	}{
		{gen, unix.NFT_MSG_NEWGEN, Unspec, true, Gen{ID: 42, PID: 7, Proc: "nft"}, true},
		{chain, unix.NFT_MSG_NEWCHAIN, IPv6, true, Gen{}, false},
		{other, 0, 0, false, Gen{}, false},
	} {
		msg, f, _, ok := Parse(tc.m)
		g, genOK := ParseGen(tc.m)
		if got, want := fmt.Sprint(msg, f, ok, g, genOK), fmt.Sprint(tc.msg, tc.family, tc.ok, tc.gen, tc.genOK); got != want {
			t.Errorf("Parse, ParseGen = %s; want %s", got, want)
		}
	}
}
