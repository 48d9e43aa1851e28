package nftables

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
)

// decodedMsg is what a test reads back of one element message.
type decodedMsg struct {
	typ   uint16
	set   string
	elems int
}

func decodeElemMsg(t *testing.T, m netlink.Message) decodedMsg {
	t.Helper()
	d := decodedMsg{typ: uint16(m.Header.Type) & 0xff}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			if ad.String() != TableName {
				t.Errorf("table %q", ad.String())
			}
		case unix.NFTA_SET_ELEM_LIST_SET:
			d.set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					if nd.Type() != unix.NFTA_LIST_ELEM {
						t.Errorf("element attribute type %d", nd.Type())
					}
					d.elems++
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return d
}

// TestElemMessages: element ops are packed into one message per run of the
// same set and direction, split before an attribute would overflow, in order.
func TestElemMessages(t *testing.T) {
	ep := func(i int) elem {
		return elem{set: poolIP.endpointsMap("tcp"), key: tupleOf(addrAtom(netip.MustParseAddr("10.96.0.1")), portAtom(80), indexAtom(i)),
			value: [maxValue]atom{addrAtom(netip.MustParseAddr("10.1.0.1")), portAtom(8080)}}
	}
	svc := elem{set: mServiceIPs, key: tupleOf(addrAtom(netip.MustParseAddr("10.96.0.1")), protoAtom(proxier.TCP), portAtom(80)), verdict: gotoChain("lb-x")}
	var ops []elemOp
	for i := 0; i < 3000; i++ {
		ops = append(ops, elemOp{add: true, e: ep(i)})
	}
	ops = append(ops, elemOp{e: svc}, elemOp{add: true, e: svc}, elemOp{e: ep(0)})
	b, err := newElemWriter(proxier.IPv4, nil).encode(ops)
	if err != nil {
		t.Fatal(err)
	}
	msgs := b.Messages()
	var got []decodedMsg
	total := 0
	for _, m := range msgs {
		d := decodeElemMsg(t, m)
		got = append(got, d)
		if d.set == poolIP.endpointsMap("tcp") && d.typ == unix.NFT_MSG_NEWSETELEM {
			total += d.elems
		}
		if len(m.Data) > 1<<16 {
			t.Errorf("message of %d bytes", len(m.Data))
		}
	}
	if total != 3000 || len(got) < 5 {
		t.Fatalf("3000 endpoint adds in %d messages (%d elements): %+v", len(got), total, got)
	}
	tail := got[len(got)-3:]
	want := []decodedMsg{{unix.NFT_MSG_DELSETELEM, mServiceIPs, 1}, {unix.NFT_MSG_NEWSETELEM, mServiceIPs, 1}, {unix.NFT_MSG_DELSETELEM, poolIP.endpointsMap("tcp"), 1}}
	for i := range want {
		if tail[i] != want[i] {
			t.Errorf("message %d: %+v, want %+v", len(got)-3+i, tail[i], want[i])
		}
	}
}

// TestAppendElemVerdict: a goto verdict is encoded as nf_tables wants it.
func TestAppendElemVerdict(t *testing.T) {
	b, err := newElemWriter(proxier.IPv4, nil).encode([]elemOp{{add: true, e: elem{set: mServiceIPs,
		key: tupleOf(addrAtom(netip.MustParseAddr("10.0.0.1")), protoAtom(proxier.UDP), portAtom(53)), verdict: gotoChain("lb-y")}}})
	if err != nil {
		t.Fatal(err)
	}
	msgs := b.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	// The message's elements: one NFTA_LIST_ELEM.
	ad, _ := netlink.NewAttributeDecoder(msgs[0].Data[4:])
	var elems []byte
	for ad.Next() {
		if ad.Type() == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			elems = ad.Bytes()
		}
	}
	ad, _ = netlink.NewAttributeDecoder(elems)
	var key []byte
	var code uint32
	var chain string
	for ad.Next() {
		ad.Nested(func(e *netlink.AttributeDecoder) error {
			for e.Next() {
				switch e.Type() {
				case unix.NFTA_SET_ELEM_KEY:
					e.Nested(func(k *netlink.AttributeDecoder) error {
						for k.Next() {
							key = k.Bytes()
						}
						return nil
					})
				case unix.NFTA_SET_ELEM_DATA:
					e.Nested(func(d *netlink.AttributeDecoder) error {
						for d.Next() {
							d.Nested(func(v *netlink.AttributeDecoder) error {
								for v.Next() {
									switch v.Type() {
									case unix.NFTA_VERDICT_CODE:
										code = binary.BigEndian.Uint32(v.Bytes())
									case unix.NFTA_VERDICT_CHAIN:
										chain = v.String()
									}
								}
								return nil
							})
						}
						return nil
					})
				}
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	wantKey := []byte{10, 0, 0, 1, unix.IPPROTO_UDP, 0, 0, 0, 0, 53, 0, 0}
	if string(key) != string(wantKey) || code != 0xfffffffc || chain != "lb-y" {
		t.Errorf("key %v code %#x chain %q", key, code, chain)
	}
}
