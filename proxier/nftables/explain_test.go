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
	for _, f := range append(pt.Flows(proxier.NFTablesMode), explainFlows(proxier.NFTablesMode)...) {
		t.Run(f.Name, func(t *testing.T) {
			cfg := f.Config
			cfg.Mode = proxier.NFTablesMode
			plan := proxier.MakePlan(cfg, f.State)
			tr := plan.Trace(f.Packet)
			locs := nftables.Explain(plan, tr)
			lines := strings.Split(nftables.DryRun(f.Config, f.State), "\n")
			steps := map[string]int{}
			for _, l := range locs {
				steps[l.Step]++
				switch {
				case l.Set != "" && l.Rule == "" && l.Chain == "":
					if !hasElement(lines, l.Table, l.Set, l.Element) {
						t.Errorf("%s: %s is not an element of set %s in the ruleset", l.Step, l.Element, l.Set)
					}
					if strings.HasPrefix(l.Set, "endpoints-") {
						steps["endpoint-element"]++
					}
				case l.Chain != "" && l.Set == "" && l.Element == "":
					if rule := "add rule " + l.Table + " " + l.Chain + " " + l.Rule; !slices.Contains(lines, rule) {
						t.Errorf("%s: %q is not a line of the ruleset", l.Step, rule)
					}
				default:
					t.Errorf("%s: neither a rule nor an element: %+v", l.Step, l)
				}
			}
			for _, e := range wantSteps(tr) {
				if steps[e.step] < e.n {
					t.Errorf("%d %s locations, want at least %d; got %+v", steps[e.step], e.step, e.n, locs)
				}
			}
			if firewalled(plan, tr) && tr.Verdict == proxier.OutcomeDNAT && steps["firewall"] < 3 {
				t.Errorf("%d firewall locations, want 3; got %+v", steps["firewall"], locs)
			}
			if tr.Verdict == proxier.OutcomeNotOurs && len(locs) > 0 {
				t.Errorf("a packet left alone has locations %+v", locs)
			}
		})
	}
}

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

type stepCount struct {
	step string
	n    int
}

// wantSteps are the locations a trace needs, at least.
func wantSteps(tr proxier.Trace) []stepCount {
	var out []stepCount
	switch tr.Verdict {
	case proxier.OutcomeNotOurs:
		return nil
	case proxier.OutcomeDNAT:
		out = append(out, stepCount{"match", 2}, stepCount{"endpoint-element", len(tr.Endpoints)})
	default:
		out = append(out, stepCount{strings.ToLower(string(tr.Verdict)), 2})
	}
	if tr.Masquerade {
		out = append(out, stepCount{"masquerade", 2})
	}
	if tr.Affinity != nil {
		out = append(out, stepCount{"affinity", 3})
	}
	if slices.ContainsFunc(tr.Endpoints, func(c proxier.Candidate) bool { return c.Hairpin }) {
		out = append(out, stepCount{"hairpin", 2})
	}
	if tr.Policy != nil && tr.Policy.ShortCircuit {
		out = append(out, stepCount{"short-circuit", 1})
	}
	return out
}

// explainFlows are flows whose rules the packet-flow table does not reach:
// the node let through a load-balancer firewall whose range holds its IP
// (it comes from the load-balancer IP).
func explainFlows(mode proxier.ModeTraits) []pt.Flow {
	st := pt.State(proxier.IPv4, pt.Service("ns/lb-node", proxier.TCP, "10.96.0.40", 443, pt.NodePort(30040), pt.LoadBalancer("1.2.3.40"),
		pt.SourceRanges("192.168.0.0/24"), pt.Endpoints(pt.Endpoint("10.244.1.40", 8443, pt.Local), pt.Endpoint("10.244.2.40", 8443))))
	return []pt.Flow{{Name: "node through the LB firewall", Config: pt.Config(pt.NodeIPs(pt.NodeIP), pt.Mode(mode)), State: st,
		Packet: pt.Pkt(proxier.FromNode, "1.2.3.40", "1.2.3.40:443")}}
}

// firewalled reports whether tr's packet met a load-balancer IP behind
// source ranges.
func firewalled(p *proxier.Plan, tr proxier.Trace) bool {
	if tr.Port == nil || tr.Port.Via != proxier.ViaLoadBalancerIP {
		return false
	}
	i := slices.IndexFunc(p.Services, func(sp proxier.ServicePlan) bool { return sp.Svc.Name == tr.Port.Name })
	return i >= 0 && p.Services[i].Firewall
}
