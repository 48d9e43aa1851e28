package nftables_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// mustParseNFT parses nft text a test walks, failing the test if it cannot.
func mustParseNFT(t *testing.T, text string) *nftRuleset {
	t.Helper()
	rs, err := parseNFT(text)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// isPinNodeIP tells the node's address in pinRuleset's walks.
func isPinNodeIP(a netip.Addr) bool { return a == netip.MustParseAddr("192.168.0.2") }

// pinRuleset is hand-written nft text for TestNFTInterpreter.
const pinRuleset = `add table ip t { comment "rules for the interpreter test" ; }
add chain ip t raw { type filter hook prerouting priority raw ; }
add chain ip t pre { type nat hook prerouting priority dstnat ; }
add chain ip t late { type nat hook prerouting priority dstnat+10 ; }
add chain ip t out { type nat hook output priority -100 ; }
add chain ip t fwd { type filter hook forward priority filter ; policy drop ; }
add chain ip t in { type filter hook input priority 0 ; }
add chain ip t post { type nat hook postrouting priority srcnat ; }
add chain ip t svc
add chain ip t lb
add chain ip t ret
add set ip t allow { type ipv4_addr . inet_proto . inet_service ; flags interval ; }
add map ip t dests { type ipv4_addr . inet_proto . inet_service : verdict ; }
add map ip t eps { typeof ip daddr . tcp dport . numgen random mod 1 : ip daddr . tcp dport ; }
add map ip t sticky { typeof ip saddr : ip daddr . tcp dport ; flags dynamic,timeout ; timeout 60s ; }
add rule ip t raw ip saddr 192.0.2.0/24 counter drop
add rule ip t pre jump svc
add rule ip t pre iifname "veth*" dnat ip to 10.0.0.9:80 comment "pods"
add rule ip t late ip daddr 203.0.113.9 dnat ip to 10.0.0.8:80
add rule ip t out jump svc
add rule ip t svc ip daddr . meta l4proto . th dport vmap @dests
add rule ip t lb mark set mark or 0x10
add rule ip t lb meta l4proto tcp dnat ip to ip saddr map @sticky
add rule ip t lb dnat ip to ip daddr . tcp dport . numgen random mod 4 map @eps
add rule ip t ret return
add rule ip t ret drop
add rule ip t fwd ct state established,related accept
add rule ip t fwd ct status dnat ip daddr . meta l4proto . th dport @allow update @sticky { ip saddr : ip daddr . th dport } accept
add rule ip t fwd ip daddr 10.0.0.5 reject
add rule ip t in fib daddr type local meta l4proto udp reject
add rule ip t post mark and 0x10 != 0 masquerade fully-random
add element ip t dests { 198.51.100.1 . tcp . 80 : goto lb, 198.51.100.1 . udp . 80 : goto lb, 198.51.100.2 . tcp . 80 : jump ret }
add element ip t eps { 198.51.100.1 . 80 . 0 : 10.0.0.1 . 8080, 198.51.100.1 . 80 . 1 : 10.0.0.1 . 8080 }
add element ip t eps { 198.51.100.1 . 80 . 2 : 10.0.0.2 . 8080 }
add element ip t allow { 10.0.0.0/24 . tcp . 80-8080 }
`

// TestNFTInterpreter pins the interpreter's semantics on hand-written
// rules.
func TestNFTInterpreter(t *testing.T) {
	rs := mustParseNFT(t, pinRuleset)
	for _, tc := range []struct {
		name     string
		src, dst string
		proto    string
		iif      string
		want     []string
		follows  []bool // for each DNAT result: a second connection follows it
	}{
		// numgen mod 4 over three elements: two indexes reach .1, one
		// .2, and the fourth misses the map, so the rule does not match
		// and the goto'd chain returns past svc to pre, whose policy
		// accepts; the forward policy drops that way. The others are
		// accepted by the allow interval, record the client in the
		// dynamic map and are masqueraded for the mark lb set.
		{name: "numgen splits", src: "172.16.0.1", dst: "198.51.100.1:80", proto: "tcp", iif: "eth0", want: []string{
			"10.0.0.1:8080 p=0.2500 drop=false masq=true updates=1",
			"10.0.0.1:8080 p=0.2500 drop=false masq=true updates=1",
			"10.0.0.2:8080 p=0.2500 drop=false masq=true updates=1",
			"invalid AddrPort p=0.2500 drop=true masq=false updates=0"}, follows: []bool{true, true, true}},
		// jump ret: its return comes back to svc, which ends, back to
		// pre; a veth packet is DNATed there, and the later nat chain
		// does not see it again.
		{name: "jump returns", src: "172.16.0.1", dst: "198.51.100.2:80", proto: "tcp", iif: "veth3", want: []string{
			"10.0.0.9:80 p=1.0000 drop=false masq=false updates=1"}, follows: []bool{true}},
		// Not DNATed by pre: the later nat chain of the hook does.
		{name: "a later nat chain", src: "172.16.0.1", dst: "203.0.113.9:80", proto: "tcp", iif: "eth0", want: []string{
			"10.0.0.8:80 p=1.0000 drop=false masq=false updates=1"}, follows: []bool{true}},
		{name: "dropped before NAT", src: "192.0.2.7", dst: "198.51.100.1:80", proto: "tcp", iif: "eth0", want: []string{
			"invalid AddrPort p=1.0000 drop=true masq=false updates=0"}},
		{name: "rejected on input", src: "172.16.0.1", dst: "192.168.0.2:53", proto: "udp", iif: "eth0", want: []string{
			"invalid AddrPort p=1.0000 drop=true masq=false updates=0"}},
		// tcp dport on a UDP packet: the lb rules do not match.
		{name: "a selector the packet lacks", src: "172.16.0.1", dst: "198.51.100.1:80", proto: "udp", iif: "eth0", want: []string{
			"invalid AddrPort p=1.0000 drop=true masq=false updates=0"}},
		// From the node: output, then postrouting; the connection is new
		// to the forward chain's rules, which the node's own packets
		// never meet.
		{name: "from the node", src: "192.168.0.2", dst: "198.51.100.1:80", proto: "tcp", want: []string{
			"10.0.0.1:8080 p=0.2500 drop=false masq=true updates=0",
			"10.0.0.1:8080 p=0.2500 drop=false masq=true updates=0",
			"10.0.0.2:8080 p=0.2500 drop=false masq=true updates=0",
			"invalid AddrPort p=0.2500 drop=false masq=true updates=0"}, follows: []bool{false, false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := nftPacket{src: netip.MustParseAddr(tc.src), proto: protoNumbers[tc.proto], iif: tc.iif, fromNode: tc.iif == ""}
			ap := netip.MustParseAddrPort(tc.dst)
			pkt.dst, pkt.dport = ap.Addr(), ap.Port()
			w := &walker{rs: rs, local: isPinNodeIP}
			res, err := w.walk(pkt)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var follows []bool
			for _, r := range res {
				got = append(got, fmt.Sprintf("%s p=%.4f drop=%v masq=%v updates=%d", r.dnat, r.prob, r.verdict != "", r.masq, len(r.updates)))
				if r.dnat.IsValid() {
					f, err := w.follows(pkt, r)
					if err != nil {
						t.Fatal(err)
					}
					follows = append(follows, f)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
			if !slices.Equal(follows, tc.follows) {
				t.Errorf("a second connection follows %v, want %v", follows, tc.follows)
			}
		})
	}
}

// TestNFTInterpreterVerdicts pins which verdict ends a walk.
func TestNFTInterpreterVerdicts(t *testing.T) {
	w := &walker{rs: mustParseNFT(t, pinRuleset), local: isPinNodeIP}
	for _, tc := range []struct{ src, dst, proto, want string }{
		{"192.0.2.7", "198.51.100.1:80", "tcp", "drop"},
		{"172.16.0.1", "192.168.0.2:53", "udp", "reject"},
		{"172.16.0.1", "10.0.0.5:80", "tcp", "reject"},
		{"172.16.0.1", "192.168.0.2:22", "tcp", ""},
	} {
		ap := netip.MustParseAddrPort(tc.dst)
		res, err := w.walk(nftPacket{src: netip.MustParseAddr(tc.src), dst: ap.Addr(), dport: ap.Port(), proto: protoNumbers[tc.proto], iif: "eth0"})
		if err != nil || len(res) != 1 || res[0].verdict != tc.want {
			t.Errorf("%s -> %s/%s: %+v, %v; want one way ending in %q", tc.src, tc.dst, tc.proto, res, err, tc.want)
		}
	}
}

// TestNFTInterpreterErrors: what the interpreter does not know, or what
// nft itself would refuse, is an error, never a pass.
func TestNFTInterpreterErrors(t *testing.T) {
	const head = "add table ip t\nadd chain ip t c\nadd chain ip t b { type filter hook forward priority 0 ; }\n" +
		"add set ip t s { type ipv4_addr . inet_proto . inet_service ; }\n" +
		"add set ip t r { type ipv4_addr ; flags interval ; }\n" +
		"add map ip t v { type ipv4_addr : verdict ; }\n" +
		"add map ip t m { type ipv4_addr : ipv4_addr . inet_service ; }\n"
	for _, tc := range []struct{ name, line string }{
		{"unknown command", "flush ruleset"},
		{"unknown object", "add flowtable ip t f"},
		{"no such table", "add chain ip u c"},
		{"unknown statement", `add rule ip t c log prefix "x"`},
		{"unknown selector", "add rule ip t c ip protocol tcp accept"},
		{"unknown set field", "add set ip t x { type ipv4_addr ; size 10 ; }"},
		{"unknown type", "add set ip t x { type ether_addr ; }"},
		{"unknown hook", "add chain ip t x { type filter hook ingress priority 0 ; }"},
		{"lookup of another type", "add rule ip t c ip daddr . th dport @s accept"},
		{"vmap over a set of no verdicts", "add rule ip t c ip daddr vmap @m"},
		{"vmap over a set", "add rule ip t c ip daddr vmap @r"},
		{"undeclared set", "add rule ip t c ip daddr @nope accept"},
		{"prefix in a set without intervals", "add element ip t s { 10.0.0.0/8 . tcp . 80 }"},
		{"overlapping intervals", "add element ip t r { 10.0.0.0/8, 10.1.0.0/16 }"},
		{"element of another type", "add element ip t s { 10.0.0.1 . tcp . http }"},
		{"element with too few components", "add element ip t s { 10.0.0.1 . tcp }"},
		{"value in a set", "add element ip t r { 10.0.0.1 : accept }"},
		{"one key, two values", "add element ip t v { 10.0.0.1 : accept, 10.0.0.1 : drop }"},
		{"jump to an undeclared chain", "add rule ip t c jump nope"},
		{"goto in a verdict map to an undeclared chain", "add element ip t v { 10.0.0.1 : goto nope }"},
		{"statement after a verdict", "add rule ip t c accept counter"},
		{"statement after dnat", "add rule ip t c dnat to 10.0.0.1:80 accept"},
		{"update of a map that is not dynamic", "add rule ip t c update @m { ip saddr : ip daddr . th dport }"},
		{"ip6 selector in an ip table", "add rule ip t c ip6 saddr ::1 accept"},
		{"dnat through a map of verdicts", "add rule ip t c dnat ip to ip daddr map @v"},
		{"reject with a type", "add rule ip t c reject with icmp type host-unreachable"},
		{"fib of another type", "add rule ip t c fib daddr type unicast accept"},
		{"unknown ct state", "add rule ip t c ct state bogus accept"},
		{"unterminated quote", `add rule ip t c comment "x`},
		{"rule in no chain", "add rule ip t nope accept"},
	} {
		if _, err := parseNFT(head + tc.line + "\n"); err == nil {
			t.Errorf("%s: parsed %q", tc.name, tc.line)
		}
	}
	if _, err := parseNFT(head); err != nil {
		t.Fatalf("the common head does not parse: %v", err)
	}
	// NAT statements outside a nat chain of their hook fail the walk.
	for _, bad := range []string{
		head + "add rule ip t b dnat to 10.0.0.1:80\n",
		head + "add chain ip t p { type nat hook prerouting priority -100 ; }\nadd rule ip t p masquerade\n",
	} {
		w := &walker{rs: mustParseNFT(t, bad), local: func(netip.Addr) bool { return false }}
		if _, err := w.walk(nftPacket{src: netip.MustParseAddr("10.0.0.2"), dst: netip.MustParseAddr("10.0.0.3"), proto: 6, dport: 80, iif: "eth0"}); err == nil {
			t.Errorf("walked %q", bad[len(head):])
		}
	}
}
