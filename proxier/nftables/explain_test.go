package nftables_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestExplainLocationsAreRendered holds Explain to the rendered table for
// every packet flow: each rule it names is a rule of its chain in
// DryRun's output for the flow's State and Config, each element an
// element of its set there, and it names what does every step the tracer
// took (the refusal, the match, masquerading, hairpin, affinity, and an
// endpoint element per candidate).
func TestExplainLocationsAreRendered(t *testing.T) {
	want := pt.ExplainWant{
		Match: 2, Refusal: 2, Masquerade: 2, Hairpin: 2, ShortCircuit: 1, Firewall: 3,
		Endpoint:   func(n int) int { return n },
		Affinity:   func(int) int { return 3 },
		IsEndpoint: func(l proxier.Location) bool { return isElement(l) && strings.HasPrefix(l.Set, "endpoints-") },
	}
	pt.HoldExplain(t, proxier.NFTablesMode, want, func(t *testing.T, f pt.Flow, plan *proxier.Plan, tr proxier.Trace) []proxier.Location {
		locs := nftables.Explain(plan, tr)
		lines := strings.Split(nftables.DryRun(f.Config, f.State), "\n")
		for _, l := range locs {
			switch {
			case isElement(l):
				if !hasElement(lines, l.Table, l.Set, l.Element) {
					t.Errorf("%s: %s is not an element of set %s in the ruleset", l.Step, l.Element, l.Set)
				}
			case l.Chain != "" && l.Set == "" && l.Element == "":
				if rule := "add rule " + l.Table + " " + l.Chain + " " + l.Rule; !slices.Contains(lines, rule) {
					t.Errorf("%s: %q is not a line of the ruleset", l.Step, rule)
				}
			default:
				t.Errorf("%s: neither a rule nor an element: %+v", l.Step, l)
			}
		}
		return locs
	})
}

// isElement reports whether l names a set's element (and no rule).
func isElement(l proxier.Location) bool { return l.Set != "" && l.Rule == "" && l.Chain == "" }

// hasElement reports whether an add-element line of the ruleset puts
// element into table's set.
func hasElement(lines []string, table, set, element string) bool {
	prefix := "add element " + table + " " + set + " { "
	for _, l := range lines {
		if body, ok := strings.CutPrefix(l, prefix); ok {
			if slices.Contains(strings.Split(strings.TrimSuffix(body, " }"), ", "), element) {
				return true
			}
		}
	}
	return false
}
