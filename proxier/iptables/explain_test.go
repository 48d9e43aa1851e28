package iptables

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestExplainLocationsAreRendered holds Explain to the rendered rules for
// every packet flow: each rule it names is a line of DryRun's output for
// the flow's State and Config, and it names the rules of every step the
// tracer took (the refusal, the match, masquerading, hairpin, affinity,
// and a jump and a DNAT per candidate endpoint).
func TestExplainLocationsAreRendered(t *testing.T) {
	opt := DryRunOptions(context.Background())
	want := pt.ExplainWant{
		Match: 1, Refusal: 1, Masquerade: 2, Hairpin: 1, ShortCircuit: 1, Firewall: 1,
		Endpoint:   func(n int) int { return 2 * n },
		Affinity:   func(n int) int { return n },
		IsEndpoint: func(l proxier.Location) bool { return l.Step == "endpoint" },
	}
	pt.HoldExplain(t, proxier.IPTablesMode, want, func(t *testing.T, f pt.Flow, plan *proxier.Plan, tr proxier.Trace) []proxier.Location {
		locs := Explain(plan, opt, tr)
		lines := strings.Split(string(DryRun(f.Config, opt, f.State)), "\n")
		for _, l := range locs {
			if !slices.Contains(lines, l.Rule) {
				t.Errorf("%s: %q is not a line of the ruleset", l.Step, l.Rule)
			}
			if !strings.HasPrefix(l.Rule, "-A "+l.Chain+" ") {
				t.Errorf("%s: %q is not a rule of chain %s", l.Step, l.Rule, l.Chain)
			}
			if !slices.Contains(tableLines(lines, l.Table), l.Rule) {
				t.Errorf("%s: %q is not in table %s", l.Step, l.Rule, l.Table)
			}
		}
		return locs
	})
}

// tableLines are the lines of table in an iptables-restore input.
func tableLines(lines []string, table string) []string {
	var out []string
	in := false
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "*"):
			in = l == "*"+table
		case in:
			out = append(out, l)
		}
	}
	return out
}
