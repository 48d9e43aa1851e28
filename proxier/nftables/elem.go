package nftables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
)

// Elements are typed: each component of a key or value is an atom whose
// meaning the set's field says (an address, a protocol, a port, an index,
// an interval). They become nft text only where text meets nft (DryRun,
// nft transactions) and netlink bytes in the element writer.

// field is the type of one component of an element's key or value.
type field uint8

const (
	fAddr   field = iota // ipv4_addr or ipv6_addr
	fProto               // inet_proto
	fPort                // inet_service
	fIndex               // the numgen random index (a 32-bit integer in host order)
	fPrefix              // an address interval (interval sets only)
)

// atom is one component: addr for fAddr and fPrefix, num for the protocol
// number, the port, the index or the prefix length.
// It holds no pointer and no padding, so that the index's maps of
// hundreds of thousands of elements hash and compare keys as plain memory
// and the garbage collector need not scan them.
type atom struct {
	a16 [16]byte
	// bits is 32 for an IPv4 address, 128 for IPv6, 0 for none.
	bits uint32
	num  uint32
}

func addrAtom(a netip.Addr) atom {
	if !a.IsValid() {
		return atom{}
	}
	return atom{a16: a.As16(), bits: uint32(a.BitLen())}
}

// addr is a's address (the zero Addr when it has none).
func (a atom) addr() netip.Addr {
	switch a.bits {
	case 32:
		return netip.AddrFrom16(a.a16).Unmap()
	case 128:
		return netip.AddrFrom16(a.a16)
	}
	return netip.Addr{}
}
func portAtom(p int32) atom { return atom{num: uint32(p)} }
func indexAtom(i int) atom  { return atom{num: uint32(i)} }
func prefixAtom(p netip.Prefix) atom {
	a := addrAtom(p.Addr())
	a.num = uint32(p.Bits())
	return a
}
func protoAtom(p proxier.Protocol) atom { return atom{num: uint32(protoNumber(p))} }

func protoNumber(p proxier.Protocol) uint8 {
	switch p {
	case proxier.UDP:
		return unix.IPPROTO_UDP
	case proxier.SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

// maxKey is the most components a key has (an affinity set's five).
const maxKey = 5

// tuple is a key or value; comparable, so that keys index maps. Unused
// components are zero.
type tuple [maxKey]atom

func tupleOf(atoms ...atom) tuple {
	var t tuple
	copy(t[:], atoms)
	return t
}

// verdict is a verdict map's value: drop, or goto (jump) chain.
type verdict struct {
	chain string // "": drop
	jump  bool
}

func gotoChain(c string) verdict { return verdict{chain: c} }
func jumpChain(c string) verdict { return verdict{chain: c, jump: true} }

var drop = verdict{}

func (v verdict) String() string {
	switch {
	case v.chain == "":
		return "drop"
	case v.jump:
		return "jump " + v.chain
	}
	return "goto " + v.chain
}

// elem is one set or map element: its set, key and (maps) value or
// (verdict maps) verdict.
type elem struct {
	set     string
	key     tuple
	value   [maxValue]atom
	verdict verdict
}

// maxValue is the most components a map's value has (address . port).
const maxValue = 2

// elemID identifies an element within the table: its set and key.
type elemID struct {
	set string
	key tuple
}

func (e elem) id() elemID { return elemID{e.set, e.key} }

// setKind tells a set from a data map and a verdict map.
type setKind uint8

const (
	kindSet setKind = iota
	kindMap
	kindVMap
)

// setSpec is what the elements of a set or map look like: its kind, key
// fields and (data maps) value fields. interval sets' elements are written
// through nft only (nft merges and splits intervals); dynamic maps are
// filled by the packet path.
type setSpec struct {
	kind       setKind
	key, value []field
	interval   bool
	dynamic    bool
}

var (
	addrProtoPort = []field{fAddr, fProto, fPort}
	protoPort     = []field{fProto, fPort}
	addrPort      = []field{fAddr, fPort}
	// affinityKeyFields is an affinity set's key.
	affinityKeyFields = []field{fAddr, fAddr, fPort, fAddr, fPort}
)

// fixedSpecs are the specs of the sets and maps whose names do not depend
// on the Services (all but the affinity ones).
var fixedSpecs = func() map[string]setSpec {
	m := map[string]setSpec{
		sClusterIPs:            {kind: kindSet, key: []field{fAddr}},
		sServiceCIDRs:          {kind: kindSet, key: []field{fPrefix}, interval: true},
		sNodePortIPs:           {kind: kindSet, key: []field{fAddr}},
		sFirewallDests:         {kind: kindSet, key: addrProtoPort},
		sFirewallAllow:         {kind: kindSet, key: []field{fAddr, fProto, fPort, fPrefix}, interval: true},
		sHairpin:               {kind: kindSet, key: []field{fAddr, fAddr}},
		mAffinityPick:          {kind: kindVMap, key: addrProtoPort},
		mAffinityPickLocal:     {kind: kindVMap, key: addrProtoPort},
		mServiceIPs:            {kind: kindVMap, key: addrProtoPort},
		mNoEndpointServices:    {kind: kindVMap, key: addrProtoPort},
		mServiceNodePorts:      {kind: kindVMap, key: protoPort},
		mNoEndpointNodePort:    {kind: kindVMap, key: protoPort},
		poolIP.countMap():      {kind: kindVMap, key: addrProtoPort},
		poolIPLocal.countMap(): {kind: kindVMap, key: addrProtoPort},
		poolNP.countMap():      {kind: kindVMap, key: protoPort},
		poolNPLocal.countMap(): {kind: kindVMap, key: protoPort},
	}
	for _, p := range pools {
		for _, proto := range protocols {
			// An endpoint map: [daddr .] dport . index → addr . port.
			key := []field{fAddr, fPort, fIndex}
			if p.byPort {
				key = []field{fPort, fIndex}
			}
			m[p.endpointsMap(proto)] = setSpec{kind: kindMap, key: key, value: addrPort}
		}
	}
	return m
}()

// specOf is the spec of set or map name of our table; ok is false for a
// name the layout does not have.
func specOf(name string) (setSpec, bool) {
	if s, ok := fixedSpecs[name]; ok {
		return s, true
	}
	switch {
	case isAffinitySet(name):
		// client . daddr . dport . endpoint . port.
		return setSpec{kind: kindSet, key: affinityKeyFields, dynamic: true}, true
	case strings.HasPrefix(name, affinityDestsPrefix):
		// daddr . dport → goto the record chain.
		return setSpec{kind: kindVMap, key: addrPort}, true
	}
	return setSpec{}, false
}

// netlinkWrites reports whether the element writer writes set name's
// elements: every set of the layout but the interval ones.
func netlinkWrites(name string) bool {
	s, ok := specOf(name)
	return ok && !s.interval
}

// appendAtom appends a's nft text as field f.
func appendAtom(b []byte, f field, a atom) []byte {
	switch f {
	case fAddr:
		return a.addr().AppendTo(b)
	case fProto:
		return append(b, protoName(uint8(a.num))...)
	case fPrefix:
		b = a.addr().AppendTo(b)
		if int(a.num) == a.addr().BitLen() {
			// A single address.
			return b
		}
		return strconv.AppendUint(append(b, '/'), uint64(a.num), 10)
	}
	return strconv.AppendUint(b, uint64(a.num), 10)
}

func protoName(n uint8) string {
	switch n {
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	case unix.IPPROTO_TCP:
		return "tcp"
	}
	return strconv.Itoa(int(n))
}

// appendTuple appends t's components as fields say, joined by " . ".
func appendTuple(b []byte, fields []field, t []atom) []byte {
	for i, f := range fields {
		if i > 0 {
			b = append(b, " . "...)
		}
		b = appendAtom(b, f, t[i])
	}
	return b
}

// texts is t's components as nft text, one string each.
func texts(fields []field, t []atom) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = string(appendAtom(nil, f, t[i]))
	}
	return out
}

// keyText is e's key as nft writes it.
func (e elem) keyText(s setSpec) string { return string(appendTuple(nil, s.key, e.key[:])) }

// appendText appends e as an element of an nft add-element command: key,
// and " : value" for maps.
func (e elem) appendText(b []byte, s setSpec) []byte {
	b = appendTuple(b, s.key, e.key[:])
	switch s.kind {
	case kindVMap:
		b = append(append(b, " : "...), e.verdict.String()...)
	case kindMap:
		b = appendTuple(append(b, " : "...), s.value, e.value[:])
	}
	return b
}

// mustSpec is specOf for the sets the layout writes; a name it lacks is a
// bug in the layout.
func mustSpec(name string) setSpec {
	s, ok := specOf(name)
	if !ok {
		panic(fmt.Sprintf("nftables: no spec for set %q", name))
	}
	return s
}

// parseAtom reads field f from nft text (as nft lists elements).
func parseAtom(f field, s string) (atom, error) {
	switch f {
	case fAddr:
		a, err := netip.ParseAddr(s)
		return addrAtom(a), err
	case fProto:
		for _, p := range []proxier.Protocol{proxier.TCP, proxier.UDP, proxier.SCTP} {
			if s == p.Lower() {
				return protoAtom(p), nil
			}
		}
		return atom{}, fmt.Errorf("protocol %q", s)
	case fPrefix:
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return atom{}, err
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		return prefixAtom(p), nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if f == fPort && n > 0xffff {
		err = fmt.Errorf("port %q", s)
	}
	return atom{num: uint32(n)}, err
}

// parseTuple reads components from nft text as fields say.
func parseTuple(fields []field, parts []string) (tuple, error) {
	var t tuple
	if len(parts) != len(fields) {
		return t, fmt.Errorf("%d components for %d fields", len(parts), len(fields))
	}
	for i, f := range fields {
		a, err := parseAtom(f, parts[i])
		if err != nil {
			return t, err
		}
		t[i] = a
	}
	return t, nil
}
