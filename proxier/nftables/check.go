package nftables

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
	"sigs.k8s.io/knftables"
)

// tableShape is what a check reads of the table: whether it exists, the rule
// count of each chain and the names of its sets and maps. It never includes
// elements, so reading it costs the same at any number of services.
type tableShape struct {
	exists bool
	chains map[string]int
	sets   map[string]bool
}

// shapeReader reads the table's shape from the kernel.
type shapeReader interface {
	readShape(ctx context.Context) (*tableShape, error)
}

// expectedShape is the shape the last successful sync left. Callers hold p.mu.
func (p *Proxier) expectedShape() *tableShape {
	if p.skel == nil {
		return nil
	}
	want := &tableShape{exists: true, chains: map[string]int{}, sets: map[string]bool{}}
	for _, c := range p.skel.chains {
		want.chains[c.Name] = len(p.skel.rules[c.Name])
	}
	for lb := range p.lbChains {
		want.chains[lb] = 1
	}
	for _, s := range p.skel.sets {
		want.sets[s.Name] = true
	}
	for _, m := range p.skel.maps {
		want.sets[m.Name] = true
	}
	return want
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
// It reads no elements, so it is cheap at any scale. It holds the sync lock
// while it reads, so a sync in progress is never mistaken for damage.
func (p *Proxier) Check(ctx context.Context) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	want := p.expectedShape()
	if want == nil || !p.synced || p.reader == nil {
		return "", nil
	}
	got, err := p.reader.readShape(ctx)
	if err != nil {
		return "", err
	}
	return want.diff(got), nil
}

// Monitor checks every interval that the rules are in place (see Check) and
// has them rewritten at once when they are not (see proxier.Monitor).
func (p *Proxier) Monitor(ctx context.Context, interval time.Duration, resync func()) {
	proxier.Monitor(ctx, p.cfg.Family, p, interval, resync)
}

// netlinkReader reads the shape over netlink with four dumps (tables,
// chains, rules, sets), whatever the number of chains. It decodes only names,
// never rule expressions.
type netlinkReader struct {
	family uint8 // NFPROTO_IPV4 or NFPROTO_IPV6
	netns  int   // a network namespace fd, or 0 for the current one
}

func newNetlinkReader(f knftables.Family) *netlinkReader {
	r := &netlinkReader{family: unix.NFPROTO_IPV4}
	if f == knftables.IPv6Family {
		r.family = unix.NFPROTO_IPV6
	}
	return r
}

// dump runs one nf_tables dump request and returns each reply's attributes.
func (r *netlinkReader) dump(conn *netlink.Conn, msgType uint16, attrs []netlink.Attribute) ([]map[uint16][]byte, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump,
		},
		// nfgenmsg: family, version, resource id.
		Data: append([]byte{r.family, unix.NFNETLINK_V0, 0, 0}, data...),
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return nil, err
	}
	out := make([]map[uint16][]byte, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		a := map[uint16][]byte{}
		for ad.Next() {
			a[ad.Type()] = ad.Bytes()
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func str(b []byte) string { return strings.TrimRight(string(b), "\x00") }

func (r *netlinkReader) readShape(context.Context) (*tableShape, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: r.netns})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	shape := &tableShape{chains: map[string]int{}, sets: map[string]bool{}}
	tables, err := r.dump(conn, unix.NFT_MSG_GETTABLE, nil)
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
	chains, err := r.dump(conn, unix.NFT_MSG_GETCHAIN, nil)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if str(c[unix.NFTA_CHAIN_TABLE]) == TableName {
			shape.chains[str(c[unix.NFTA_CHAIN_NAME])] = 0
		}
	}
	// NFTA_RULE_TABLE has the same number as NFTA_TABLE_NAME (1).
	rules, err := r.dump(conn, unix.NFT_MSG_GETRULE, table)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	for _, rule := range rules {
		if str(rule[unix.NFTA_RULE_TABLE]) == TableName {
			shape.chains[str(rule[unix.NFTA_RULE_CHAIN])]++
		}
	}
	sets, err := r.dump(conn, unix.NFT_MSG_GETSET, table)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		flags := s[unix.NFTA_SET_FLAGS]
		anonymous := len(flags) == 4 && binary.BigEndian.Uint32(flags)&unix.NFT_SET_ANONYMOUS != 0
		if str(s[unix.NFTA_SET_TABLE]) == TableName && !anonymous {
			shape.sets[str(s[unix.NFTA_SET_NAME])] = true
		}
	}
	return shape, nil
}

// fakeReader reads the shape of a knftables.Fake's table (for tests).
type fakeReader struct{ fake *knftables.Fake }

func (r fakeReader) readShape(context.Context) (*tableShape, error) {
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
