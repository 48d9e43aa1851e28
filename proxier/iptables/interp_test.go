package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// A small interpreter for the iptables-restore text the renderer emits, so
// the packet-flow table can be checked against the rules themselves. It
// knows the grammar svcproxy writes (-s -d -p -i --dport, addrtype,
// statistic, mark, conntrack, recent, comment; -j/-g to chains, MARK,
// DNAT, MASQUERADE, ACCEPT, DROP, REJECT, RETURN) and fails on anything
// else. A packet walks nat PREROUTING (OUTPUT from the node), filter
// FORWARD or INPUT (OUTPUT, then INPUT when the node sends to itself) and
// nat POSTROUTING; a statistic match splits the walk, so every DNAT target
// is reached with its probability. A recent --rcheck never matches: the
// packet opens a new connection from a new client.

// ipRule is one parsed rule.
type ipRule struct {
	text    string
	matches []func(*walkPacket) bool
	// probability of a statistic match; 0 when there is none.
	probability float64
	target      string
	isGoto      bool
	markOr      uint32
	markXor     uint32
	toDest      netip.AddrPort
}

// ipRuleset is a parsed iptables-restore input: table → chain → rules.
type ipRuleset map[string]map[string][]*ipRule

// walkPacket is a packet and what the rules did to it so far.
type walkPacket struct {
	src, dst netip.Addr
	dport    uint16
	proto    string
	iface    string // input interface; "" for the node's own packets
	mark     uint32
	dnat     netip.AddrPort
	affinity bool // a recent --set recorded the client
	local    func(netip.Addr) bool
}

// branch is one way a walk went: its probability and, when a terminating
// target ended it, that target.
type branch struct {
	p     walkPacket
	prob  float64
	final string
}

// parseRestore parses iptables-restore input.
func parseRestore(text string) (ipRuleset, error) {
	rs := ipRuleset{}
	var table string
	for _, line := range strings.Split(text, "\n") {
		switch {
		case line == "" || line == "COMMIT":
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			rs[table] = map[string][]*ipRule{}
		case strings.HasPrefix(line, ":"):
			rs[table][strings.Fields(line[1:])[0]] = nil
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-I "):
			words, err := tokenize(line)
			if err != nil {
				return nil, err
			}
			chain, args := words[1], words[2:]
			insert := words[0] == "-I"
			if insert {
				if len(args) == 0 || args[0] != "1" {
					return nil, fmt.Errorf("insert not at position 1: %s", line)
				}
				args = args[1:]
			}
			r, err := parseRule(args)
			if err != nil {
				return nil, fmt.Errorf("%v: %s", err, line)
			}
			r.text = line
			if insert {
				rs[table][chain] = append([]*ipRule{r}, rs[table][chain]...)
			} else {
				rs[table][chain] = append(rs[table][chain], r)
			}
		default:
			return nil, fmt.Errorf("unknown line %q", line)
		}
	}
	return rs, nil
}

// tokenize splits a rule into words; a double-quoted word may hold spaces
// and \" escapes.
func tokenize(line string) ([]string, error) {
	var words []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		if line[0] != '"' {
			w, rest, _ := strings.Cut(line, " ")
			words, line = append(words, w), rest
			continue
		}
		end := 1
		for end < len(line) && line[end] != '"' {
			if line[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(line) {
			return nil, fmt.Errorf("unterminated quote in %q", line)
		}
		w, err := strconv.Unquote(line[:end+1])
		if err != nil {
			return nil, err
		}
		words, line = append(words, w), line[end+1:]
	}
	return words, nil
}

// parseRule parses a rule's words after the chain name.
func parseRule(w []string) (*ipRule, error) {
	r := &ipRule{}
	neg := false
	add := func(m func(*walkPacket) bool) {
		n := neg
		r.matches = append(r.matches, func(p *walkPacket) bool { return m(p) != n })
		neg = false
	}
	for i := 0; i < len(w); i++ {
		arg := func() string {
			i++
			if i < len(w) {
				return w[i]
			}
			return ""
		}
		switch opt := w[i]; opt {
		case "!":
			neg = true
		case "-m":
			arg() // the module: its options follow
		case "--comment", "--mode", "--name", "--seconds":
			arg()
		case "--reap", "--random-fully":
		case "-p":
			proto := arg()
			add(func(p *walkPacket) bool { return p.proto == proto })
		case "-s", "-d":
			nets, err := parseNets(arg())
			if err != nil {
				return nil, err
			}
			src := opt == "-s"
			add(func(p *walkPacket) bool {
				a := p.dst
				if src {
					a = p.src
				}
				return slices.ContainsFunc(nets, func(n netip.Prefix) bool { return n.Contains(a) })
			})
		case "-i":
			name := arg()
			add(func(p *walkPacket) bool {
				if prefix, ok := strings.CutSuffix(name, "+"); ok {
					return p.iface != "" && strings.HasPrefix(p.iface, prefix)
				}
				return p.iface == name
			})
		case "--dport":
			port, err := strconv.ParseUint(arg(), 10, 16)
			if err != nil {
				return nil, err
			}
			add(func(p *walkPacket) bool { return p.dport == uint16(port) })
		case "--src-type", "--dst-type":
			if arg() != "LOCAL" {
				return nil, fmt.Errorf("address type other than LOCAL")
			}
			src := opt == "--src-type"
			add(func(p *walkPacket) bool {
				if src {
					return p.local(p.src)
				}
				return p.local(p.dst)
			})
		case "--probability":
			f, err := strconv.ParseFloat(arg(), 64)
			if err != nil {
				return nil, err
			}
			r.probability = f
		case "--mark":
			v, m, err := parseMark(arg())
			if err != nil {
				return nil, err
			}
			add(func(p *walkPacket) bool { return p.mark&m == v })
		case "--ctstate":
			states := strings.Split(arg(), ",")
			add(func(p *walkPacket) bool {
				return slices.Contains(states, "NEW") || (p.dnat.IsValid() && slices.Contains(states, "DNAT"))
			})
		case "--rcheck":
			add(func(*walkPacket) bool { return false })
		case "--set":
			add(func(p *walkPacket) bool { p.affinity = true; return true })
		case "-j", "-g":
			r.target, r.isGoto = arg(), opt == "-g"
		case "--or-mark", "--xor-mark":
			v, err := strconv.ParseUint(arg(), 0, 32)
			if err != nil {
				return nil, err
			}
			if opt == "--or-mark" {
				r.markOr = uint32(v)
			} else {
				r.markXor = uint32(v)
			}
		case "--to-destination":
			ap, err := netip.ParseAddrPort(arg())
			if err != nil {
				return nil, err
			}
			r.toDest = ap
		default:
			return nil, fmt.Errorf("unknown option %q", opt)
		}
	}
	return r, nil
}

func parseNets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		if p, err := netip.ParsePrefix(part); err == nil {
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(part)
		if err != nil {
			return nil, err
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func parseMark(s string) (value, mask uint32, err error) {
	vs, ms, _ := strings.Cut(s, "/")
	v, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, err
	}
	m := uint64(0xffffffff)
	if ms != "" {
		if m, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, err
		}
	}
	return uint32(v), uint32(m), nil
}

// run walks b through a chain from its first rule. Branches come back
// either ended by a terminating target or returned to the caller.
func (rs ipRuleset) run(table, chain string, b branch, depth int) ([]branch, error) {
	if depth > 16 {
		return nil, fmt.Errorf("jumps nest deeper than 16 at %s", chain)
	}
	if _, ok := rs[table][chain]; !ok && !isBuiltin(chain) {
		return nil, fmt.Errorf("jump to undeclared chain %s in %s", chain, table)
	}
	return rs.from(table, chain, 0, b, depth)
}

func isBuiltin(chain string) bool {
	return slices.Contains([]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}, chain)
}

func (rs ipRuleset) from(table, chain string, i int, b branch, depth int) ([]branch, error) {
	rules := rs[table][chain]
	for ; i < len(rules); i++ {
		r := rules[i]
		p := b.p
		if !r.match(&p) {
			continue
		}
		b.p = p
		if r.probability > 0 && r.probability < 1 {
			taken, skipped := b, b
			taken.prob *= r.probability
			skipped.prob *= 1 - r.probability
			out, err := rs.target(table, chain, i, taken, depth)
			if err != nil {
				return nil, err
			}
			rest, err := rs.from(table, chain, i+1, skipped, depth)
			return append(out, rest...), err
		}
		return rs.target(table, chain, i, b, depth)
	}
	return []branch{b}, nil
}

func (r *ipRule) match(p *walkPacket) bool {
	for _, m := range r.matches {
		if !m(p) {
			return false
		}
	}
	return true
}

// target applies rule i's target to b and goes on as the kernel would.
func (rs ipRuleset) target(table, chain string, i int, b branch, depth int) ([]branch, error) {
	r := rs[table][chain][i]
	switch r.target {
	case "":
		return rs.from(table, chain, i+1, b, depth)
	case "ACCEPT", "DROP", "REJECT", "MASQUERADE":
		b.final = r.target
		return []branch{b}, nil
	case "RETURN":
		return []branch{b}, nil
	case "MARK":
		b.p.mark = b.p.mark | r.markOr ^ r.markXor
		return rs.from(table, chain, i+1, b, depth)
	case "DNAT":
		b.p.dnat, b.final = r.toDest, "DNAT"
		return []branch{b}, nil
	}
	subs, err := rs.run(table, r.target, b, depth+1)
	if err != nil {
		return nil, err
	}
	var out []branch
	for _, s := range subs {
		if s.final != "" || r.isGoto {
			out = append(out, s)
			continue
		}
		more, err := rs.from(table, chain, i+1, s, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// flowResult is one way a packet went through every hook.
type flowResult struct {
	prob       float64
	dnat       netip.AddrPort
	filter     string // ACCEPT, DROP, REJECT or "" (no rule decided)
	masquerade bool
	affinity   bool
}

// walk sends p through the hooks a packet from its source meets.
func (rs ipRuleset) walk(p walkPacket, fromNode bool) ([]flowResult, error) {
	natHook := "PREROUTING"
	if fromNode {
		natHook = "OUTPUT"
	}
	nat, err := rs.run("nat", natHook, branch{p: p, prob: 1}, 0)
	if err != nil {
		return nil, err
	}
	var out []flowResult
	for _, b := range nat {
		if b.final != "" && b.final != "DNAT" {
			return nil, fmt.Errorf("nat %s ended in %s", natHook, b.final)
		}
		if b.p.dnat.IsValid() {
			b.p.dst, b.p.dport = b.p.dnat.Addr(), b.p.dnat.Port()
		}
		local := p.local(b.p.dst)
		hooks := []string{"FORWARD"}
		switch {
		case fromNode && local:
			hooks = []string{"OUTPUT", "INPUT"}
		case fromNode:
			hooks = []string{"OUTPUT"}
		case local:
			hooks = []string{"INPUT"}
		}
		res := flowResult{prob: b.prob, dnat: b.p.dnat, affinity: b.p.affinity}
		for _, hook := range hooks {
			fs, err := rs.run("filter", hook, branch{p: b.p, prob: 1}, 0)
			if err != nil {
				return nil, err
			}
			if len(fs) != 1 {
				return nil, fmt.Errorf("filter %s split the packet", hook)
			}
			if res.filter = fs[0].final; res.filter == "DROP" || res.filter == "REJECT" {
				break
			}
		}
		// A packet delivered to this host from elsewhere never reaches
		// POSTROUTING.
		if res.filter != "DROP" && res.filter != "REJECT" && (fromNode || !local) {
			post, err := rs.run("nat", "POSTROUTING", branch{p: b.p, prob: 1}, 0)
			if err != nil {
				return nil, err
			}
			res.masquerade = len(post) == 1 && post[0].final == "MASQUERADE"
		}
		out = append(out, res)
	}
	return out, nil
}
