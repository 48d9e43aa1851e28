package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Explain lists the rules of p's ruleset, rendered with opt, that do the
// steps of t (p's trace of a packet), in the order the packet meets them.
// Each names a table's chain and the rule as iptables-restore reads it.
// A packet svcproxy leaves alone has none.
func Explain(p *proxier.Plan, opt Options, t proxier.Trace) []proxier.Location {
	if t.Port == nil || t.Verdict == proxier.OutcomeNotOurs {
		return nil
	}
	i := slices.IndexFunc(p.Services, func(sp proxier.ServicePlan) bool { return sp.Svc.Name == t.Port.Name })
	if i < 0 {
		return nil
	}
	x := &explainer{rs: Render(p, opt), plan: p, sp: &p.Services[i], t: t}
	x.explain()
	return x.out
}

type explainer struct {
	rs   *Ruleset
	plan *proxier.Plan
	sp   *proxier.ServicePlan
	t    proxier.Trace
	out  []proxier.Location
}

// has matches a rule holding every part, each on word boundaries.
func has(parts ...string) func(string) bool {
	return func(rule string) bool {
		r := " " + rule + " "
		for _, p := range parts {
			if !strings.Contains(r, " "+p+" ") {
				return false
			}
		}
		return true
	}
}

// find adds the first rule of table's chain that ok matches.
func (x *explainer) find(step, table, chain string, ok func(string) bool) {
	chains := x.rs.NAT
	if table == Filter {
		chains = x.rs.Filter
	}
	for _, c := range chains {
		if c.Name != chain {
			continue
		}
		for _, r := range c.Rules {
			if ok(r) {
				x.out = append(x.out, proxier.Location{Step: step, Table: table, Chain: chain, Rule: "-A " + chain + " " + r})
				return
			}
		}
	}
}

func (x *explainer) explain() {
	t, sp := x.t, x.sp
	svc := sp.Svc
	proto := "-p " + svc.Protocol.Lower()
	dst := func(ip netip.Addr) []string {
		return []string{proto, "-d " + ip.String(), fmt.Sprintf("--dport %d", svc.Port)}
	}
	target := func(chain string) string { return "-j " + chain }
	refused := func(table, chain string, parts ...string) {
		step := strings.ToLower(string(t.Verdict))
		x.find(step, table, chain, has(append(parts, target(string(t.Verdict)))...))
	}
	svcChain, extChain := ServiceChainName(svc), ExternalChainName(svc)
	policyChain := func(p proxier.Policy) string {
		if p == proxier.PolicyLocal {
			return LocalChainName(svc)
		}
		return svcChain
	}
	ip := t.Packet.Dest.Addr()

	switch t.Port.Via {
	case proxier.ViaClusterIP:
		if t.Verdict != proxier.OutcomeDNAT {
			refused(Filter, chainServices, dst(ip)...)
			return
		}
		chain := policyChain(sp.InternalPolicy)
		x.find("match", NAT, chainServices, has(append(dst(ip), target(chain))...))
		if t.Masquerade {
			x.find("masquerade", NAT, chain, has(append(dst(ip), target(chainMarkMasq))...))
		}
		x.endpoints(chain)
		return
	case proxier.ViaNodePort:
		if !sp.HasEndpoints || !x.plan.AnswersNodePort(ip) {
			refused(Filter, chainExternalServices, proto, fmt.Sprintf("--dport %d", svc.NodePort))
			return
		}
		if x.plan.NodePorts.AllLocal {
			x.find("match", NAT, chainServices, has("--dst-type LOCAL", target(chainNodePorts)))
		} else {
			x.find("match", NAT, chainServices, has("-d "+ip.String(), target(chainNodePorts)))
		}
		x.find("match", NAT, chainNodePorts, has(proto, fmt.Sprintf("--dport %d", svc.NodePort), target(extChain)))
	default:
		if !sp.HasEndpoints {
			refused(Filter, chainExternalServices, dst(ip)...)
			return
		}
		if t.Port.Via == proxier.ViaLoadBalancerIP && sp.Firewall {
			fw := FirewallChainName(svc)
			x.find("match", NAT, chainServices, has(append(dst(ip), target(fw))...))
			if t.Reason == proxier.ReasonSourceRange {
				x.find("firewall", NAT, fw, has("will be dropped by "+chainProxyFirewall+`"`))
				refused(Filter, chainProxyFirewall, dst(ip)...)
				return
			}
			x.find("firewall", NAT, fw, has("-s "+x.allowedBy(), target(extChain)))
		} else {
			x.find("match", NAT, chainServices, has(append(dst(ip), target(extChain))...))
		}
	}
	x.external(extChain, svcChain, policyChain(sp.ExternalPolicy))
}

// allowedBy is the source range (or the load-balancer IP the node's own
// traffic comes from) that lets the packet through the firewall, as the
// KUBE-FW chain's -s spells it.
func (x *explainer) allowedBy() string {
	src := x.t.Packet.Source
	for _, r := range x.sp.FirewallRanges {
		if r.Contains(src) {
			return r.String()
		}
	}
	return src.String()
}

// external is the KUBE-EXT chain's part: masquerading, the short-circuits,
// the policy's chain, or the filter rule that refuses what it leaves.
func (x *explainer) external(ext, svcChain, policyChain string) {
	t, sp := x.t, x.sp
	switch t.Reason {
	case proxier.ReasonShortCircuitPod:
		x.find("short-circuit", NAT, ext, has(match(sp.ShortCircuit.Pods), "-j "+svcChain))
		x.endpoints(svcChain)
	case proxier.ReasonShortCircuitNode:
		x.find("masquerade", NAT, ext, has("--src-type LOCAL", "-j "+chainMarkMasq))
		x.find("short-circuit", NAT, ext, has("--src-type LOCAL", "-j "+svcChain))
		x.endpoints(svcChain)
	default:
		if t.Verdict != proxier.OutcomeDNAT {
			svc := sp.Svc
			step, target := strings.ToLower(string(t.Verdict)), "-j "+string(t.Verdict)
			proto := "-p " + svc.Protocol.Lower()
			if t.Port.Via == proxier.ViaNodePort {
				x.find(step, Filter, chainExternalServices, has(proto, fmt.Sprintf("--dport %d", svc.NodePort), target))
			} else {
				x.find(step, Filter, chainExternalServices, has(proto, "-d "+t.Packet.Dest.Addr().String(), fmt.Sprintf("--dport %d", svc.Port), target))
			}
			return
		}
		if t.Masquerade {
			x.find("masquerade", NAT, ext, has(`"masquerade`, "-j "+chainMarkMasq))
		}
		x.find("policy", NAT, ext, func(r string) bool { return r == "-j "+policyChain })
		x.endpoints(policyChain)
	}
}

// endpoints are the load-balancing rules of chain that reach the
// candidates (the affinity checks first), each candidate's DNAT and
// hairpin rules, and the MASQUERADE rule when the packet is masqueraded.
func (x *explainer) endpoints(chain string) {
	t, svc := x.t, x.sp.Svc
	sep := func(c proxier.Candidate) string {
		return EndpointChainName(svc, proxier.Endpoint{IP: c.Endpoint.Addr(), Port: int32(c.Endpoint.Port())})
	}
	if t.Affinity != nil {
		for _, c := range t.Endpoints {
			x.find("affinity", NAT, chain, has("--rcheck", "-j "+sep(c)))
		}
	}
	masq := t.Masquerade
	for _, c := range t.Endpoints {
		x.find("endpoint", NAT, chain, func(r string) bool { return has("-j "+sep(c))(r) && !has("--rcheck")(r) })
		if c.Hairpin {
			x.find("hairpin", NAT, sep(c), has("-s "+c.Endpoint.Addr().String(), "-j "+chainMarkMasq))
			masq = true
		}
		x.find("endpoint", NAT, sep(c), has("-j DNAT", "--to-destination "+c.Endpoint.String()))
	}
	if masq {
		x.find("masquerade", NAT, chainPostrouting, has("-j MASQUERADE"))
	}
}
