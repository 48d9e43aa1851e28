package nftables_test

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// The walk: the first packet of a connection goes through the base chains
// of its family's tables, hook by hook as the kernel sends it (prerouting,
// then input or forward, then postrouting; from the node output and
// postrouting, then prerouting and input again through loopback when it
// is for the node itself), each hook's chains in priority order. A numgen
// splits the walk, so every endpoint is reached with its probability.
// Dynamic maps hold only what the walker is seeded with (nothing for a new
// client); what the packet writes into them stays with its branch, so a
// second walk can show whether a later connection follows it.

// pktState is a packet and what the rules did to it so far.
type pktState struct {
	src, dst  netip.Addr
	proto     uint64
	dport     uint16
	iif       string // "" for the node's own packets
	origDst   netip.Addr
	origDport uint16
	mark      uint32
	dnat      netip.AddrPort // set once DNATed
	masq      bool
	// natDst and natSrc: the connection's destination (source) NAT is
	// settled, by a NAT statement or by passing the hook's nat chains.
	natDst, natSrc bool
	updates        []dynEntry
}

// dynEntry is an entry the packet path wrote into a dynamic set or map.
type dynEntry struct {
	set  *nftSet
	elem nftElem
}

// branch is one way the walk went, with its probability.
type branch struct {
	p    pktState
	prob float64
}

// alt is one value of an expression, with its probability.
type alt struct {
	vals []nftVal
	prob float64
}

// eval evaluates e on the packet; ok is false when the packet lacks a
// selector (an IPv6 selector on an IPv4 packet, tcp dport on UDP).
func (p pktState) eval(e expr) (alts []alt, ok bool) {
	alts = []alt{{prob: 1}}
	for _, a := range e.atoms {
		var vals []nftVal
		switch a.what {
		case "saddr", "daddr", "orig-daddr":
			addr := map[string]netip.Addr{"saddr": p.src, "daddr": p.dst, "orig-daddr": p.origDst}[a.what]
			if addr.Is4() != (a.family == "ip") {
				return nil, false
			}
			vals = []nftVal{addrVal(addr)}
		case "l4proto":
			vals = []nftVal{numVal(tProto, p.proto)}
		case "dport", "orig-dport":
			if a.proto != 0 && a.proto != p.proto {
				return nil, false
			}
			port := p.dport
			if a.what == "orig-dport" {
				port = p.origDport
			}
			vals = []nftVal{numVal(tPort, uint64(port))}
		case "mark":
			vals = []nftVal{numVal(tMark, uint64(p.mark&a.mask))}
		case "iifname":
			vals = []nftVal{{typ: tIfname, s: p.iif}}
		case "numgen":
			for i := range a.mod {
				vals = append(vals, numVal(tInt, i))
			}
		default:
			vals = []nftVal{a.lit}
		}
		if a.masked {
			vals = []nftVal{a.lit}
		}
		var next []alt
		for _, x := range alts {
			for _, v := range vals {
				next = append(next, alt{vals: append(slices.Clip(x.vals), v), prob: x.prob / float64(len(vals))})
			}
		}
		alts = next
	}
	return alts, true
}

// walker runs packets through a ruleset.
type walker struct {
	rs *nftRuleset
	// local reports whether an address is the node's (fib type local).
	local func(netip.Addr) bool
	// seed is what dynamic sets and maps hold.
	seed map[*nftSet][]nftElem
	// curType and curHook are those of the base chain being run.
	curType, curHook string
}

// lookup finds the element of s whose key holds vals. A dynamic set or
// map holds only what the walker was seeded with.
func (w *walker) lookup(s *nftSet, vals []nftVal) *nftElem {
	elems := s.elems
	if s.dynamic {
		elems = w.seed[s]
	}
	for i, e := range elems {
		if slices.EqualFunc(e.key, vals, nftVal.contains) {
			return &elems[i]
		}
	}
	return nil
}

// dnat DNATs b to ap (port 0: the address only) and ends the base chain,
// as nft's NAT statements do.
func (w *walker) dnat(b branch, ap netip.AddrPort) (step, error) {
	if w.curType != "nat" || (w.curHook != "prerouting" && w.curHook != "output") {
		return step{}, fmt.Errorf("dnat in a %s chain at %s", w.curType, w.curHook)
	}
	if ap.Addr().Is4() != b.p.dst.Is4() {
		return step{}, fmt.Errorf("dnat to %s from another family", ap)
	}
	if ap.Port() == 0 {
		ap = netip.AddrPortFrom(ap.Addr(), b.p.dport)
	}
	b.p.dnat, b.p.dst, b.p.dport, b.p.natDst = ap, ap.Addr(), ap.Port(), true
	return step{b: b, v: &verdict{kind: "accept"}}, nil
}

// masquerade marks b masqueraded and ends the base chain.
func (w *walker) masquerade(b branch) (step, error) {
	if w.curType != "nat" || (w.curHook != "postrouting" && w.curHook != "input") {
		return step{}, fmt.Errorf("masquerade in a %s chain at %s", w.curType, w.curHook)
	}
	b.p.masq, b.p.natSrc = true, true
	return step{b: b, v: &verdict{kind: "accept"}}, nil
}

// outcome is how a branch leaves a chain: "return" (back to the caller,
// or to the policy of a base chain), or a verdict: accept, drop, reject.
type outcome struct {
	b    branch
	kind string
}

// chain runs b through a chain from its first rule.
func (w *walker) chain(t *nftTable, name string, b branch, depth int) ([]outcome, error) {
	c := t.chains[name]
	switch {
	case c == nil:
		return nil, fmt.Errorf("no chain %s", name)
	case depth > 16:
		return nil, fmt.Errorf("jumps nest deeper than 16 at %s", name)
	case depth > 0 && c.hook != "":
		return nil, fmt.Errorf("jump to base chain %s", name)
	}
	return w.from(t, c, 0, b, depth)
}

func (w *walker) from(t *nftTable, c *nftChain, i int, b branch, depth int) ([]outcome, error) {
	if i == len(c.rules) {
		return []outcome{{b, "return"}}, nil
	}
	outs, err := w.rule(t, c.rules[i], 0, b, depth)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.rules[i].text, err)
	}
	var res []outcome
	for _, o := range outs {
		if o.kind != "next" {
			res = append(res, o)
			continue
		}
		more, err := w.from(t, c, i+1, o.b, depth)
		if err != nil {
			return nil, err
		}
		res = append(res, more...)
	}
	return res, nil
}

// rule runs b through a rule's statements from the j-th; "next" outcomes
// go on with the chain's next rule.
func (w *walker) rule(t *nftTable, r *nftRule, j int, b branch, depth int) ([]outcome, error) {
	if j == len(r.stmts) {
		return []outcome{{b, "next"}}, nil
	}
	s := r.stmts[j]
	steps := []step{{b: b, v: s.verdict}}
	if s.verdict == nil {
		var err error
		if steps, err = s.run(w, b); err != nil {
			return nil, err
		}
	}
	var res []outcome
	for _, st := range steps {
		var outs []outcome
		var err error
		switch {
		case st.stop:
			outs = []outcome{{st.b, "next"}}
		case st.v == nil:
			outs, err = w.rule(t, r, j+1, st.b, depth)
		default:
			outs, err = w.verdict(t, *st.v, st.b, depth)
		}
		if err != nil {
			return nil, err
		}
		res = append(res, outs...)
	}
	return res, nil
}

// verdict applies v to b.
func (w *walker) verdict(t *nftTable, v verdict, b branch, depth int) ([]outcome, error) {
	switch v.kind {
	case "accept", "drop", "reject", "return":
		return []outcome{{b, v.kind}}, nil
	case "continue":
		return []outcome{{b, "next"}}, nil
	}
	subs, err := w.chain(t, v.chain, b, depth+1)
	if err != nil {
		return nil, err
	}
	for i := range subs {
		if subs[i].kind == "return" && v.kind == "jump" {
			subs[i].kind = "next"
		}
	}
	return subs, nil
}

// hook runs bs through the base chains at hook of the tables of their
// family, in priority order. It returns the branches that pass and those
// dropped or rejected (kind "drop" or "reject").
func (w *walker) hook(hook string, bs []branch) (pass []branch, ended []outcome, err error) {
	type base struct {
		t *nftTable
		c *nftChain
	}
	if len(bs) == 0 {
		return nil, nil, nil
	}
	var chains []base
	family := "ip6"
	if bs[0].p.src.Is4() {
		family = "ip"
	}
	for _, t := range w.rs.tables {
		if t.family != family && t.family != "inet" {
			continue
		}
		for _, name := range t.order {
			if c := t.chains[name]; c.hook == hook {
				chains = append(chains, base{t, c})
			}
		}
	}
	slices.SortStableFunc(chains, func(a, b base) int { return cmp.Compare(a.c.priority, b.c.priority) })
	dstHook := hook == "prerouting" || hook == "output"
	for _, bc := range chains {
		w.curType, w.curHook = bc.c.typ, hook
		var next []branch
		for _, b := range bs {
			// A connection's NAT of each kind is settled once: the nat
			// chains are not consulted again.
			if bc.c.typ == "nat" && (dstHook && b.p.natDst || !dstHook && b.p.natSrc) {
				next = append(next, b)
				continue
			}
			outs, err := w.chain(bc.t, bc.c.name, b, 0)
			if err != nil {
				return nil, nil, err
			}
			for _, o := range outs {
				if o.kind == "return" {
					o.kind = bc.c.policy
				}
				if o.kind == "accept" {
					next = append(next, o.b)
				} else {
					ended = append(ended, o)
				}
			}
		}
		bs = next
	}
	for i := range bs {
		switch hook {
		case "prerouting", "output":
			bs[i].p.natDst = true
		case "postrouting", "input":
			bs[i].p.natSrc = true
		}
	}
	return bs, ended, nil
}

// nftPacket is the first packet of a connection.
type nftPacket struct {
	src, dst netip.Addr
	proto    uint64
	dport    uint16
	iif      string
	fromNode bool
}

// nftResult is one way a packet went through every hook.
type nftResult struct {
	prob    float64
	dnat    netip.AddrPort
	verdict string // drop, reject, or "" when the packet went on
	masq    bool
	updates []dynEntry
}

// walk sends pkt through the hooks it meets.
func (w *walker) walk(pkt nftPacket) ([]nftResult, error) {
	start := branch{prob: 1, p: pktState{src: pkt.src, dst: pkt.dst, proto: pkt.proto, dport: pkt.dport, iif: pkt.iif, origDst: pkt.dst, origDport: pkt.dport}}
	first := "prerouting"
	if pkt.fromNode {
		first = "output"
	}
	pass, ended, err := w.hook(first, []branch{start})
	if err != nil {
		return nil, err
	}
	for _, b := range pass {
		hooks := []string{"forward", "postrouting"}
		switch local := w.local(b.p.dst); {
		case pkt.fromNode && local:
			// Back in through loopback.
			hooks = []string{"postrouting", "prerouting", "input"}
		case pkt.fromNode:
			hooks = []string{"postrouting"}
		case local:
			hooks = []string{"input"}
		}
		bs := []branch{b}
		for _, h := range hooks {
			var e []outcome
			if bs, e, err = w.hook(h, bs); err != nil {
				return nil, err
			}
			ended = append(ended, e...)
		}
		for _, b := range bs {
			ended = append(ended, outcome{b, ""})
		}
	}
	out := make([]nftResult, len(ended))
	for i, o := range ended {
		out[i] = nftResult{prob: o.b.prob, dnat: o.b.p.dnat, verdict: o.kind, masq: o.b.p.masq, updates: o.b.p.updates}
	}
	return out, nil
}
