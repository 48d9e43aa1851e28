package nftables_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Rules: a rule is a list of statements, each parsed into what it does to
// a branch of the walk (interp_walk_test.go). The grammar is the part of
// nft's the renderer writes: selectors (ip/ip6 saddr and daddr, meta
// l4proto, th/tcp/udp/sctp dport, numgen random mod N, ct original ip
// daddr and proto-dst, mark with a mask, iifname; a selector masked to
// zero and or'ed with a literal, "ip daddr & 0.0.0.0 | 10.0.0.1") joined by "." into
// concatenations; matches against a literal, an anonymous set ({ a, b }),
// a set (@s, != @s) or a verdict map (vmap @m); ct state, ct status, fib saddr/daddr type local;
// mark set, update @m { k : v }, dnat to (a literal or a map lookup),
// masquerade, counter, comment; and the verdicts.

// atom is one component of an expression: a selector, or a literal.
type atom struct {
	what   string // saddr, daddr, l4proto, dport, numgen, orig-daddr, orig-dport, mark, iifname; "" for a literal
	typ    nftType
	family string // ip or ip6, for address selectors
	proto  uint64 // "tcp dport" and the like: the packet must be of this protocol
	mod    uint64 // numgen random mod
	mask   uint32 // mark and mask
	lit    nftVal
	// masked: "selector & 0 | lit", which is lit on a packet that has
	// the selector.
	masked bool
}

// expr is a concatenation of atoms; end is the index of the first word
// after it.
type expr struct {
	atoms []atom
	end   int
}

func (e expr) types() []nftType {
	out := make([]nftType, len(e.atoms))
	for i, a := range e.atoms {
		out[i] = a.typ
	}
	return out
}

func (e expr) hasNumgen() bool {
	return slices.ContainsFunc(e.atoms, func(a atom) bool { return a.what == "numgen" })
}

// stmt is one statement: a verdict, or what run does to a branch.
type stmt struct {
	verdict *verdict
	run     func(w *walker, b branch) ([]step, error)
}

// step is one way a statement leaves a branch: on to the next statement,
// stopped (the rule does not match), or ended by a verdict.
type step struct {
	b    branch
	stop bool
	v    *verdict
}

func (t *nftTable) addrType(family string) (nftType, error) {
	if t.family != "inet" && t.family != family {
		return "", fmt.Errorf("%s selector in an %s table", family, t.family)
	}
	if family == "ip6" {
		return tAddr6, nil
	}
	return tAddr4, nil
}

// parseExpr parses a concatenation at words[i:]. lits gives the types of
// the components where literals may stand (nil: selectors only).
func (t *nftTable) parseExpr(words []string, i int, lits []nftType) (expr, error) {
	var e expr
	word := func(k int) string {
		if i+k < len(words) {
			return words[i+k]
		}
		return ""
	}
	for {
		var a atom
		n := 2
		var err error
		switch w0, w1 := word(0), word(1); {
		case (w0 == "ip" || w0 == "ip6") && (w1 == "saddr" || w1 == "daddr"):
			a.what, a.family = w1, w0
			a.typ, err = t.addrType(w0)
		case w0 == "meta" && w1 == "l4proto":
			a.what, a.typ = "l4proto", tProto
		case w0 == "meta" && w1 == "mark", w0 == "mark":
			a.what, a.typ, a.mask = "mark", tMark, 0xffffffff
			if w0 == "mark" {
				n = 1
			}
			if word(n) == "and" {
				var m uint64
				if m, err = parseNum(tMark, word(n+1)); err == nil {
					a.mask, n = uint32(m), n+2
				}
			}
		case w0 == "iifname", w0 == "meta" && w1 == "iifname":
			a.what, a.typ = "iifname", tIfname
			if w0 == "iifname" {
				n = 1
			}
		case w1 == "dport" && slices.Contains([]string{"th", "tcp", "udp", "sctp"}, w0):
			a.what, a.typ, a.proto = "dport", tPort, protoNumbers[w0]
		case w0 == "numgen":
			if w1 != "random" || word(2) != "mod" {
				return e, fmt.Errorf("numgen other than random mod N")
			}
			a.what, a.typ, n = "numgen", tInt, 4
			if a.mod, err = strconv.ParseUint(word(3), 10, 32); err == nil && a.mod == 0 {
				err = fmt.Errorf("numgen mod 0")
			}
		case w0 == "ct" && w1 == "original" && word(2) == "proto-dst":
			a.what, a.typ, n = "orig-dport", tPort, 3
		case w0 == "ct" && w1 == "original" && word(3) == "daddr":
			a.what, a.family, n = "orig-daddr", word(2), 4
			a.typ, err = t.addrType(word(2))
		case len(e.atoms) < len(lits) && w0 != "" && lits[len(e.atoms)] != tVerdict:
			a.typ, n = lits[len(e.atoms)], 1
			a.lit, err = parseVal(a.typ, w0, false)
		default:
			return e, fmt.Errorf("unknown expression at %q", strings.Join(words[i:], " "))
		}
		if err == nil && a.what != "" && word(n) == "&" && word(n+2) == "|" {
			err = a.parseMasked(word(n+1), word(n+3))
			n += 4
		}
		if err != nil {
			return e, err
		}
		e.atoms = append(e.atoms, a)
		if i += n; word(0) != "." {
			e.end = i
			return e, nil
		}
		i++
	}
}

// parseMasked parses the mask and the value of "selector & mask | value":
// only a zero mask, which makes the selector the value.
func (a *atom) parseMasked(mask, value string) error {
	m, err := parseVal(a.typ, mask, false)
	if err != nil {
		return err
	}
	if m.lo.IsValid() && !m.lo.IsUnspecified() || !m.lo.IsValid() && m.n != 0 {
		return fmt.Errorf("a selector masked with %s, not zero", mask)
	}
	a.masked = true
	a.lit, err = parseVal(a.typ, value, false)
	return err
}

// sameTypes checks that an expression fits a set's key or value.
func sameTypes(what string, got, want []nftType) error {
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s of type %v used as %v", what, got, want)
	}
	return nil
}

// parseRule parses a rule's words after the chain name.
func (t *nftTable) parseRule(words []string) (*nftRule, error) {
	r := &nftRule{}
	ended := false // a verdict or a NAT statement was seen: only a comment may follow
	for i := 0; i < len(words); {
		w := words[i]
		if w == "comment" {
			if i+1 >= len(words) || !strings.HasPrefix(words[i+1], `"`) {
				return nil, fmt.Errorf("comment without a string")
			}
			i += 2
			continue
		}
		if ended {
			return nil, fmt.Errorf("statement after the end of the rule at %q", strings.Join(words[i:], " "))
		}
		s, next, err := t.parseStmt(words, i)
		if err != nil {
			return nil, err
		}
		ended = s.verdict != nil || w == "dnat" || w == "masquerade"
		if s.verdict != nil || s.run != nil {
			r.stmts = append(r.stmts, s)
		}
		i = next
	}
	return r, nil
}

// parseStmt parses the statement at words[i] and returns the index after
// it.
func (t *nftTable) parseStmt(words []string, i int) (stmt, int, error) {
	word := func(k int) string {
		if i+k < len(words) {
			return words[i+k]
		}
		return ""
	}
	switch w := word(0); {
	case w == "counter":
		if word(1) == "packets" && word(3) == "bytes" {
			return stmt{}, i + 5, nil
		}
		return stmt{}, i + 1, nil
	case w == "reject" && word(1) == "with":
		return stmt{}, 0, fmt.Errorf("reject with a type")
	case w == "jump" || w == "goto":
		v, err := parseVerdict(words[i : i+min(2, len(words)-i)])
		return stmt{verdict: &v}, i + 2, err
	case slices.Contains([]string{"accept", "drop", "reject", "return", "continue"}, w):
		return stmt{verdict: &verdict{kind: w}}, i + 1, nil
	case w == "masquerade":
		n := 1
		for slices.Contains([]string{"fully-random", "random", "persistent"}, word(n)) {
			n++
		}
		return stmt{run: func(w *walker, b branch) ([]step, error) {
			s, err := w.masquerade(b)
			return []step{s}, err
		}}, i + n, nil
	case w == "dnat":
		return t.parseDNAT(words, i)
	case w == "mark" && word(1) == "set", w == "meta" && word(1) == "mark" && word(2) == "set":
		return t.parseMarkSet(words, i)
	case w == "update" || w == "add":
		return t.parseUpdate(words, i)
	case w == "ct" && (word(1) == "state" || word(1) == "status"):
		return parseCT(words, i)
	case w == "fib":
		return parseFib(words, i)
	}
	return t.parseMatch(words, i)
}

// parseMatch parses an expression and what it is matched against.
func (t *nftTable) parseMatch(words []string, i int) (stmt, int, error) {
	e, err := t.parseExpr(words, i, nil)
	if err != nil {
		return stmt{}, 0, err
	}
	j := e.end
	word := func(k int) string {
		if j+k < len(words) {
			return words[j+k]
		}
		return ""
	}
	neg := word(0) == "!="
	if neg || word(0) == "==" {
		j++
	}
	switch w := word(0); {
	case strings.HasPrefix(w, "@"):
		s, err := t.setOf(w, false)
		if err == nil {
			err = sameTypes(w, e.types(), s.key)
		}
		return stmt{run: func(wk *walker, b branch) ([]step, error) {
			return eachAlt(e, b, func(b branch, vals []nftVal) (step, error) {
				return step{b: b, stop: (wk.lookup(s, vals) != nil) == neg}, nil
			})
		}}, j + 1, err
	case w == "vmap" && !neg:
		s, err := t.setOf(word(1), true)
		if err == nil {
			err = sameTypes(word(1), e.types(), s.key)
		}
		if err == nil && !slices.Equal(s.value, []nftType{tVerdict}) {
			err = fmt.Errorf("vmap @%s holds no verdicts", s.name)
		}
		return stmt{run: func(wk *walker, b branch) ([]step, error) {
			return eachAlt(e, b, func(b branch, vals []nftVal) (step, error) {
				if el := wk.lookup(s, vals); el != nil {
					return step{b: b, v: el.verdict}, nil
				}
				return step{b: b, stop: true}, nil
			})
		}}, j + 2, err
	case w == "{" && len(e.atoms) == 1:
		// An anonymous set: "{ v, v, ... }".
		end := slices.Index(words[j:], "}")
		if end < 0 {
			return stmt{}, 0, fmt.Errorf("anonymous set without its end")
		}
		var vs []nftVal
		for _, vw := range splitWords(words[j+1:j+end], ",") {
			if len(vw) != 1 {
				return stmt{}, 0, fmt.Errorf("anonymous set element %q", strings.Join(vw, " "))
			}
			v, err := parseVal(e.atoms[0].typ, vw[0], true)
			if err != nil {
				return stmt{}, 0, err
			}
			vs = append(vs, v)
		}
		return stmt{run: func(_ *walker, b branch) ([]step, error) {
			return eachAlt(e, b, func(b branch, vals []nftVal) (step, error) {
				in := slices.ContainsFunc(vs, func(v nftVal) bool { return v.contains(vals[0]) })
				return step{b: b, stop: in == neg}, nil
			})
		}}, j + end + 1, nil
	case len(e.atoms) == 1 && w != "":
		v, err := parseVal(e.atoms[0].typ, w, true)
		return stmt{run: func(_ *walker, b branch) ([]step, error) {
			return eachAlt(e, b, func(b branch, vals []nftVal) (step, error) {
				return step{b: b, stop: v.contains(vals[0]) == neg}, nil
			})
		}}, j + 1, err
	}
	return stmt{}, 0, fmt.Errorf("unknown match at %q", strings.Join(words[i:], " "))
}

// setOf is the set (or, for a map, the map) that "@name" names.
func (t *nftTable) setOf(ref string, isMap bool) (*nftSet, error) {
	name, ok := strings.CutPrefix(ref, "@")
	s := t.sets[name]
	if !ok || s == nil || s.isMap != isMap {
		return nil, fmt.Errorf("no such set or map %q", ref)
	}
	return s, nil
}

// eachAlt evaluates e for b and applies f to every way it goes (numgen
// splits it); a selector the packet lacks stops the rule.
func eachAlt(e expr, b branch, f func(branch, []nftVal) (step, error)) ([]step, error) {
	alts, ok := b.p.eval(e)
	if !ok {
		return []step{{b: b, stop: true}}, nil
	}
	out := make([]step, 0, len(alts))
	for _, a := range alts {
		nb := b
		nb.prob *= a.prob
		s, err := f(nb, a.vals)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// parseCT parses "ct state a,b" or "ct status a,b" at words[i].
func parseCT(words []string, i int) (stmt, int, error) {
	key := words[i+1]
	known := map[string][]string{"state": {"new", "established", "related", "invalid", "untracked"}, "status": {"dnat", "snat"}}[key]
	var states []string
	next := i + 2
	for ; next < len(words); next += 2 {
		if !slices.Contains(known, words[next]) {
			return stmt{}, 0, fmt.Errorf("unknown ct %s %q", key, words[next])
		}
		states = append(states, words[next])
		if next+1 == len(words) || words[next+1] != "," {
			next++
			break
		}
	}
	if len(states) == 0 {
		return stmt{}, 0, fmt.Errorf("ct %s without states", key)
	}
	return stmt{run: func(_ *walker, b branch) ([]step, error) {
		// The first packet of a connection is new; its status is dnat
		// once a DNAT applied, snat once masqueraded.
		match := key == "state" && slices.Contains(states, "new") ||
			key == "status" && (slices.Contains(states, "dnat") && b.p.dnat.IsValid() || slices.Contains(states, "snat") && b.p.masq)
		return []step{{b: b, stop: !match}}, nil
	}}, next, nil
}

// parseFib parses "fib saddr|daddr type [!=] local" at words[i].
func parseFib(words []string, i int) (stmt, int, error) {
	w := words[i:]
	neg := len(w) > 3 && w[3] == "!="
	n := 4
	if neg {
		n = 5
	}
	if len(w) < n || (w[1] != "saddr" && w[1] != "daddr") || w[2] != "type" || w[n-1] != "local" {
		return stmt{}, 0, fmt.Errorf("fib other than saddr or daddr type local at %q", strings.Join(w, " "))
	}
	src := w[1] == "saddr"
	return stmt{run: func(wk *walker, b branch) ([]step, error) {
		a := b.p.dst
		if src {
			a = b.p.src
		}
		return []step{{b: b, stop: wk.local(a) == neg}}, nil
	}}, i + n, nil
}

// parseMarkSet parses "[meta] mark set [mark or|xor|and] V" at words[i].
func (t *nftTable) parseMarkSet(words []string, i int) (stmt, int, error) {
	if words[i] == "meta" {
		i++
	}
	j := i + 2
	op, operand := "", ""
	switch {
	case j+2 < len(words) && words[j] == "mark" && slices.Contains([]string{"or", "xor", "and"}, words[j+1]):
		op, operand, j = words[j+1], words[j+2], j+3
	case j < len(words):
		op, operand, j = "=", words[j], j+1
	default:
		return stmt{}, 0, fmt.Errorf("mark set what")
	}
	v, err := parseNum(tMark, operand)
	m := uint32(v)
	return stmt{run: func(_ *walker, b branch) ([]step, error) {
		switch op {
		case "or":
			b.p.mark |= m
		case "xor":
			b.p.mark ^= m
		case "and":
			b.p.mark &= m
		default:
			b.p.mark = m
		}
		return []step{{b: b}}, nil
	}}, j, err
}

// parseUpdate parses "update @m { key : value }" (or add): the packet
// path writes an entry into a dynamic set or map.
func (t *nftTable) parseUpdate(words []string, i int) (stmt, int, error) {
	fail := func(err error) (stmt, int, error) { return stmt{}, 0, err }
	if i+2 >= len(words) || !strings.HasPrefix(words[i+1], "@") || words[i+2] != "{" {
		return fail(fmt.Errorf("unknown %s statement", words[i]))
	}
	name := strings.TrimPrefix(words[i+1], "@")
	s := t.sets[name]
	if s == nil || !s.dynamic {
		return fail(fmt.Errorf("%s of %s, which is no dynamic set or map", words[i], name))
	}
	key, err := t.parseExpr(words, i+3, s.key)
	if err != nil {
		return fail(err)
	}
	var value expr
	j := key.end
	if s.isMap {
		if j >= len(words) || words[j] != ":" {
			return fail(fmt.Errorf("%s of a map without a value", words[i]))
		}
		if value, err = t.parseExpr(words, j+1, s.value); err != nil {
			return fail(err)
		}
		j = value.end
	}
	if j >= len(words) || words[j] != "}" {
		return fail(fmt.Errorf("unterminated %s", words[i]))
	}
	if err := sameTypes("key", key.types(), s.key); err != nil {
		return fail(err)
	}
	if err := sameTypes("value", value.types(), s.value); s.isMap && err != nil {
		return fail(err)
	}
	if key.hasNumgen() || value.hasNumgen() {
		return fail(fmt.Errorf("numgen in an update"))
	}
	return stmt{run: func(_ *walker, b branch) ([]step, error) {
		k, okk := b.p.eval(key)
		v, okv := b.p.eval(value)
		if !okk || !okv {
			return []step{{b: b, stop: true}}, nil
		}
		e := dynEntry{set: s, elem: nftElem{key: k[0].vals}}
		if s.isMap {
			e.elem.value = v[0].vals
		}
		b.p.updates = append(slices.Clip(b.p.updates), e)
		return []step{{b: b}}, nil
	}}, j + 1, nil
}

// parseDNAT parses "dnat [ip|ip6] to" a literal address[:port] or
// "<expr> map @m" whose values are an address and a port.
func (t *nftTable) parseDNAT(words []string, i int) (stmt, int, error) {
	fail := func(err error) (stmt, int, error) { return stmt{}, 0, err }
	j := i + 1
	if j < len(words) && (words[j] == "ip" || words[j] == "ip6") {
		if _, err := t.addrType(words[j]); err != nil {
			return fail(err)
		}
		j++
	} else if t.family == "inet" {
		return fail(fmt.Errorf("dnat without a family in an inet table"))
	}
	if j >= len(words) || words[j] != "to" {
		return fail(fmt.Errorf("dnat without to"))
	}
	j++
	if j < len(words) {
		ap, err := netip.ParseAddrPort(words[j])
		if a, aerr := netip.ParseAddr(words[j]); aerr == nil {
			ap, err = netip.AddrPortFrom(a, 0), nil
		}
		if err == nil {
			return stmt{run: func(w *walker, b branch) ([]step, error) {
				s, err := w.dnat(b, ap)
				return []step{s}, err
			}}, j + 1, nil
		}
	}
	key, err := t.parseExpr(words, j, nil)
	if err != nil {
		return fail(err)
	}
	j = key.end
	if j+1 >= len(words) || words[j] != "map" {
		return fail(fmt.Errorf("dnat to an expression without a map"))
	}
	s, err := t.setOf(words[j+1], true)
	if err == nil {
		err = sameTypes(words[j+1], key.types(), s.key)
	}
	if err != nil {
		return fail(err)
	}
	family := map[nftType]string{tAddr4: "ip", tAddr6: "ip6"}[s.value[0]]
	if family == "" || len(s.value) > 2 || len(s.value) == 2 && s.value[1] != tPort {
		return fail(fmt.Errorf("dnat through @%s, whose values are %v", s.name, s.value))
	}
	if _, err := t.addrType(family); err != nil {
		return fail(err)
	}
	return stmt{run: func(w *walker, b branch) ([]step, error) {
		return eachAlt(key, b, func(b branch, vals []nftVal) (step, error) {
			el := w.lookup(s, vals)
			if el == nil {
				return step{b: b, stop: true}, nil
			}
			port := uint16(0)
			if len(el.value) == 2 {
				port = uint16(el.value[1].n)
			}
			return w.dnat(b, netip.AddrPortFrom(el.value[0].lo, port))
		})
	}}, j + 2, nil
}
