package nftables

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
)

// TestSpecsMatchSkeleton: the spec table agrees with every set and map the
// skeleton declares, in both families: the kind (a verdict map's type ends
// in "verdict"), the number of key and value fields, and the interval and
// dynamic flags.
func TestSpecsMatchSkeleton(t *testing.T) {
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		cfg := goldenConfig(f)
		sk := newSkeleton(proxier.MakePlan(cfg, &proxier.State{Family: f}), []affinityKey{{proxier.TCP, 600}, {proxier.UDP, 10800}})
		type decl struct {
			name, typ string
			flags     []knftables.SetFlag
			isMap     bool
		}
		var decls []decl
		for _, s := range sk.sets {
			decls = append(decls, decl{s.Name, s.Type + s.TypeOf, s.Flags, false})
		}
		for _, m := range sk.maps {
			decls = append(decls, decl{m.Name, m.Type + m.TypeOf, m.Flags, true})
		}
		for _, d := range decls {
			sp, ok := specOf(d.name)
			if !ok {
				t.Errorf("%v: %s has no spec", f, d.name)
				continue
			}
			keyType, valueType, _ := strings.Cut(d.typ, " : ")
			want := kindSet
			switch {
			case d.isMap && valueType == "verdict":
				want = kindVMap
			case d.isMap:
				want = kindMap
			}
			if sp.kind != want {
				t.Errorf("%v: %s (%s): kind %d, want %d", f, d.name, d.typ, sp.kind, want)
			}
			// "numgen random mod 1" is one field of the endpoints maps' keys.
			if n := strings.Count(keyType, " . ") + 1; n != len(sp.key) {
				t.Errorf("%v: %s (%s): %d key fields, want %d", f, d.name, d.typ, len(sp.key), n)
			}
			if want == kindMap && strings.Count(valueType, " . ")+1 != len(sp.value) {
				t.Errorf("%v: %s (%s): %d value fields", f, d.name, d.typ, len(sp.value))
			}
			if got := slices.Contains(d.flags, knftables.IntervalFlag); got != sp.interval {
				t.Errorf("%v: %s: interval %v, spec says %v", f, d.name, got, sp.interval)
			}
			if got := slices.Contains(d.flags, knftables.DynamicFlag); got != sp.dynamic {
				t.Errorf("%v: %s: dynamic %v, spec says %v", f, d.name, got, sp.dynamic)
			}
		}
	}
}

// TestAtomText: each field's nft text, and back.
func TestAtomText(t *testing.T) {
	for _, c := range []struct {
		f    field
		a    atom
		text string
	}{
		{fAddr, addrAtom(netip.MustParseAddr("10.96.0.1")), "10.96.0.1"},
		{fAddr, addrAtom(netip.MustParseAddr("fd00:10:96::1")), "fd00:10:96::1"},
		{fProto, protoAtom(proxier.TCP), "tcp"},
		{fProto, protoAtom(proxier.UDP), "udp"},
		{fProto, protoAtom(proxier.SCTP), "sctp"},
		{fPort, portAtom(30080), "30080"},
		{fIndex, indexAtom(12), "12"},
		{fPrefix, prefixAtom(netip.MustParsePrefix("10.96.0.0/12")), "10.96.0.0/12"},
		{fPrefix, prefixAtom(netip.MustParsePrefix("2001:db8::/64")), "2001:db8::/64"},
		// A single address, as the firewall's node entry has it.
		{fPrefix, prefixAtom(netip.MustParsePrefix("198.51.100.1/32")), "198.51.100.1"},
	} {
		if got := string(appendAtom(nil, c.f, c.a)); got != c.text {
			t.Errorf("field %d %+v: %q, want %q", c.f, c.a, got, c.text)
		}
		back, err := parseAtom(c.f, c.text)
		if err != nil || back != c.a {
			t.Errorf("parse %q as field %d: %+v, %v; want %+v", c.text, c.f, back, err, c.a)
		}
	}
	for _, c := range []struct {
		f    field
		text string
	}{{fAddr, "10.96.0"}, {fProto, "icmp"}, {fPort, "65536"}, {fIndex, "-1"}, {fPrefix, "10.0.0.0/33"}} {
		if a, err := parseAtom(c.f, c.text); err == nil {
			t.Errorf("parse %q as field %d: %+v, want an error", c.text, c.f, a)
		}
	}
}
