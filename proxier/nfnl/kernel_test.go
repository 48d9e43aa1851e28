package nfnl

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier/nfnl/nfnltest"
)

// The kernel tests run in a namespace of their own (nfnltest.Netns) and
// create what they read with nft.

const nsPrefix = "svnfnl-"

// dialNS makes a namespace and a Conn to it, and returns its name and
// the Conn.
func dialNS(t *testing.T) (string, *Conn) {
	ns, _, c := dialNSFD(t)
	return ns, c
}

// dialNSFD is dialNS, with the namespace's fd.
func dialNSFD(t *testing.T) (string, int, *Conn) {
	t.Helper()
	ns, fd := nfnltest.Netns(t, nsPrefix)
	c, err := Dial(fd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ns, fd, c
}

const shapeScript = `
table ip t {
	set plain { type ipv4_addr; elements = { 10.0.0.1 } }
	map data { type ipv4_addr : inet_service; }
	map verdicts { type ipv4_addr . inet_proto . inet_service : verdict; }
	chain a { ip saddr { 10.1.0.1, 10.1.0.2 } drop; ip daddr @plain accept; counter; }
	chain b { jump a; }
	chain empty { }
}
table ip other { chain a { accept; accept; }; }
table ip6 t { chain six { accept; }; }
`

func TestKernelShape(t *testing.T) {
	ns, c := dialNS(t)
	ctx := context.Background()
	if s, err := c.Shape(ctx, IPv4, "t"); err != nil || s.Exists || len(s.Chains)+len(s.Sets) != 0 {
		t.Fatalf("before the table: %+v, %v", s, err)
	}
	nfnltest.NFT(t, ns, shapeScript)
	for _, tc := range []struct {
		family Family
		want   *Shape
	}{
		{IPv4, &Shape{
			Exists: true,
			Chains: map[string]int{"a": 3, "b": 1, "empty": 0},
			Sets:   map[string]SetKind{"plain": PlainSet, "data": DataMap, "verdicts": VerdictMap},
		}},
		{IPv6, &Shape{Exists: true, Chains: map[string]int{"six": 1}, Sets: map[string]SetKind{}}},
		{Inet, &Shape{Chains: map[string]int{}, Sets: map[string]SetKind{}}},
	} {
		got, err := c.Shape(ctx, tc.family, "t")
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("family %d: shape (-want +got):\n%s", tc.family, d)
		}
	}
	chains, err := c.Chains(ctx, IPv4, "t")
	if err != nil || strings.Join(chains, ",") != "a,b,empty" {
		t.Errorf("Chains = %q, %v", chains, err)
	}
	for _, tc := range []struct {
		chain string
		want  map[string]int
	}{
		{"a", map[string]int{"a": 3}},
		{"empty", map[string]int{}},
		{"", map[string]int{"a": 3, "b": 1}},
	} {
		got, err := c.RuleCounts(ctx, IPv4, "t", tc.chain)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("RuleCounts(%q) (-want +got):\n%s", tc.chain, d)
		}
	}
	if got, err := c.RuleCounts(ctx, IPv4, "t", "gone"); err != nil || len(got) != 0 {
		t.Errorf("rules of a missing chain: %v, %v; want none", got, err)
	}
	// A refused request keeps the socket.
	nl := c.nl
	if ok, err := c.HasTable(ctx, IPv4, "gone"); ok || err != nil {
		t.Errorf("HasTable(gone) = %v, %v", ok, err)
	}
	for _, tc := range []struct {
		table, chain string
		want         bool
	}{{"t", "empty", true}, {"t", "gone", false}, {"gone", "a", false}} {
		if ok, err := c.HasChain(ctx, IPv4, tc.table, tc.chain); ok != tc.want || err != nil {
			t.Errorf("HasChain(%s, %s) = %v, %v; want %v", tc.table, tc.chain, ok, err, tc.want)
		}
	}
	if c.nl != nl {
		t.Errorf("a refused request redialled the socket")
	}
}

func TestKernelGeneration(t *testing.T) {
	ns, c := dialNS(t)
	ctx := context.Background()
	g0, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nfnltest.NFT(t, ns, "", "add", "table", "ip", "t")
	nfnltest.NFT(t, ns, "", "add", "chain", "ip", "t", "c")
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	g1, err := c.Generation(ctx)
	if err != nil || g1 != g0+2 {
		t.Fatalf("after two commits and a barrier: generation %d, %v; want %d", g1, err, g0+2)
	}
	// A socket that went away is dialled again, in the same namespace.
	c.mu.Lock()
	c.reset()
	c.mu.Unlock()
	if g, err := c.Generation(ctx); err != nil || g != g1 {
		t.Errorf("after a reset: generation %d, %v; want %d", g, err, g1)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Generation(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("with a cancelled context: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Generation(ctx); err == nil {
		t.Errorf("a closed Conn answered")
	}
}

// TestKernelDialCurrent: Dial(0) connects to the namespace of the thread
// that dials.
func TestKernelDialCurrent(t *testing.T) {
	ns, fd := nfnltest.Netns(t, nsPrefix)
	nfnltest.NFT(t, ns, "", "add", "table", "ip", "dial-current")
	conns := make(chan *Conn, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, so it
		// is never reused in the test's namespace.
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			conns <- nil
			return
		}
		c, err := Dial(0)
		if err != nil {
			t.Error(err)
		}
		conns <- c
	}()
	c := <-conns
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	if ok, err := c.HasTable(context.Background(), IPv4, "dial-current"); !ok || err != nil {
		t.Errorf("the namespace's table: %v, %v", ok, err)
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func key(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case string:
			b = AppendAddr(b, addr(v))
		case uint8:
			b = AppendProto(b, v)
		case uint16:
			b = AppendPort(b, v)
		case uint32:
			b = AppendUint32(b, v)
		default:
			panic(fmt.Sprintf("key part %T", p))
		}
	}
	return b
}

// TestKernelBatch: each kind of set and map takes the elements a batch
// adds, as nft lists them, and loses them to the batch that deletes them.
func TestKernelBatch(t *testing.T) {
	const tcp, udp = uint8(unix.IPPROTO_TCP), uint8(unix.IPPROTO_UDP)
	concat := func(p netip.Prefix) Elem {
		first, last := PrefixRange(p)
		return Elem{Key: key("10.96.0.1", tcp, uint16(80), first.String()), KeyEnd: key("10.96.0.1", tcp, uint16(80), last.String())}
	}
	for _, tc := range []struct {
		name   string
		family string
		decl   string
		elems  []Elem
		want   []string // in nft list set's output
	}{
		{"set of addresses", "ip", "set s { type ipv4_addr; }",
			[]Elem{{Key: key("10.0.0.1")}, {Key: key("10.0.0.2")}},
			[]string{"10.0.0.1", "10.0.0.2"}},
		{"concatenated set", "ip", "set s { type ipv4_addr . inet_proto . inet_service; }",
			[]Elem{{Key: key("10.0.0.1", tcp, uint16(80))}, {Key: key("10.0.0.1", udp, uint16(53))}},
			[]string{"10.0.0.1 . tcp . 80", "10.0.0.1 . udp . 53"}},
		{"data map", "ip", "map s { type ipv4_addr . inet_service . mark : ipv4_addr . inet_service; }",
			[]Elem{{Key: key("10.96.0.1", uint16(80), uint32(1)), Value: key("10.1.0.7", uint16(8080))}},
			[]string{"10.96.0.1 . 80 . 0x00000001 : 10.1.0.7 . 8080"}},
		{"verdict map", "ip", "map s { type ipv4_addr . inet_proto . inet_service : verdict; }",
			[]Elem{
				{Key: key("10.0.0.1", tcp, uint16(80)), Verdict: Verdict{Kind: Goto, Chain: "lb"}},
				{Key: key("10.0.0.2", tcp, uint16(80)), Verdict: Verdict{Kind: Jump, Chain: "lb"}},
				{Key: key("10.0.0.3", tcp, uint16(80)), Verdict: Verdict{Kind: Drop}},
				{Key: key("10.0.0.4", tcp, uint16(80)), Verdict: Verdict{Kind: Accept}},
				{Key: key("10.0.0.5", tcp, uint16(80)), Verdict: Verdict{Kind: Return}},
				{Key: key("10.0.0.6", tcp, uint16(80)), Verdict: Verdict{Kind: Continue}},
			},
			[]string{"10.0.0.1 . tcp . 80 : goto lb", "10.0.0.2 . tcp . 80 : jump lb", "10.0.0.3 . tcp . 80 : drop",
				"10.0.0.4 . tcp . 80 : accept", "10.0.0.5 . tcp . 80 : return", "10.0.0.6 . tcp . 80 : continue"}},
		{"interval set", "ip", "set s { type ipv4_addr; flags interval; }",
			append(PrefixElems(netip.MustParsePrefix("10.96.0.0/16")), PrefixElems(netip.MustParsePrefix("192.168.7.7/32"))...),
			[]string{"10.96.0.0/16", "192.168.7.7"}},
		{"interval set to the top", "ip", "set s { type ipv4_addr; flags interval; }",
			PrefixElems(netip.MustParsePrefix("240.0.0.0/4")),
			[]string{"240.0.0.0/4"}},
		{"concatenated interval set", "ip", "set s { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval; }",
			[]Elem{concat(netip.MustParsePrefix("192.168.0.0/24")), concat(netip.MustParsePrefix("172.16.0.0/12"))},
			[]string{"10.96.0.1 . tcp . 80 . 192.168.0.0/24", "10.96.0.1 . tcp . 80 . 172.16.0.0/12"}},
		{"IPv6 data map", "ip6", "map s { type ipv6_addr . inet_service : ipv6_addr . inet_service; }",
			[]Elem{{Key: key("fd00::1", uint16(443)), Value: key("fd00:10::5", uint16(8443))}},
			[]string{"fd00::1 . 443 : fd00:10::5 . 8443"}},
		{"IPv6 interval set", "ip6", "set s { type ipv6_addr; flags interval; }",
			PrefixElems(netip.MustParsePrefix("fd00:96::/112")),
			[]string{"fd00:96::/112"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, c := dialNS(t)
			ctx := context.Background()
			nfnltest.NFT(t, ns, fmt.Sprintf("table %s t { %s\nchain lb { }\n}\n", tc.family, tc.decl))
			f := IPv4
			if tc.family == "ip6" {
				f = IPv6
			}
			list := func() string { return nfnltest.NFT(t, ns, "", "list", "set", tc.family, "t", "s") }
			if strings.Contains(tc.decl, "map ") {
				list = func() string { return nfnltest.NFT(t, ns, "", "list", "map", tc.family, "t", "s") }
			}
			add := NewBatch(f, "t")
			for _, e := range tc.elems {
				add.Add("s", e)
			}
			if err := c.Send(ctx, add); err != nil {
				t.Fatalf("add: %v", err)
			}
			out := list()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("after adding: %q not listed in\n%s", w, out)
				}
			}
			del := NewBatch(f, "t")
			for _, e := range tc.elems {
				del.Delete("s", e)
			}
			if err := c.Send(ctx, del); err != nil {
				t.Fatalf("delete: %v", err)
			}
			if out := list(); strings.Contains(out, "elements") {
				t.Errorf("after deleting, elements are left:\n%s", out)
			}
		})
	}
}

// countElems counts the elements nft lists in set s of table ip t.
func countElems(t *testing.T, ns, kind string) int {
	out := nfnltest.NFT(t, ns, "", "list", kind, "ip", "t", "s")
	_, elems, ok := strings.Cut(out, "elements = {")
	if !ok {
		return 0
	}
	elems, _, _ = strings.Cut(elems, "}")
	return strings.Count(elems, ",") + 1
}

// TestKernelBatchAtomic: a batch the kernel refuses in part changes
// nothing; the Conn redials and goes on.
func TestKernelBatchAtomic(t *testing.T) {
	ns, c := dialNS(t)
	ctx := context.Background()
	nfnltest.NFT(t, ns, "table ip t { set s { type ipv4_addr; elements = { 10.0.0.1 }; }; }")
	// Enough elements to take several messages, then a deletion of an
	// element that is not there.
	b := NewBatch(IPv4, "t")
	for i := range 5000 {
		b.Add("s", Elem{Key: key(fmt.Sprintf("10.1.%d.%d", i/256, i%256))})
	}
	b.Delete("s", Elem{Key: key("10.9.9.9")})
	if n := len(b.Messages()); n < 3 {
		t.Fatalf("5001 changes in %d messages, want several", n)
	}
	if err := c.Send(ctx, b); !IsNotFound(err) {
		t.Fatalf("Send = %v, want not found", err)
	}
	if n := countElems(t, ns, "set"); n != 1 {
		t.Errorf("after a refused batch: %d elements, want the 1 there before", n)
	}
	// The same adds without the bad deletion, then a flush in one batch
	// with a new element.
	ok := NewBatch(IPv4, "t")
	for i := range 5000 {
		ok.Add("s", Elem{Key: key(fmt.Sprintf("10.1.%d.%d", i/256, i%256))})
	}
	if err := c.Send(ctx, ok); err != nil {
		t.Fatal(err)
	}
	if n := countElems(t, ns, "set"); n != 5001 {
		t.Errorf("after the batch: %d elements, want 5001", n)
	}
	flush := NewBatch(IPv4, "t")
	flush.Flush("s")
	flush.Add("s", Elem{Key: key("10.2.0.1")})
	if err := c.Send(ctx, flush); err != nil {
		t.Fatal(err)
	}
	if out := nfnltest.NFT(t, ns, "", "list", "set", "ip", "t", "s"); countElems(t, ns, "set") != 1 || !strings.Contains(out, "10.2.0.1") {
		t.Errorf("after flush and add:\n%s", out)
	}
}

// receive reads notifications until one satisfies done, for up to 5 s.
func receive(t *testing.T, s *Subscription, done func(msg uint16, attrs []byte, g Gen) bool) {
	t.Helper()
	timer := time.AfterFunc(5*time.Second, func() { s.nl.SetReadDeadline(time.Unix(1, 0)) })
	defer timer.Stop()
	for {
		msgs, err := s.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		for _, m := range msgs {
			msg, _, attrs, ok := Parse(m)
			if !ok {
				continue
			}
			g, _ := ParseGen(m)
			if done(msg, attrs, g) {
				return
			}
		}
	}
}

func TestKernelSubscription(t *testing.T) {
	ns, fd, c := dialNSFD(t)
	ctx := context.Background()
	s, err := Subscribe(fd, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// A transaction's objects, then its generation.
	nfnltest.NFT(t, ns, "", "add", "table", "ip", "t")
	sawTable := false
	receive(t, s, func(msg uint16, attrs []byte, g Gen) bool {
		if msg == unix.NFT_MSG_NEWTABLE {
			name, _ := Attr(attrs, unix.NFTA_TABLE_NAME)
			sawTable = String(name) == "t"
		}
		return msg == unix.NFT_MSG_NEWGEN
	})
	gen, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !sawTable {
		t.Errorf("no NEWTABLE notification for table t")
	}

	// Out of the group, nothing is heard; back in, the next commit is.
	if err := s.Leave(); err != nil {
		t.Fatal(err)
	}
	nfnltest.NFT(t, ns, "", "add", "chain", "ip", "t", "unheard")
	if err := c.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Queued() {
		t.Errorf("notifications queued while out of the group")
	}
	if err := s.Join(); err != nil {
		t.Fatal(err)
	}
	nfnltest.NFT(t, ns, "", "add", "chain", "ip", "t", "heard")
	var last Gen
	receive(t, s, func(msg uint16, attrs []byte, g Gen) bool {
		if msg == unix.NFT_MSG_NEWCHAIN {
			if name, _ := Attr(attrs, unix.NFTA_CHAIN_NAME); String(name) != "heard" {
				t.Errorf("heard chain %q", String(name))
			}
		}
		last = g
		return msg == unix.NFT_MSG_NEWGEN
	})
	if last.ID != gen+2 || last.Proc != "nft" || last.PID == 0 {
		t.Errorf("NEWGEN %+v, want generation %d by nft", last, gen+2)
	}
}

// TestKernelSubscriptionLost: a receive queue too small for a
// transaction's notifications loses them, and says so.
func TestKernelSubscriptionLost(t *testing.T) {
	ns, fd, c := dialNSFD(t)
	nfnltest.NFT(t, ns, "table ip t { set s { type ipv4_addr; }; }")
	s, err := Subscribe(fd, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := NewBatch(IPv4, "t")
	for i := range 20000 {
		b.Add("s", Elem{Key: key(fmt.Sprintf("10.1.%d.%d", i/256, i%256))})
	}
	if err := c.Send(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	s.nl.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		_, err := s.Receive()
		if Lost(err) {
			break
		}
		if err != nil {
			t.Fatalf("receive: %v, want a loss", err)
		}
	}
}
