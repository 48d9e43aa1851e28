package iptables

import (
	"fmt"
	"net/netip"

	"github.com/svcproxy/svcproxy/proxier"
)

// writeService renders one service port's plan.
func (r *renderer) writeService(sp *proxier.ServicePlan) {
	svc := sp.Svc
	name := svc.Name.String()
	proto := svc.Protocol.Lower()
	pmatch := fmt.Sprintf("-m %s -p %s", proto, proto)
	dst := func(ip netip.Addr) string { return fmt.Sprintf("%s -d %s --dport %d", pmatch, ip, svc.Port) }
	comment := func(prefix, suffix string) string {
		return fmt.Sprintf("-m comment --comment %q", prefix+name+suffix)
	}

	svcChain, svlChain := ServiceChainName(svc), LocalChainName(svc)
	policyChain := func(p proxier.Policy) string {
		if p == proxier.PolicyLocal {
			return svlChain
		}
		return svcChain
	}
	internalChain := policyChain(sp.InternalPolicy)
	extChain := ExternalChainName(svc)
	lbChain := extChain
	if sp.Firewall {
		lbChain = FirewallChainName(svc)
	}

	// ClusterIP.
	switch sp.Internal {
	case proxier.Reject:
		r.filterServices.add(fmt.Sprintf("%s %s -j REJECT", comment("", " has no endpoints"), dst(svc.ClusterIP)))
	case proxier.Drop:
		r.filterServices.add(fmt.Sprintf("%s %s -j DROP", comment("", " has no local endpoints"), dst(svc.ClusterIP)))
	case proxier.Forward:
		r.natServices.add(fmt.Sprintf("%s %s -j %s", comment("", " cluster IP"), dst(svc.ClusterIP), internalChain))
	}

	// External destinations. With endpoints anywhere, nat sends them to the
	// EXT chain (which short-circuits pods and the node under a Local
	// policy); traffic the EXT chain does not DNAT still carries its
	// original destination in filter, where it is dropped or rejected.
	external := svc.ExternallyAccessible()
	if external && sp.HasEndpoints {
		for _, ip := range svc.ExternalIPs {
			r.natServices.add(fmt.Sprintf("%s %s -j %s", comment("", " external IP"), dst(ip), extChain))
		}
		for _, ip := range svc.LoadBalancerIPs {
			r.natServices.add(fmt.Sprintf("%s %s -j %s", comment("", " loadbalancer IP"), dst(ip), lbChain))
		}
		if svc.NodePort != 0 {
			// kube-proxy counts what localhost NodePorts accept in a rule
			// of its own, only where the kernel has the counter.
			if m := r.opt.nfacctMatch(NFAcctLocalhostNodePorts); m != "" && r.plan.NodePorts.Localhost {
				r.natNodePorts.add(fmt.Sprintf("%s %s -d %s --dport %d %s-j %s", comment("", ""), pmatch, r.plan.NodePorts.Loopback, svc.NodePort, m, extChain))
			}
			r.natNodePorts.add(fmt.Sprintf("%s %s --dport %d -j %s", comment("", ""), pmatch, svc.NodePort, extChain))
		}
	}
	if external && sp.External != proxier.Forward {
		target, why := "REJECT", " has no endpoints"
		if sp.External == proxier.Drop {
			target, why = "DROP", " has no local endpoints"
		}
		for _, ip := range svc.ExternalIPs {
			r.filterExternal.add(fmt.Sprintf("%s %s -j %s", comment("", why), dst(ip), target))
		}
		for _, ip := range svc.LoadBalancerIPs {
			r.filterExternal.add(fmt.Sprintf("%s %s -j %s", comment("", why), dst(ip), target))
		}
		if svc.NodePort != 0 {
			r.filterExternal.add(fmt.Sprintf("%s -m addrtype --dst-type LOCAL %s --dport %d -j %s", comment("", why), pmatch, svc.NodePort, target))
		}
	}
	if svc.HealthCheckNodePort != 0 {
		r.filterNodePorts.add(fmt.Sprintf("%s -m tcp -p tcp --dport %d -j ACCEPT", comment("", " health check node port"), svc.HealthCheckNodePort))
	}
	if !sp.HasEndpoints {
		return
	}

	// Load-balancer source ranges: allowed sources go on to the EXT chain;
	// the rest fall through and are dropped in filter, where they still
	// carry the load-balancer IP as destination.
	if sp.Firewall {
		fw := &Chain{Name: lbChain}
		for _, cidr := range sp.FirewallRanges {
			fw.add(fmt.Sprintf("%s -s %s -j %s", comment("", " loadbalancer IP"), cidr, extChain))
		}
		if sp.FirewallAllowNode {
			for _, ip := range svc.LoadBalancerIPs {
				fw.add(fmt.Sprintf("%s -s %s -j %s", comment("", " loadbalancer IP"), ip, extChain))
			}
		}
		fw.add(comment("other traffic to ", " will be dropped by KUBE-PROXY-FIREWALL"))
		r.natService = append(r.natService, fw)
		for _, ip := range svc.LoadBalancerIPs {
			r.filterFirewall.add(fmt.Sprintf("%s %s -j DROP", comment("", " traffic not accepted by "+lbChain), dst(ip)))
		}
	}

	if external {
		ext := &Chain{Name: extChain}
		if sp.MasqueradeExternal {
			ext.add(fmt.Sprintf("%s -j %s", comment("masquerade traffic for ", " external destinations"), chainMarkMasq))
		}
		// Pods and the node itself reach the cluster endpoints whatever
		// the policy; only traffic from elsewhere is held to it.
		if sc := sp.ShortCircuit; sc.Pods.Implemented() {
			ext.add(fmt.Sprintf("%s %s -j %s", comment("pod traffic for ", " external destinations"), match(sc.Pods), svcChain))
		}
		if sp.ShortCircuit.Node {
			ext.add(fmt.Sprintf("%s -m addrtype --src-type LOCAL -j %s", comment("masquerade LOCAL traffic for ", " external destinations"), chainMarkMasq))
			ext.add(fmt.Sprintf("%s -m addrtype --src-type LOCAL -j %s", comment("route LOCAL traffic for ", " external destinations"), svcChain))
		}
		if sp.External == proxier.Forward {
			ext.add("-j " + policyChain(sp.ExternalPolicy))
		}
		r.natService = append(r.natService, ext)
	}

	// KUBE-SVC: cluster endpoints. KUBE-SVL: local endpoints. The chain
	// ClusterIP traffic enters masquerades it first.
	for _, c := range []struct {
		name string
		eps  []proxier.Endpoint
	}{{svcChain, sp.ClusterEndpoints}, {svlChain, sp.LocalEndpoints}} {
		if len(c.eps) == 0 {
			continue
		}
		chain := &Chain{Name: c.name}
		if internalChain == c.name {
			r.writeClusterIPMasquerade(chain, sp, comment("", " cluster IP"), dst(svc.ClusterIP))
		}
		r.writeEndpointRules(chain, sp, c.eps)
		r.natService = append(r.natService, chain)
	}
}

func (r *renderer) writeClusterIPMasquerade(chain *Chain, sp *proxier.ServicePlan, comment, dst string) {
	switch sp.MasqueradeInternal {
	case proxier.MasqueradeAll:
		chain.add(fmt.Sprintf("%s %s -j %s", comment, dst, chainMarkMasq))
	case proxier.MasqueradeNonLocal:
		chain.add(fmt.Sprintf("%s %s %s -j %s", comment, dst, match(sp.MasqueradeInternalMatch), chainMarkMasq))
	}
}

// writeEndpointRules writes the load-balancing rules of a service chain
// (session-affinity checks first; then rule i of n jumps with probability
// 1/(n-i), the last unconditionally) and the endpoint chains they jump to.
func (r *renderer) writeEndpointRules(chain *Chain, sp *proxier.ServicePlan, eps []proxier.Endpoint) {
	svc := sp.Svc
	name := svc.Name.String()
	if t := sp.Affinity.TimeoutSeconds; t > 0 {
		for _, ep := range eps {
			sep := EndpointChainName(svc, ep)
			chain.add(fmt.Sprintf("-m comment --comment %q -m recent --name %s --rcheck --seconds %d --reap -j %s", name+" -> "+ep.String(), sep, t, sep))
		}
	}
	n := len(eps)
	for i, ep := range eps {
		stat := ""
		if i < n-1 {
			stat = "-m statistic --mode random --probability " + probability(n-i) + " "
		}
		chain.add(fmt.Sprintf("-m comment --comment %q %s-j %s", name+" -> "+ep.String(), stat, EndpointChainName(svc, ep)))
		r.writeEndpointChain(sp, ep)
	}
}

func (r *renderer) writeEndpointChain(sp *proxier.ServicePlan, ep proxier.Endpoint) {
	svc := sp.Svc
	proto := svc.Protocol.Lower()
	c := &Chain{Name: EndpointChainName(svc, ep)}
	comment := fmt.Sprintf("-m comment --comment %q", svc.Name.String())
	if sp.IsHairpin(ep) {
		c.add(fmt.Sprintf("%s -s %s -j %s", comment, ep.IP, chainMarkMasq))
	}
	affinity := ""
	if sp.Affinity.Enabled() {
		affinity = fmt.Sprintf("-m recent --name %s --set ", c.Name)
	}
	c.add(fmt.Sprintf("%s %s-m %s -p %s -j DNAT --to-destination %s", comment, affinity, proto, proto, ep.String()))
	r.natService = append(r.natService, c)
}

// ExternalChainName is the KUBE-EXT chain (external destinations) of a service port.
func ExternalChainName(s *proxier.Service) string {
	return hashName(prefixEXT, s.Name.String(), s.Protocol.Lower())
}

// FirewallChainName is the KUBE-FW chain (load-balancer source ranges) of a service port.
func FirewallChainName(s *proxier.Service) string {
	return hashName(prefixFW, s.Name.String(), s.Protocol.Lower())
}
