package nftables

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"sigs.k8s.io/knftables"
)

// Self-repair works in two ways:
//
//   - every tick, Check reads the nf_tables ruleset generation of the network
//     namespace (one NFT_MSG_GETGEN request, whatever the size of the
//     ruleset). The kernel bumps it on every committed transaction, by anyone.
//     After each of our own transactions (nft -f full syncs and netlink
//     element batches alike) the proxier remembers the generation it left, so
//     an unchanged generation means nobody touched anything: the tick ends
//     there. When the generation moved and not by us, Check reads the
//     table's shape (chains, their rule counts, sets and maps: no elements,
//     so the same cost at any number of Services) and compares it with what
//     the last sync left.
//   - the nf_tables notifications (events.go) say which transactions
//     touched our table, elements included; one that was not ours forces a
//     full sync at once.

// tableShape is what a check reads of the table: whether it exists, the rule
// count of each chain and the names of its sets and maps. It never includes
// elements, so reading it costs the same at any number of services.
type tableShape struct {
	exists bool
	chains map[string]int
	sets   map[string]bool
	// maps tells which of sets are maps (filled by the kernel reader).
	maps map[string]bool
}

// shapeReader reads the table from the kernel.
type shapeReader interface {
	// generation is the ruleset generation of the namespace.
	generation(ctx context.Context) (uint32, error)
	readShape(ctx context.Context) (*tableShape, error)
}

// checkState is what Check and the notification watcher remember between
// ticks and transactions. Callers hold p.mu.
type checkState struct {
	// gen is the ruleset generation known to hold the table the last sync
	// left (valid when known).
	gen   uint32
	known bool
	// spans are the generations of our recent transactions (a ring; next
	// is the next slot).
	spans [ownSpans]span
	next  int
	// Transactions up to generation floor came before our last full sync
	// (valid when floorOK).
	floor   uint32
	floorOK bool
	// idle and shape count the ticks that stopped at the generation and
	// those that read the shape; foreign the others' transactions seen
	// touching our table; overflows the notification losses (read without
	// p.mu).
	idle, shape, foreign int
	overflows            atomic.Int64
}

// genBefore reads the generation before one of our transactions. Callers
// hold p.mu.
func (p *Proxier) genBefore(ctx context.Context) (uint32, bool) {
	if p.reader == nil {
		return 0, false
	}
	g, err := p.reader.generation(ctx)
	return g, err == nil
}

// genAfter records the generation after a successful transaction of ours
// that started at generation before (when ok). When exactly one
// transaction was committed in between, it was ours, and the table is what
// the sync meant it to be: a full sync rewrites the whole table, a partial
// one only on top of a table known good. Otherwise the next tick reads the
// shape. Callers hold p.mu.
func (p *Proxier) genAfter(ctx context.Context, before uint32, ok, full bool) {
	if !ok {
		p.chk.known = false
		return
	}
	after, err := p.reader.generation(ctx)
	switch {
	case err != nil:
		p.chk.known = false
	case after == before && full:
		// A full sync always commits: the one that wrote the table moved
		// before past its own commit (coldLoad, whose element batch was
		// empty).
		p.chk.owned(before-1, before, true)
		p.chk.gen, p.chk.known = before, true
	case after == before:
		// Nothing committed (a sync without operations).
	default:
		p.chk.owned(before, after, full)
		if after == before+1 {
			p.group.own(after)
		}
		if after == before+1 && (full || p.chk.known && p.chk.gen == before) {
			p.chk.gen, p.chk.known = after, true
		}
	}
}

// expectedShape is the shape the last successful sync left. Callers hold p.mu.
func (p *Proxier) expectedShape() *tableShape {
	if p.last == nil {
		return nil
	}
	return (&desired{next: p.last}).shape()
}

// diff describes the first difference between want and got, or "".
func (want *tableShape) diff(got *tableShape) string {
	if !got.exists {
		return "table " + TableName + " is gone"
	}
	names := make([]string, 0, len(want.chains))
	for c := range want.chains {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		n, ok := got.chains[c]
		switch {
		case !ok:
			return "chain " + c + " is gone"
		case n != want.chains[c]:
			return fmt.Sprintf("chain %s has %d rules, want %d", c, n, want.chains[c])
		}
	}
	for s := range want.sets {
		if !got.sets[s] {
			return "set or map " + s + " is gone"
		}
	}
	return ""
}

// Check reports what the last successful sync put in the table that is no
// longer there (the table, a chain, a chain's rules, a set or map), or "".
// While the ruleset generation stays where our own last transaction left
// it, a check is one small netlink request; after a foreign change it reads
// the shape, never elements, so it is cheap at any scale. It holds the sync
// lock while it reads, so a sync in progress is never mistaken for damage.
func (p *Proxier) Check(ctx context.Context) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := p.expectedShape()
	if want == nil || !p.synced || p.reader == nil {
		return "", nil
	}
	g, err := p.reader.generation(ctx)
	if err != nil {
		return "", fmt.Errorf("read the ruleset generation: %w", err)
	}
	if p.chk.known && g == p.chk.gen {
		p.chk.idle++
		return "", nil
	}
	p.chk.shape++
	// Read after the generation: a change during the read is either seen
	// by it or moves the generation past g, and the next tick reads again.
	got, err := p.reader.readShape(ctx)
	if err != nil {
		return "", err
	}
	if d := want.diff(got); d != "" {
		return d, nil
	}
	p.chk.gen, p.chk.known = g, true
	return "", nil
}

// Watch starts the guard: it checks every interval that the rules are in
// place (see Check) and watches the nf_tables notifications for others'
// changes to our table (see watch). The channel asks for a sync when either
// finds the table altered; that sync rewrites what was damaged.
func (p *Proxier) Watch(ctx context.Context, interval time.Duration) <-chan struct{} {
	sig := proxier.NewSignal()
	if r, ok := p.reader.(*netlinkReader); ok {
		gr := &netlinkReader{family: r.family, netns: r.netns}
		go p.watch(ctx, watcher{
			dial:     func() (eventConn, error) { return dialEvents(r.netns, eventBuffer) },
			gen:      func() (uint32, error) { return gr.generation(ctx) },
			sentinel: newSentinelConns(&netlinkReader{family: r.family, netns: r.netns}),
			repair: func(what, rewrite string) {
				klog.InfoS("Rules altered by someone else; rewriting them", "family", p.cfg.Family, "altered", what, "rewrite", rewrite)
				sig.Raise()
			},
		})
	}
	go proxier.Monitor(ctx, p.cfg.Family, p, interval, sig)
	return sig
}

// netlinkReader reads the generation with one request and the shape with
// four dumps (tables, chains, rules, sets), whatever the number of chains.
// It decodes only names, never rule expressions or elements.
type netlinkReader struct {
	family uint8 // NFPROTO_IPV4 or NFPROTO_IPV6
	netns  int   // a network namespace fd, or 0 for the current one
	// conn is kept between ticks.
	conn *netlink.Conn
}

func newNetlinkReader(f knftables.Family) *netlinkReader {
	r := &netlinkReader{family: unix.NFPROTO_IPV4}
	if f == knftables.IPv6Family {
		r.family = unix.NFPROTO_IPV6
	}
	return r
}

func (r *netlinkReader) dial() (*netlink.Conn, error) {
	if r.conn == nil {
		c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.netns})
		if err != nil {
			return nil, err
		}
		r.conn = c
	}
	return r.conn, nil
}

func (r *netlinkReader) reset() {
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}

// execute sends one nf_tables request (a dump when flags say so) and
// returns each reply's attributes, on the kept connection.
func (r *netlinkReader) execute(msgType uint16, flags netlink.HeaderFlags, attrs []netlink.Attribute, timeout time.Duration) ([]map[uint16][]byte, error) {
	conn, err := r.dial()
	if err != nil {
		return nil, err
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: flags,
		},
		// nfgenmsg: family, version, resource id.
		Data: append([]byte{r.family, unix.NFNETLINK_V0, 0, 0}, data...),
	}
	conn.SetDeadline(time.Now().Add(timeout))
	msgs, err := conn.Execute(req)
	if err != nil {
		r.reset()
		return nil, err
	}
	out := make([]map[uint16][]byte, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		a, err := attrsOf(m)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// attrsOf decodes the attributes of an nf_tables message (after its
// nfgenmsg), by type.
func attrsOf(m netlink.Message) (map[uint16][]byte, error) {
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return nil, err
	}
	a := map[uint16][]byte{}
	for ad.Next() {
		a[ad.Type()] = ad.Bytes()
	}
	return a, ad.Err()
}

// generation is the namespace's nf_tables ruleset generation
// (NFT_MSG_GETGEN → NFTA_GEN_ID).
func (r *netlinkReader) generation(context.Context) (uint32, error) {
	replies, err := r.execute(unix.NFT_MSG_GETGEN, netlink.Request, nil, 5*time.Second)
	if err != nil {
		return 0, err
	}
	for _, a := range replies {
		if g, ok := be32(a[unix.NFTA_GEN_ID]); ok {
			return g, nil
		}
	}
	return 0, fmt.Errorf("no generation id in the reply")
}

func (r *netlinkReader) dump(msgType uint16, attrs []netlink.Attribute) ([]map[uint16][]byte, error) {
	return r.execute(msgType, netlink.Request|netlink.Dump, attrs, 30*time.Second)
}

func str(b []byte) string { return strings.TrimRight(string(b), "\x00") }

func (r *netlinkReader) readShape(context.Context) (*tableShape, error) {
	shape := &tableShape{chains: map[string]int{}, sets: map[string]bool{}, maps: map[string]bool{}}
	tables, err := r.dump(unix.NFT_MSG_GETTABLE, nil)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		shape.exists = shape.exists || str(t[unix.NFTA_TABLE_NAME]) == TableName
	}
	if !shape.exists {
		return shape, nil
	}
	table := []netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: []byte(TableName + "\x00")}}
	// The chain dump has no table filter; the rule and set dumps do
	// (NFTA_RULE_TABLE and NFTA_SET_TABLE have the number of
	// NFTA_TABLE_NAME, 1).
	chains, err := r.dump(unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if str(c[unix.NFTA_CHAIN_TABLE]) == TableName {
			shape.chains[str(c[unix.NFTA_CHAIN_NAME])] = 0
		}
	}
	rules, err := r.dump(unix.NFT_MSG_GETRULE, table)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	for _, rule := range rules {
		if str(rule[unix.NFTA_RULE_TABLE]) == TableName {
			shape.chains[str(rule[unix.NFTA_RULE_CHAIN])]++
		}
	}
	sets, err := r.dump(unix.NFT_MSG_GETSET, table)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		flags, _ := be32(s[unix.NFTA_SET_FLAGS])
		if str(s[unix.NFTA_SET_TABLE]) == TableName && flags&unix.NFT_SET_ANONYMOUS == 0 {
			shape.sets[str(s[unix.NFTA_SET_NAME])] = true
			shape.maps[str(s[unix.NFTA_SET_NAME])] = flags&unix.NFT_SET_MAP != 0
		}
	}
	return shape, nil
}

// fakeReader reads the table of a knftables.Fake (for tests). Its
// generation moves whenever the fake's content changes, as the kernel's
// does on every committed transaction.
type fakeReader struct {
	fake *knftables.Fake
	last string
	gen  uint32
}

func (r *fakeReader) generation(context.Context) (uint32, error) {
	if d := r.fake.Dump(); d != r.last {
		r.last = d
		r.gen++
	}
	return r.gen, nil
}

func (r *fakeReader) readShape(context.Context) (*tableShape, error) {
	r.fake.RLock()
	defer r.fake.RUnlock()
	shape := &tableShape{chains: map[string]int{}, sets: map[string]bool{}}
	t := r.fake.Table
	if t == nil {
		return shape, nil
	}
	shape.exists = true
	for name, c := range t.Chains {
		shape.chains[name] = len(c.Rules)
	}
	for name := range t.Sets {
		shape.sets[name] = true
	}
	for name := range t.Maps {
		shape.sets[name] = true
	}
	return shape, nil
}
