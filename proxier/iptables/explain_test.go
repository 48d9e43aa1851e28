package iptables

import (
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
	opt := DryRunOptions()
	for _, f := range append(pt.Flows(proxier.IPTablesMode), explainFlows(proxier.IPTablesMode)...) {
		t.Run(f.Name, func(t *testing.T) {
			plan := proxier.MakePlan(f.Config, f.State)
			tr := plan.Trace(f.Packet)
			locs := Explain(plan, opt, tr)
			lines := strings.Split(string(DryRun(f.Config, opt, f.State)), "\n")
			steps := map[string]int{}
			for _, l := range locs {
				steps[l.Step]++
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
			for _, e := range wantSteps(tr) {
				if steps[e.step] < e.n {
					t.Errorf("%d %s locations, want at least %d; got %+v", steps[e.step], e.step, e.n, locs)
				}
			}
			if firewalled(plan, tr) && tr.Verdict == proxier.OutcomeDNAT && steps["firewall"] < 1 {
				t.Errorf("%d firewall locations, want 1; got %+v", steps["firewall"], locs)
			}
			if tr.Verdict == proxier.OutcomeNotOurs && len(locs) > 0 {
				t.Errorf("a packet left alone has locations %+v", locs)
			}
		})
	}
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
		out = append(out, stepCount{"match", 1}, stepCount{"endpoint", 2 * len(tr.Endpoints)})
	default:
		out = append(out, stepCount{strings.ToLower(string(tr.Verdict)), 1})
	}
	if tr.Masquerade {
		out = append(out, stepCount{"masquerade", 2})
	}
	if tr.Affinity != nil {
		out = append(out, stepCount{"affinity", len(tr.Endpoints)})
	}
	if slices.ContainsFunc(tr.Endpoints, func(c proxier.Candidate) bool { return c.Hairpin }) {
		out = append(out, stepCount{"hairpin", 1})
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
