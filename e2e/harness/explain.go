package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Explanation is what `svcproxy explain -o json` answers: proxier.Trace's
// fields (decoded here as a script would read them: a Policy is printed by
// its name), the rules that carry it out in the proxy mode, and the kind
// of source explain took the packet for.
type Explanation struct {
	Verdict          proxier.Outcome     `json:"verdict"`
	Reason           proxier.Reason      `json:"reason"`
	Port             *ExplainedPort      `json:"port"`
	Policy           *ExplainedPolicy    `json:"policy"`
	Endpoints        []ExplainedEndpoint `json:"endpoints"`
	Affinity         *ExplainedAffinity  `json:"affinity"`
	Masquerade       bool                `json:"masquerade"`
	MasqueradeReason proxier.Reason      `json:"masqueradeReason"`
	Rules            []ExplainedRule     `json:"rules"`
	SourceKind       proxier.SourceKind  `json:"sourceKind"`
	SourceKindWhy    string              `json:"sourceKindWhy"`
	Mode             string              `json:"mode"`
	Family           string              `json:"family"`
	// JSON is the answer as printed, for failure messages.
	JSON string `json:"-"`
}

// ExplainedPort is the service port the packet met, and how.
type ExplainedPort struct {
	Name    proxier.ServicePortName `json:"name"`
	Via     proxier.Via             `json:"via"`
	Address netip.AddrPort          `json:"address"`
}

// ExplainedPolicy is the traffic policy in force ("Cluster" or "Local").
type ExplainedPolicy struct {
	Traffic      string `json:"traffic"`
	Policy       string `json:"policy"`
	ShortCircuit bool   `json:"shortCircuit"`
}

// ExplainedEndpoint is one endpoint the packet may be DNATed to.
type ExplainedEndpoint struct {
	Endpoint    netip.AddrPort `json:"endpoint"`
	Node        string         `json:"node"`
	Local       bool           `json:"local"`
	Probability float64        `json:"probability"`
	Masquerade  bool           `json:"masquerade"`
	Hairpin     bool           `json:"hairpin"`
}

// ExplainedRule is one rule or set element that does a step of the
// trace, as --dry-run prints it: an iptables rule line (Table, Chain,
// Rule), an nftables chain rule (Chain, Rule) or set or map element (Set,
// Element).
type ExplainedRule struct {
	Step    string `json:"step"`
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Rule    string `json:"rule"`
	Set     string `json:"set"`
	Element string `json:"element"`
}

// ExplainedAffinity is the port's ClientIP session affinity.
type ExplainedAffinity struct {
	TimeoutSeconds int32            `json:"timeoutSeconds"`
	Protocol       proxier.Protocol `json:"protocol"`
	Destinations   []netip.AddrPort `json:"destinations"`
}

// ExplainArgs is the command line of `svcproxy explain`: the subcommand,
// the flags the running proxy has (SvcproxyArgs, so the answer is about
// the same configuration), `-o json`, then extra (--from, --to, ...).
func (e *Env) ExplainArgs(extra ...string) []string {
	args := append([]string{"explain"}, e.SvcproxyArgs()...)
	args = append(args, "-o", "json")
	return append(args, extra...)
}

// Explain runs `svcproxy explain` (ExplainArgs) in the node namespace,
// against the live API server, and decodes its answer. An answer without
// a verdict is an error: it did not follow the format.
func (e *Env) Explain(ctx context.Context, extra ...string) (*Explanation, error) {
	if e.Bins.Svcproxy == "" {
		return nil, errors.New("svcproxy was not built (Options.SkipSvcproxy)")
	}
	argv := append([]string{e.Bins.Svcproxy}, e.ExplainArgs(extra...)...)
	cmd := e.Node.Command(ctx, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("svcproxy explain %s: %w\nstdout:\n%s\nstderr:\n%s",
			strings.Join(extra, " "), err, out.String(), tailLines(errb.String(), 20))
	}
	ex := &Explanation{JSON: out.String()}
	if err := json.Unmarshal(out.Bytes(), ex); err != nil {
		return nil, fmt.Errorf("svcproxy explain %s: decode its JSON: %w\n%s", strings.Join(extra, " "), err, out.String())
	}
	if ex.Verdict == "" {
		return nil, fmt.Errorf("svcproxy explain %s: no verdict in its answer:\n%s", strings.Join(extra, " "), out.String())
	}
	return ex, nil
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// MissingRules looks up in the node's kernel each rule and element ex
// names, as an operator would, and describes those it does not find. An
// iptables rule is checked with `iptables -C` (the kernel compares it as
// parsed, so iptables-save's spelling does not matter); an nftables rule
// must be a rule of its chain (as nftSignature tells rules apart) and an
// element one of its set or map, in `nft list table`.
func (e *Env) MissingRules(ctx context.Context, ex *Explanation) ([]string, error) {
	var missing []string
	tables := map[string]map[string]string{} // nft table -> chain/set -> block
	for _, r := range ex.Rules {
		switch {
		case r.Chain != "" && strings.HasPrefix(r.Rule, "-A "):
			cmd := "iptables"
			if ex.Family == "IPv6" {
				cmd = "ip6tables"
			}
			argv := append([]string{cmd, "-w", "-t", r.Table, "-C"}, splitRule(strings.TrimPrefix(r.Rule, "-A "))...)
			if out, err := e.Node.Run(ctx, argv...); err != nil {
				missing = append(missing, fmt.Sprintf("%s: %s (%v: %s)", r.Step, r.Rule, err, strings.TrimSpace(out)))
			}
		case r.Chain != "" || r.Set != "":
			blocks, ok := tables[r.Table]
			if !ok {
				out, err := e.NFTList(ctx, append([]string{"table"}, strings.Fields(r.Table)...)...)
				if err != nil {
					return nil, fmt.Errorf("nft list table %s: %w: %s", r.Table, err, out)
				}
				blocks = nftBlocks(out)
				tables[r.Table] = blocks
			}
			found := false
			if r.Set != "" {
				found = containsWord(blocks[r.Set], r.Element)
			} else {
				want := nftSignature(r.Rule)
				for _, line := range strings.Split(blocks[r.Chain], "\n") {
					if found = line != "" && subset(want, nftSignature(line)); found {
						break
					}
				}
			}
			if !found {
				name, text := r.Chain, r.Rule
				if r.Set != "" {
					name, text = r.Set, r.Element
				}
				missing = append(missing, fmt.Sprintf("%s: %q not in %s of table %s", r.Step, text, name, r.Table))
			}
		default:
			missing = append(missing, fmt.Sprintf("%s: names neither a rule nor an element: %+v", r.Step, r))
		}
	}
	return missing, nil
}

// nftSignature is what identifies an nftables rule however nft spells it
// when it lists the rule (nft folds protocol matches into ports, prints
// bitwise operations and NAT statements in its own forms): the sets and
// maps it names, the addresses, prefixes and address:port pairs in it
// (but for all-zero masks), and its verdict or NAT statement with a jump
// or goto target.
func nftSignature(rule string) map[string]bool {
	sig := map[string]bool{}
	f := strings.Fields(strings.NewReplacer("{", " ", "}", " ", ",", " ").Replace(rule))
	for i, t := range f {
		switch {
		case strings.HasPrefix(t, "@"):
			sig[t] = true
		case t == "goto" || t == "jump":
			if i+1 < len(f) {
				sig[t+" "+f[i+1]] = true
			}
		case slices.Contains([]string{"accept", "drop", "reject", "return", "masquerade", "dnat", "snat"}, t):
			sig[t] = true
		default:
			if a, err := netip.ParseAddr(t); err == nil && !a.IsUnspecified() {
				sig[a.String()] = true
			} else if ap, err := netip.ParseAddrPort(t); err == nil {
				sig[ap.String()] = true
			} else if p, err := netip.ParsePrefix(t); err == nil {
				sig[p.String()] = true
			}
		}
	}
	return sig
}

// subset reports whether every key of a is in b.
func subset(a, b map[string]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// splitRule splits an iptables-restore rule line into arguments, as
// iptables-restore does: on spaces, double quotes grouping.
func splitRule(rule string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range rule {
		switch {
		case r == '"':
			inQuote, have = !inQuote, true
		case r == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

// nftBlocks splits `nft list table` output into its chains, sets and maps
// by name, each the text of its body.
func nftBlocks(out string) map[string]string {
	blocks := map[string]string{}
	var name string
	var body strings.Builder
	for _, line := range strings.Split(out, "\n") {
		t := strings.TrimSpace(line)
		f := strings.Fields(t)
		switch {
		case len(f) == 3 && (f[0] == "chain" || f[0] == "set" || f[0] == "map") && f[2] == "{":
			name = f[1]
			body.Reset()
		case name != "" && t == "}" && strings.HasPrefix(line, "\t}"):
			blocks[name] = body.String()
			name = ""
		case name != "":
			body.WriteString(t)
			body.WriteString("\n")
		}
	}
	return blocks
}

// containsWord reports whether text occurs in s between word boundaries
// (start or end of s, a space, a newline, a brace or a comma), so one
// address does not match inside a longer one.
func containsWord(s, text string) bool {
	if text == "" {
		return false
	}
	boundary := func(b byte) bool { return strings.IndexByte(" \n{},", b) >= 0 }
	for i := 0; ; {
		j := strings.Index(s[i:], text)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(text)
		if (start == 0 || boundary(s[start-1])) && (end == len(s) || boundary(s[end])) {
			return true
		}
		i = start + 1
	}
}
