package nftables

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// policyChain is one of the chains a service-ips or service-nodeports
// element sends traffic to: the traffic of one way in (ClusterIP, an
// external or load-balancer IP, the NodePort) under one traffic policy.
// Its rules translate the plan's masquerade and short-circuit decisions,
// then go to the pick chain of the pool the policy takes.
type policyChain struct {
	name     string
	external bool
	policy   proxier.Policy
	// cluster and local are the pools of the way in.
	cluster, local pool
}

var policyChains = []policyChain{
	{chClusterIP, false, proxier.PolicyCluster, poolIP, poolIPLocal},
	{chClusterIPLocal, false, proxier.PolicyLocal, poolIP, poolIPLocal},
	{chExternal, true, proxier.PolicyCluster, poolIP, poolIPLocal},
	{chNodePort, true, proxier.PolicyCluster, poolNP, poolNPLocal},
	{chExternalLocal, true, proxier.PolicyLocal, poolIP, poolIPLocal},
	{chNodePortLocal, true, proxier.PolicyLocal, poolNP, poolNPLocal},
}

// policyChainOf is the policy chain of the way in (external, and byPort
// for the NodePort) under policy p.
func policyChainOf(external, byPort bool, p proxier.Policy) policyChain {
	for _, pc := range policyChains {
		if pc.external == external && pc.cluster.byPort == byPort && pc.policy == p {
			return pc
		}
	}
	panic("no policy chain")
}

// pick is the pool the chain's policy takes.
func (pc policyChain) pick() pool {
	if pc.policy == proxier.PolicyLocal {
		return pc.local
	}
	return pc.cluster
}

// rules are the chain's rules for sp, the plan of a service port whose
// traffic it takes.
func (pc policyChain) rules(f fam, sp *proxier.ServicePlan) []string {
	var rules []string
	masq := "jump " + chMarkMasq
	if !pc.external {
		switch sp.MasqueradeInternal {
		case proxier.MasqueradeAll:
			rules = append(rules, masq)
		case proxier.MasqueradeNonLocal:
			rules = append(rules, localMatch(f, sp.MasqueradeInternalMatch)+" "+masq)
		}
		return append(rules, "goto "+pc.pick().pickChain())
	}
	if sp.MasqueradeExternal {
		rules = append(rules, masq)
	}
	if sc := sp.ShortCircuit; sc.Pods.Implemented() {
		rules = append(rules, localMatch(f, sc.Pods)+" goto "+pc.cluster.pickChain())
	}
	if sp.ShortCircuit.Node {
		rules = append(rules, "fib saddr type local "+masq, "fib saddr type local goto "+pc.cluster.pickChain())
	}
	return append(rules, "goto "+pc.pick().pickChain())
}

// policyPlans are the plans of a service port with both traffic policies
// Cluster and of one with both Local, externally accessible, under cfg.
// The plan takes its masquerade and short-circuit decisions from the
// config and the port's policies alone, so each policy chain's rules are
// those of every service port it serves (TestPolicyChainsFollowThePlan
// holds the plan to it).
func policyPlans(cfg proxier.Config) map[proxier.Policy]proxier.ServicePlan {
	st := &proxier.State{Family: cfg.Family}
	out := map[proxier.Policy]proxier.ServicePlan{}
	for _, p := range []proxier.Policy{proxier.PolicyCluster, proxier.PolicyLocal} {
		local := p == proxier.PolicyLocal
		svc := &proxier.Service{Protocol: proxier.TCP, NodePort: 1, ExternalPolicyLocal: local, InternalPolicyLocal: local}
		out[p] = proxier.PlanService(cfg, st, svc)
	}
	return out
}

// localMatch renders a local-traffic match: the source in one of the
// CIDRs (an anonymous set when there are several), or the input
// interface ("*" ends a prefix); Negate with "!=".
func localMatch(f fam, l proxier.LocalTraffic) string {
	op := ""
	if l.Negate {
		op = "!= "
	}
	switch l.Mode {
	case proxier.LocalClusterCIDR, proxier.LocalNodeCIDR:
		if len(l.CIDRs) == 1 {
			return fmt.Sprintf("%s saddr %s%s", f.ip, op, l.CIDRs[0])
		}
		cidrs := make([]string, len(l.CIDRs))
		for i, c := range l.CIDRs {
			cidrs[i] = c.String()
		}
		return fmt.Sprintf("%s saddr %s{ %s }", f.ip, op, strings.Join(cidrs, ", "))
	case proxier.LocalBridgeInterface:
		return fmt.Sprintf("iifname %s%q", op, l.Interface)
	case proxier.LocalInterfacePrefix:
		return fmt.Sprintf("iifname %s%q", op, l.Interface+"*")
	}
	return ""
}

// nodePortMatch selects packets to an address the NodePorts answer on:
// every local address (but the loopback range, unless localhost NodePorts
// are on), or those of the nodeport-ips set.
func nodePortMatch(f fam, np proxier.NodePorts) string {
	if !np.AllLocal {
		return fmt.Sprintf("%s daddr @%s", f.ip, sNodePortIPs)
	}
	if np.Localhost {
		return "fib daddr type local"
	}
	return fmt.Sprintf("fib daddr type local %s daddr != %s", f.ip, prefixText(np.Loopback))
}

// prefixText is p as nft writes it: a single address without its length.
func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}
