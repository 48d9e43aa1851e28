package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
)

// Element-only partial syncs go over a long-lived netlink socket, in one
// nf_tables batch (atomic, like an nft -f transaction), instead of starting
// nft: the nft process costs about 10 ms per sync, the batch well under one.
// Everything else (chains, rules, full syncs) goes through nft.

type field int

const (
	fAddr  field = iota
	fProto       // inet_proto
	fPort        // inet_service
	fIndex       // the numgen random index (a 32-bit integer in host order)
)

// setLayout is the key (and, for data maps, value) layout of a set or map
// of our table; verdict reports a verdict map; ok is false for sets netlink
// does not write here (the interval set).
func setLayout(name string) (key, value []field, verdict, ok bool) {
	switch {
	case name == sClusterIPs || name == sNodePortIPs:
		return []field{fAddr}, nil, false, true
	case name == sFirewallDests:
		return []field{fAddr, fProto, fPort}, nil, false, true
	case name == sHairpin:
		return []field{fAddr, fAddr}, nil, false, true
	case strings.HasPrefix(name, "affinity-dests-"):
		return []field{fAddr, fPort}, nil, false, true
	case name == mServiceIPs || name == mNoEndpointServices || name == poolIP.countMap() || name == poolIPLocal.countMap():
		return []field{fAddr, fProto, fPort}, nil, true, true
	case name == mServiceNodePorts || name == mNoEndpointNodePort || name == poolNP.countMap() || name == poolNPLocal.countMap():
		return []field{fProto, fPort}, nil, true, true
	}
	for _, p := range pools {
		for _, proto := range protocols {
			if name == p.endpointsMap(proto) {
				if p.byPort {
					return []field{fPort, fIndex}, []field{fAddr, fPort}, false, true
				}
				return []field{fAddr, fPort, fIndex}, []field{fAddr, fPort}, false, true
			}
		}
	}
	return nil, nil, false, false
}

// encode packs text components as nf_tables registers do: each field
// padded to a multiple of 4 bytes.
func encode(layout []field, parts []string) ([]byte, error) {
	if len(layout) != len(parts) {
		return nil, fmt.Errorf("%d components for %d fields", len(parts), len(layout))
	}
	var out []byte
	for i, f := range layout {
		switch f {
		case fAddr:
			a, err := netip.ParseAddr(parts[i])
			if err != nil {
				return nil, err
			}
			out = append(out, a.AsSlice()...)
		case fProto:
			p, ok := map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}[parts[i]]
			if !ok {
				return nil, fmt.Errorf("protocol %q", parts[i])
			}
			out = append(out, p, 0, 0, 0)
		case fPort:
			n, err := strconv.ParseUint(parts[i], 10, 16)
			if err != nil {
				return nil, err
			}
			out = binary.BigEndian.AppendUint16(out, uint16(n))
			out = append(out, 0, 0)
		case fIndex:
			n, err := strconv.ParseUint(parts[i], 10, 32)
			if err != nil {
				return nil, err
			}
			out = binary.NativeEndian.AppendUint32(out, uint32(n))
		}
	}
	return out, nil
}

// elemOp is one element to add or delete.
type elemOp struct {
	add bool
	e   elem
}

// netlinkWritable reports whether every op can go over netlink.
func netlinkWritable(ops []elemOp) bool {
	for _, op := range ops {
		if _, _, _, ok := setLayout(op.e.set); !ok {
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
}

func newElemWriter(f proxier.IPFamily) *elemWriter {
	w := &elemWriter{family: unix.NFPROTO_IPV4}
	if f == proxier.IPv6 {
		w.family = unix.NFPROTO_IPV6
	}
	return w
}

func (w *elemWriter) message(op elemOp) (netlink.Message, error) {
	keyLayout, valLayout, verdict, _ := setLayout(op.e.set)
	key, err := encode(keyLayout, op.e.key)
	if err != nil {
		return netlink.Message{}, fmt.Errorf("%s key %v: %w", op.e.set, op.e.key, err)
	}
	ae := netlink.NewAttributeEncoder()
	ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
		ae.Bytes(unix.NFTA_DATA_VALUE, key)
		return nil
	})
	if op.add {
		switch {
		case verdict:
			code, chain, err := parseVerdict(op.e.value)
			if err != nil {
				return netlink.Message{}, err
			}
			ae.Nested(unix.NFTA_SET_ELEM_DATA, func(ae *netlink.AttributeEncoder) error {
				ae.Nested(unix.NFTA_DATA_VERDICT, func(ae *netlink.AttributeEncoder) error {
					// Big endian, as every nf_tables integer attribute.
					ae.Bytes(unix.NFTA_VERDICT_CODE, binary.BigEndian.AppendUint32(nil, code))
					if chain != "" {
						ae.String(unix.NFTA_VERDICT_CHAIN, chain)
					}
					return nil
				})
				return nil
			})
		case valLayout != nil:
			val, err := encode(valLayout, op.e.value)
			if err != nil {
				return netlink.Message{}, fmt.Errorf("%s value %v: %w", op.e.set, op.e.value, err)
			}
			ae.Nested(unix.NFTA_SET_ELEM_DATA, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(unix.NFTA_DATA_VALUE, val)
				return nil
			})
		}
	}
	elemAttrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	le := netlink.NewAttributeEncoder()
	le.String(unix.NFTA_SET_ELEM_LIST_TABLE, TableName)
	le.String(unix.NFTA_SET_ELEM_LIST_SET, op.e.set)
	le.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
		ae.Do(unix.NFTA_LIST_ELEM|unix.NLA_F_NESTED, func() ([]byte, error) { return elemAttrs, nil })
		return nil
	})
	data, err := le.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	typ, flags := uint16(unix.NFT_MSG_DELSETELEM), netlink.Request|netlink.Acknowledge
	if op.add {
		typ, flags = unix.NFT_MSG_NEWSETELEM, netlink.Request|netlink.Acknowledge|netlink.Create
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ), Flags: flags},
		Data:   append([]byte{w.family, unix.NFNETLINK_V0, 0, 0}, data...),
	}, nil
}

func parseVerdict(v []string) (uint32, string, error) {
	f := strings.Fields(strings.Join(v, " "))
	switch {
	case len(f) == 1 && f[0] == "drop":
		return 0, "", nil // NF_DROP
	case len(f) == 2 && f[0] == "goto":
		return uint32(0xfffffffc), f[1], nil // NFT_GOTO (-4)
	case len(f) == 2 && f[0] == "jump":
		return uint32(0xfffffffd), f[1], nil // NFT_JUMP (-3)
	}
	return 0, "", fmt.Errorf("verdict %q", strings.Join(v, " "))
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
	msgs := []netlink.Message{batch(unix.NFNL_MSG_BATCH_BEGIN)}
	for _, op := range ops {
		m, err := w.message(op)
		if err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	msgs = append(msgs, batch(unix.NFNL_MSG_BATCH_END))
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
	}
}
