package nftables_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// The interpreter's values: the types of set keys, map values and
// expressions, typed literals (single values, or ranges where intervals
// and prefixes allow them), and verdicts.

// nftType is the type of one component of a key, a value or an expression.
type nftType string

// The types the interpreter knows.
const (
	tAddr4   nftType = "ipv4_addr"
	tAddr6   nftType = "ipv6_addr"
	tProto   nftType = "inet_proto"
	tPort    nftType = "inet_service"
	tInt     nftType = "integer"
	tMark    nftType = "mark"
	tIfname  nftType = "ifname"
	tVerdict nftType = "verdict"
)

// nftVal is a typed value, or in an interval set or a prefix match a range
// of them: addresses [lo, hi], numbers [n, m], interface names s (a
// trailing * matches every name with that prefix).
type nftVal struct {
	typ    nftType
	lo, hi netip.Addr
	n, m   uint64
	s      string
}

func addrVal(a netip.Addr) nftVal {
	t := tAddr4
	if a.Is6() {
		t = tAddr6
	}
	return nftVal{typ: t, lo: a, hi: a}
}

func numVal(t nftType, n uint64) nftVal { return nftVal{typ: t, n: n, m: n} }

// contains reports whether v (a range) holds the single value x.
func (v nftVal) contains(x nftVal) bool {
	switch {
	case v.typ != x.typ:
		return false
	case v.typ == tAddr4 || v.typ == tAddr6:
		return v.lo.Compare(x.lo) <= 0 && x.lo.Compare(v.hi) <= 0
	case v.typ == tIfname:
		if p, ok := strings.CutSuffix(v.s, "*"); ok {
			return strings.HasPrefix(x.s, p)
		}
		return v.s == x.s
	}
	return v.n <= x.n && x.n <= v.m
}

// overlaps reports whether two ranges share a value.
func (v nftVal) overlaps(x nftVal) bool {
	if v.typ == tAddr4 || v.typ == tAddr6 {
		return v.lo.Compare(x.hi) <= 0 && x.lo.Compare(v.hi) <= 0
	}
	return v.n <= x.m && x.n <= v.m
}

func (v nftVal) String() string {
	switch {
	case v.typ == tAddr4 || v.typ == tAddr6:
		if v.lo == v.hi {
			return v.lo.String()
		}
		return v.lo.String() + "-" + v.hi.String()
	case v.typ == tIfname:
		return strconv.Quote(v.s)
	case v.n == v.m:
		return strconv.FormatUint(v.n, 10)
	}
	return fmt.Sprintf("%d-%d", v.n, v.m)
}

var protoNumbers = map[string]uint64{"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}

// parseVal parses a literal of type t; ranged allows a prefix or an a-b
// range where one value would do.
func parseVal(t nftType, s string, ranged bool) (nftVal, error) {
	v := nftVal{typ: t}
	switch t {
	case tAddr4, tAddr6:
		lo, hi, isRange := strings.Cut(s, "-")
		var err error
		switch {
		case strings.Contains(s, "/"):
			var p netip.Prefix
			if p, err = netip.ParsePrefix(s); err == nil {
				v.lo, v.hi = p.Masked().Addr(), lastAddr(p)
				isRange = p.Bits() < p.Addr().BitLen()
			}
		case isRange:
			if v.lo, err = netip.ParseAddr(lo); err == nil {
				v.hi, err = netip.ParseAddr(hi)
			}
		default:
			v.lo, err = netip.ParseAddr(s)
			v.hi = v.lo
		}
		if err != nil {
			return v, err
		}
		if v.lo.Is4() != (t == tAddr4) || v.hi.Is4() != (t == tAddr4) {
			return v, fmt.Errorf("%s is not of type %s", s, t)
		}
		if isRange && !ranged {
			return v, fmt.Errorf("range %s where one %s is wanted", s, t)
		}
		if v.hi.Less(v.lo) {
			return v, fmt.Errorf("empty range %s", s)
		}
		return v, nil
	case tIfname:
		q, err := strconv.Unquote(s)
		v.s = q
		return v, err
	case tVerdict:
		return v, fmt.Errorf("a verdict is not a value")
	}
	lo, hi, isRange := strings.Cut(s, "-")
	if isRange && !ranged {
		return v, fmt.Errorf("range %s where one %s is wanted", s, t)
	}
	var err error
	if v.n, err = parseNum(t, lo); err != nil {
		return v, err
	}
	v.m = v.n
	if isRange {
		if v.m, err = parseNum(t, hi); err == nil && v.m < v.n {
			err = fmt.Errorf("empty range %s", s)
		}
	}
	return v, err
}

func parseNum(t nftType, s string) (uint64, error) {
	if n, ok := protoNumbers[s]; ok && t == tProto {
		return n, nil
	}
	bits := map[nftType]int{tProto: 8, tPort: 16, tMark: 32, tInt: 32}[t]
	if bits == 0 {
		return 0, fmt.Errorf("no literal of type %s", t)
	}
	return strconv.ParseUint(s, 0, bits)
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// verdict is a verdict statement or a verdict map's value: accept, drop,
// reject, return, continue, or jump/goto a chain.
type verdict struct {
	kind  string
	chain string
}

func (v verdict) String() string { return strings.TrimSpace(v.kind + " " + v.chain) }

func parseVerdict(words []string) (verdict, error) {
	switch {
	case len(words) == 1 && slices.Contains([]string{"accept", "drop", "reject", "return", "continue"}, words[0]):
		return verdict{kind: words[0]}, nil
	case len(words) == 2 && (words[0] == "jump" || words[0] == "goto"):
		return verdict{kind: words[0], chain: words[1]}, nil
	}
	return verdict{}, fmt.Errorf("unknown verdict %q", strings.Join(words, " "))
}
