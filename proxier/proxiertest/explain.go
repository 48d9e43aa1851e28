package proxiertest

import (
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

// ExplainWant is how many locations a backend's Explain names, at least,
// for each step of a trace: the rules and elements that backend needs to
// do the step.
type ExplainWant struct {
	// Match is for meeting the service port, Refusal for a reject or a
	// drop (counted under the verdict's name), Firewall for a DNATed
	// packet met at a load-balancer IP behind source ranges.
	Match, Refusal, Masquerade, Hairpin, ShortCircuit, Firewall int
	// Endpoint and Affinity are the counts for a trace with n candidate
	// endpoints; IsEndpoint tells the locations Endpoint counts.
	Endpoint, Affinity func(n int) int
	IsEndpoint         func(proxier.Location) bool
}

// HoldExplain runs a backend's Explain over every packet flow of mode
// (Flows and ExplainFlows), one subtest a flow: explain returns the
// locations for the flow's plan and trace, having checked each one against
// the backend's rendered rules, and HoldExplain holds them to want. A
// packet svcproxy leaves alone must have none.
func HoldExplain(t *testing.T, mode proxier.ModeTraits, want ExplainWant, explain func(t *testing.T, f Flow, p *proxier.Plan, tr proxier.Trace) []proxier.Location) {
	for _, f := range append(Flows(mode), ExplainFlows(mode)...) {
		t.Run(f.Name, func(t *testing.T) {
			plan := proxier.MakePlan(f.Config, f.State)
			tr := plan.Trace(f.Packet)
			locs := explain(t, f, plan, tr)
			if tr.Verdict == proxier.OutcomeNotOurs {
				if len(locs) > 0 {
					t.Errorf("a packet left alone has locations %+v", locs)
				}
				return
			}
			steps := map[string]int{}
			endpoints := 0
			for _, l := range locs {
				steps[l.Step]++
				if want.IsEndpoint(l) {
					endpoints++
				}
			}
			check := func(what string, got, n int) {
				t.Helper()
				if got < n {
					t.Errorf("%d %s locations, want at least %d; got %+v", got, what, n, locs)
				}
			}
			if tr.Verdict == proxier.OutcomeDNAT {
				check("match", steps["match"], want.Match)
				check("endpoint", endpoints, want.Endpoint(len(tr.Endpoints)))
				if firewalled(plan, tr) {
					check("firewall", steps["firewall"], want.Firewall)
				}
			} else {
				step := strings.ToLower(string(tr.Verdict))
				check(step, steps[step], want.Refusal)
			}
			if tr.Masquerade {
				check("masquerade", steps["masquerade"], want.Masquerade)
			}
			if tr.Affinity != nil {
				check("affinity", steps["affinity"], want.Affinity(len(tr.Endpoints)))
			}
			if slices.ContainsFunc(tr.Endpoints, func(c proxier.Candidate) bool { return c.Hairpin }) {
				check("hairpin", steps["hairpin"], want.Hairpin)
			}
			if tr.Policy != nil && tr.Policy.ShortCircuit {
				check("short-circuit", steps["short-circuit"], want.ShortCircuit)
			}
		})
	}
}

// ExplainFlows are flows whose rules the packet-flow table does not reach:
// the node let through a load-balancer firewall whose range holds its IP
// (it comes from the load-balancer IP).
func ExplainFlows(mode proxier.ModeTraits) []Flow {
	st := State(proxier.IPv4, Service("ns/lb-node", proxier.TCP, "10.96.0.40", 443, NodePort(30040), LoadBalancer("1.2.3.40"),
		SourceRanges("192.168.0.0/24"), Endpoints(Endpoint("10.244.1.40", 8443, Local), Endpoint("10.244.2.40", 8443))))
	return []Flow{{Name: "node through the LB firewall", Config: Config(NodeIPs(NodeIP), Mode(mode)), State: st,
		Packet: Pkt(proxier.FromNode, "1.2.3.40", "1.2.3.40:443")}}
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
