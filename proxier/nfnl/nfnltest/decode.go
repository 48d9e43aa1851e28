package nfnltest

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Msg is what a test reads back of one nf_tables element message
// (NEWSETELEM or DELSETELEM), decoded with netlink's generic attribute
// decoder rather than the encoder under test.
type Msg struct {
	Type   uint16 // NFT_MSG_*, without the subsystem
	Flags  netlink.HeaderFlags
	Family uint8 // NFPROTO_*
	Table  string
	Set    string
	Elems  []Elem
}

// Elem is one element of a Msg. Verdict says the element carries a
// verdict (Code, and Chain for jump and goto) rather than data (Value).
type Elem struct {
	Flags   uint32
	Key     []byte
	KeyEnd  []byte
	Value   []byte
	Code    uint32
	Chain   string
	Verdict bool
}

// nftaSetElemKeyEnd is NFTA_SET_ELEM_KEY_END (Linux 5.6), which x/sys
// does not name.
const nftaSetElemKeyEnd = 10

// Decode reads element message m. It fails the test on a message netlink
// cannot parse, and reports one over 64 KiB or one whose list holds
// anything but elements.
func Decode(t testing.TB, m netlink.Message) Msg {
	t.Helper()
	if len(m.Data) > 1<<16 {
		t.Errorf("message of %d bytes", len(m.Data))
	}
	if len(m.Data) < 4 {
		t.Fatalf("message of %d bytes has no nfgenmsg", len(m.Data))
	}
	d := Msg{Type: uint16(m.Header.Type) & 0xff, Flags: m.Header.Flags, Family: m.Data[0]}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			d.Table = ad.String()
		case unix.NFTA_SET_ELEM_LIST_SET:
			d.Set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						t.Errorf("element attribute type %d", list.Type())
					}
					list.Nested(func(e *netlink.AttributeDecoder) error {
						d.Elems = append(d.Elems, decodeElem(e))
						return nil
					})
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

func decodeElem(ad *netlink.AttributeDecoder) Elem {
	var e Elem
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_FLAGS:
			e.Flags = binary.BigEndian.Uint32(ad.Bytes())
		case unix.NFTA_SET_ELEM_KEY:
			e.Key = nestedValue(ad)
		case nftaSetElemKeyEnd:
			e.KeyEnd = nestedValue(ad)
		case unix.NFTA_SET_ELEM_DATA:
			ad.Nested(func(data *netlink.AttributeDecoder) error {
				for data.Next() {
					switch data.Type() {
					case unix.NFTA_DATA_VALUE:
						e.Value = data.Bytes()
					case unix.NFTA_DATA_VERDICT:
						e.Verdict = true
						data.Nested(func(v *netlink.AttributeDecoder) error {
							decodeVerdict(v, &e)
							return nil
						})
					}
				}
				return nil
			})
		}
	}
	return e
}

func decodeVerdict(v *netlink.AttributeDecoder, e *Elem) {
	for v.Next() {
		switch v.Type() {
		case unix.NFTA_VERDICT_CODE:
			e.Code = binary.BigEndian.Uint32(v.Bytes())
		case unix.NFTA_VERDICT_CHAIN:
			e.Chain = v.String()
		}
	}
}

// nestedValue is the NFTA_DATA_VALUE inside a key or data attribute.
func nestedValue(ad *netlink.AttributeDecoder) []byte {
	var v []byte
	ad.Nested(func(nd *netlink.AttributeDecoder) error {
		for nd.Next() {
			if nd.Type() == unix.NFTA_DATA_VALUE {
				v = nd.Bytes()
			}
		}
		return nil
	})
	return v
}
