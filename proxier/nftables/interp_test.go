package nftables_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// A small interpreter for the nft -f text the renderer emits, so the
// packet-flow table can be checked against the ruleset itself. This file
// parses the commands: tables, chains (base chains with type, hook,
// priority and policy), sets and maps with typed keys and values (type or
// typeof; interval, dynamic and timeout flags) and their elements.
// interp_values_test.go holds the typed values, interp_rule_test.go parses
// rules into statements, interp_walk_test.go runs packets through them.
// Whatever the interpreter does not know is an error, so a construct the
// renderer starts to emit cannot pass unread.

// nftElem is one element of a set or map.
type nftElem struct {
	key, value []nftVal
	verdict    *verdict
}

// nftSet is a set or a map.
type nftSet struct {
	name       string
	isMap      bool
	key, value []nftType
	interval   bool
	dynamic    bool
	elems      []nftElem
}

// nftChain is a chain; a base chain has a hook.
type nftChain struct {
	name     string
	typ      string // filter, nat, route
	hook     string
	priority int
	policy   string // accept (the default) or drop
	rules    []*nftRule
}

// nftRule is a parsed rule.
type nftRule struct {
	text  string
	stmts []stmt
}

// nftTable is one table.
type nftTable struct {
	family, name string
	chains       map[string]*nftChain
	order        []string // chains as declared
	sets         map[string]*nftSet
}

// nftRuleset is every table a transaction leaves behind.
type nftRuleset struct {
	tables []*nftTable
}

func (rs *nftRuleset) table(family, name string) *nftTable {
	for _, t := range rs.tables {
		if t.family == family && t.name == name {
			return t
		}
	}
	return nil
}

// parseNFT parses nft -f input.
func parseNFT(text string) (*nftRuleset, error) {
	rs := &nftRuleset{}
	for n, line := range strings.Split(text, "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := rs.command(line); err != nil {
			return nil, fmt.Errorf("line %d: %v: %s", n+1, err, line)
		}
	}
	for _, t := range rs.tables {
		if err := t.checkTargets(); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

var families = []string{"ip", "ip6", "inet"}

// command runs one line: add table/chain/set/map/rule/element, or delete
// table.
func (rs *nftRuleset) command(line string) error {
	words, err := tokenize(line)
	if err != nil {
		return err
	}
	if len(words) < 4 || !slices.Contains(families, words[2]) {
		return fmt.Errorf("unknown command")
	}
	verb, object, family, tname := words[0], words[1], words[2], words[3]
	t := rs.table(family, tname)
	switch {
	case verb == "add" && object == "table":
		if t == nil {
			rs.tables = append(rs.tables, &nftTable{family: family, name: tname, chains: map[string]*nftChain{}, sets: map[string]*nftSet{}})
		}
		return checkSpec(words[4:], map[string]int{"comment": 1})
	case verb == "delete" && object == "table":
		if t == nil || len(words) != 4 {
			return fmt.Errorf("no such table")
		}
		rs.tables = slices.DeleteFunc(rs.tables, func(x *nftTable) bool { return x == t })
		return nil
	case verb != "add":
		return fmt.Errorf("unknown command %q", verb)
	case t == nil:
		return fmt.Errorf("no table %s %s", family, tname)
	case len(words) < 5:
		return fmt.Errorf("no name")
	}
	name, rest := words[4], words[5:]
	switch object {
	case "chain":
		return t.addChain(name, rest)
	case "set", "map":
		return t.addSet(name, object == "map", rest)
	case "rule":
		c := t.chains[name]
		if c == nil {
			return fmt.Errorf("no chain %s", name)
		}
		r, err := t.parseRule(rest)
		if err != nil {
			return err
		}
		r.text = line
		c.rules = append(c.rules, r)
		return nil
	case "element":
		s := t.sets[name]
		if s == nil {
			return fmt.Errorf("no set %s", name)
		}
		return s.addElements(rest)
	}
	return fmt.Errorf("unknown object %q", object)
}

// tokenize splits a line into words: a double-quoted string is one word
// (quotes kept); braces, commas and semicolons are words of their own, and
// so is a colon that stands alone (one inside a word, as in an IPv6
// address or "ip:port", belongs to the word).
func tokenize(line string) ([]string, error) {
	const stops = " \t\"{},;"
	var words []string
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '"':
			end := strings.IndexByte(line[i+1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote")
			}
			words = append(words, line[i:i+end+2])
			i += end + 2
		case strings.IndexByte("{},;", c) >= 0, c == ':' && (i+1 == len(line) || line[i+1] == ' '):
			words = append(words, string(c))
			i++
		default:
			end := i
			for end < len(line) && strings.IndexByte(stops, line[end]) < 0 {
				end++
			}
			words = append(words, line[i:end])
			i = end
		}
	}
	return words, nil
}

// specFields splits a "{ a b ; c d ; }" specification into its fields.
func specFields(words []string) ([][]string, error) {
	if len(words) == 0 {
		return nil, nil
	}
	if words[0] != "{" || words[len(words)-1] != "}" {
		return nil, fmt.Errorf("specification not in braces")
	}
	var out [][]string
	for _, f := range splitWords(words[1:len(words)-1], ";") {
		if len(f) > 0 {
			out = append(out, f)
		}
	}
	return out, nil
}

// checkSpec accepts a specification made only of the given fields, each
// with that many words after its name.
func checkSpec(words []string, known map[string]int) error {
	fields, err := specFields(words)
	for _, f := range fields {
		if n, ok := known[f[0]]; !ok || len(f) != n+1 {
			return fmt.Errorf("unknown field %q", strings.Join(f, " "))
		}
	}
	return err
}

func splitWords(words []string, sep string) [][]string {
	out := [][]string{nil}
	for _, w := range words {
		if w == sep {
			out = append(out, nil)
			continue
		}
		out[len(out)-1] = append(out[len(out)-1], w)
	}
	return out
}

var namedPriorities = map[string]int{"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}

func (t *nftTable) addChain(name string, spec []string) error {
	if t.chains[name] != nil {
		return fmt.Errorf("chain %s exists", name)
	}
	c := &nftChain{name: name, policy: "accept"}
	fields, err := specFields(spec)
	if err != nil {
		return err
	}
	for _, f := range fields {
		switch {
		case f[0] == "type" && len(f) == 6 && f[2] == "hook" && f[4] == "priority":
			c.typ, c.hook = f[1], f[3]
			if !slices.Contains([]string{"filter", "nat", "route"}, c.typ) ||
				!slices.Contains([]string{"prerouting", "input", "forward", "output", "postrouting"}, c.hook) {
				return fmt.Errorf("unknown chain type or hook in %q", strings.Join(f, " "))
			}
			if c.priority, err = parsePriority(f[5]); err != nil {
				return err
			}
		case f[0] == "policy" && len(f) == 2 && (f[1] == "accept" || f[1] == "drop"):
			c.policy = f[1]
		case f[0] == "comment" && len(f) == 2:
		default:
			return fmt.Errorf("unknown chain field %q", strings.Join(f, " "))
		}
	}
	if c.hook == "" && c.policy != "accept" {
		return fmt.Errorf("a policy on a regular chain")
	}
	t.chains[name] = c
	t.order = append(t.order, name)
	return nil
}

// parsePriority parses a number or a named priority with an offset
// ("dstnat", "filter + 10").
func parsePriority(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, nil
	}
	for name, base := range namedPriorities {
		if rest, ok := strings.CutPrefix(s, name); ok {
			if rest == "" {
				return base, nil
			}
			if n, err := strconv.Atoi(rest); err == nil {
				return base + n, nil
			}
		}
	}
	return 0, fmt.Errorf("unknown priority %q", s)
}

func (t *nftTable) addSet(name string, isMap bool, spec []string) error {
	if t.sets[name] != nil {
		return fmt.Errorf("set %s exists", name)
	}
	s := &nftSet{name: name, isMap: isMap}
	fields, err := specFields(spec)
	if err != nil {
		return err
	}
	for _, f := range fields {
		switch f[0] {
		case "type", "typeof":
			key, value, isKV := cutWords(f[1:], ":")
			if isKV != isMap {
				return fmt.Errorf("a set with a value or a map without one")
			}
			if s.key, err = t.fieldTypes(f[0], key); err == nil && isMap {
				s.value, err = t.fieldTypes(f[0], value)
			}
			if err != nil {
				return err
			}
		case "flags":
			for _, fl := range strings.Split(strings.Join(f[1:], ""), ",") {
				switch fl {
				case "interval":
					s.interval = true
				case "dynamic":
					s.dynamic = true
				case "timeout":
				default:
					return fmt.Errorf("unknown flag %q", fl)
				}
			}
		case "timeout", "comment":
			if len(f) != 2 {
				return fmt.Errorf("bad field %q", strings.Join(f, " "))
			}
		default:
			return fmt.Errorf("unknown set field %q", strings.Join(f, " "))
		}
	}
	if s.key == nil {
		return fmt.Errorf("set %s has no type", name)
	}
	if isMap && slices.Contains(s.value, tVerdict) && len(s.value) != 1 {
		return fmt.Errorf("a verdict in a concatenation")
	}
	t.sets[name] = s
	return nil
}

func cutWords(words []string, sep string) (before, after []string, found bool) {
	if i := slices.Index(words, sep); i >= 0 {
		return words[:i], words[i+1:], true
	}
	return words, nil, false
}

// fieldTypes reads a "type" (type names joined by ".") or a "typeof"
// (expressions joined by ".") into component types.
func (t *nftTable) fieldTypes(how string, words []string) ([]nftType, error) {
	if how == "typeof" {
		if len(words) == 1 && words[0] == "verdict" {
			return []nftType{tVerdict}, nil
		}
		e, err := t.parseExpr(words, 0, nil)
		if err != nil {
			return nil, err
		}
		if e.end != len(words) {
			return nil, fmt.Errorf("unknown words in typeof: %q", strings.Join(words[e.end:], " "))
		}
		return e.types(), nil
	}
	var out []nftType
	for _, part := range splitWords(words, ".") {
		if len(part) != 1 || !slices.Contains([]nftType{tAddr4, tAddr6, tProto, tPort, tMark, tIfname, tVerdict}, nftType(part[0])) {
			return nil, fmt.Errorf("unknown type %q", strings.Join(part, " "))
		}
		out = append(out, nftType(part[0]))
	}
	return out, nil
}

// addElements adds "{ k . k [: v . v], ... }" to s, each component typed
// by the set's key or value.
func (s *nftSet) addElements(words []string) error {
	if len(words) < 2 || words[0] != "{" || words[len(words)-1] != "}" {
		return fmt.Errorf("elements not in braces")
	}
	for _, ew := range splitWords(words[1:len(words)-1], ",") {
		key, value, hasValue := cutWords(ew, ":")
		if hasValue != s.isMap {
			return fmt.Errorf("element %q: a value in a set or none in a map", strings.Join(ew, " "))
		}
		e := nftElem{}
		var err error
		if e.key, err = parseVals(s.key, key, s.interval); err != nil {
			return err
		}
		switch {
		case !hasValue:
		case s.value[0] == tVerdict:
			v, err := parseVerdict(value)
			if err != nil {
				return err
			}
			e.verdict = &v
		default:
			if e.value, err = parseVals(s.value, value, false); err != nil {
				return err
			}
		}
		if err := s.insert(e); err != nil {
			return err
		}
	}
	return nil
}

// insert adds e unless an element with the same key is there: the same
// element again is a no-op; another value, or an overlapping interval,
// is an error as in the kernel.
func (s *nftSet) insert(e nftElem) error {
	for _, x := range s.elems {
		if !slices.EqualFunc(x.key, e.key, nftVal.overlaps) {
			continue
		}
		same := slices.Equal(x.key, e.key) && slices.Equal(x.value, e.value) &&
			(x.verdict == nil) == (e.verdict == nil) && (x.verdict == nil || *x.verdict == *e.verdict)
		if !same {
			return fmt.Errorf("element %v clashes with %v in %s", e.key, x.key, s.name)
		}
		return nil
	}
	s.elems = append(s.elems, e)
	return nil
}

// parseVals parses the components of a concatenation "a . b . c".
func parseVals(types []nftType, words []string, ranged bool) ([]nftVal, error) {
	parts := splitWords(words, ".")
	if len(parts) != len(types) {
		return nil, fmt.Errorf("%q has %d components, want %v", strings.Join(words, " "), len(parts), types)
	}
	out := make([]nftVal, len(parts))
	for i, p := range parts {
		if len(p) != 1 {
			return nil, fmt.Errorf("bad component %q", strings.Join(p, " "))
		}
		v, err := parseVal(types[i], p[0], ranged)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

// checkTargets checks that every jump and goto, in rules and verdict
// maps, names a chain of the table.
func (t *nftTable) checkTargets() error {
	check := func(v *verdict, where string) error {
		if v != nil && v.chain != "" && t.chains[v.chain] == nil {
			return fmt.Errorf("%s: %s to undeclared chain", where, v)
		}
		return nil
	}
	for _, name := range t.order {
		for _, r := range t.chains[name].rules {
			for _, s := range r.stmts {
				if err := check(s.verdict, r.text); err != nil {
					return err
				}
			}
		}
	}
	for _, s := range t.sets {
		for _, e := range s.elems {
			if err := check(e.verdict, "element of "+s.name); err != nil {
				return err
			}
		}
	}
	return nil
}
