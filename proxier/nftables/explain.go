package nftables

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Explain lists the rules and elements of p's table that do the steps of
// t (p's trace of a packet), in the order the packet meets them: a chain's
// rule (Chain, Rule) or an element of a set or map (Set, Element), each as
// --dry-run writes it. A packet svcproxy leaves alone has none.
func Explain(p *proxier.Plan, t proxier.Trace) []proxier.Location {
	if t.Verdict == proxier.OutcomeNotOurs {
		return nil
	}
	f := famOf(p.Config.Family)
	x := &explainer{f: f, plan: p, t: t, table: string(f.family) + " " + TableName}
	if t.Port == nil {
		x.guarded()
		return x.out
	}
	i := slices.IndexFunc(p.Services, func(sp proxier.ServicePlan) bool { return sp.Svc.Name == t.Port.Name })
	if i < 0 {
		return nil
	}
	x.sp = &p.Services[i]
	x.r = renderService(f, x.sp)
	var aff []affinityKey
	if x.r.affinity != nil {
		aff = append(aff, *x.r.affinity)
	}
	x.sk = newSkeleton(p, aff)
	x.explain()
	return x.out
}

type explainer struct {
	f     fam
	plan  *proxier.Plan
	t     proxier.Trace
	table string
	sp    *proxier.ServicePlan
	r     *svcRender
	sk    *skeleton
	out   []proxier.Location
}

// rule adds the first rule of chain that ok matches.
func (x *explainer) rule(step, chain string, ok func(string) bool) {
	rules := x.sk.rules[chain]
	if x.r != nil {
		for _, c := range x.r.affChains {
			if c.name == chain {
				rules = c.rules
			}
		}
	}
	if pl, proto, k, isLB := lbChainPool(chain); isLB {
		rules = []string{lbRule(x.f, pl, proto, k)}
	}
	for _, r := range rules {
		if ok(r) {
			x.out = append(x.out, proxier.Location{Step: step, Table: x.table, Chain: chain, Rule: r})
			return
		}
	}
}

// elem adds the element e.
func (x *explainer) elem(step string, e elem) {
	x.out = append(x.out, proxier.Location{Step: step, Table: x.table, Set: e.set, Element: string(e.appendText(nil, mustSpec(e.set)))})
}

// find adds the service port's first element of set that ok matches, and
// returns it.
func (x *explainer) find(step, set string, ok func(elem) bool) (elem, bool) {
	for _, e := range x.r.elems {
		if e.set == set && ok(e) {
			x.elem(step, e)
			return e, true
		}
	}
	return elem{}, false
}

func keyIs(k tuple) func(elem) bool { return func(e elem) bool { return e.key == k } }

func is(s string) func(string) bool { return func(r string) bool { return r == s } }

func contains(s string) func(string) bool {
	return func(r string) bool { return strings.Contains(r, s) }
}

// guarded is what the service-IP guard does with a packet that met no
// service port: a known ClusterIP at an unknown port, or an unallocated
// address of the service CIDRs.
func (x *explainer) guarded() {
	dst := x.t.Packet.Dest.Addr()
	x.sk = newSkeleton(x.plan, nil)
	switch x.t.Reason {
	case proxier.ReasonUnknownPort:
		x.rule("reject", chClusterIPsCheck, contains("@"+sClusterIPs))
		x.elem("reject", elem{set: sClusterIPs, key: tupleOf(addrAtom(dst))})
	case proxier.ReasonUnallocated:
		x.rule("drop", chClusterIPsCheck, contains("@"+sServiceCIDRs))
		for _, e := range serviceCIDRElems(x.plan.Config.Family, x.plan.ServiceCIDRs) {
			if netip.PrefixFrom(e.key[0].addr(), int(e.key[0].num)).Contains(dst) {
				x.elem("drop", e)
				break
			}
		}
	}
}

func (x *explainer) explain() {
	t, sp := x.t, x.sp
	svc := sp.Svc
	dst := t.Packet.Dest.Addr()
	destKey := tupleOf(addrAtom(dst), protoAtom(svc.Protocol), portAtom(svc.Port))
	npKey := tupleOf(protoAtom(svc.Protocol), portAtom(svc.NodePort))

	switch t.Port.Via {
	case proxier.ViaClusterIP:
		if t.Verdict != proxier.OutcomeDNAT {
			x.refused(false, destKey)
			return
		}
		pc := policyChainOf(false, false, sp.InternalPolicy)
		x.rule("match", chServices, contains("vmap @"+mServiceIPs))
		x.find("match", mServiceIPs, keyIs(destKey))
		if t.Masquerade {
			x.rule("masquerade", pc.name, contains("jump "+chMarkMasq))
		}
		x.rule("policy", pc.name, is("goto "+pc.pick().pickChain()))
		x.pick(pc.pick(), destKey)
	case proxier.ViaNodePort:
		if !sp.HasEndpoints {
			x.refused(true, npKey)
			return
		}
		x.rule("match", chServices, contains("vmap @"+mServiceNodePorts))
		for _, e := range x.sk.elems {
			if e.set == sNodePortIPs && e.key[0].addr() == dst {
				x.elem("match", e)
			}
		}
		x.find("match", mServiceNodePorts, keyIs(npKey))
		x.external(policyChainOf(true, true, sp.ExternalPolicy), npKey, true)
	default:
		if !sp.HasEndpoints {
			x.refused(false, destKey)
			return
		}
		if t.Port.Via == proxier.ViaLoadBalancerIP && sp.Firewall {
			step := "firewall"
			if t.Reason == proxier.ReasonSourceRange {
				step = "drop"
			}
			x.rule(step, chFirewallCheck, contains("@"+sFirewallDests))
			x.find(step, sFirewallDests, keyIs(destKey))
			if step == "drop" {
				return
			}
			allow := destKey
			allow[3] = prefixAtom(x.allowedBy())
			x.find(step, sFirewallAllow, keyIs(allow))
		}
		x.rule("match", chServices, contains("vmap @"+mServiceIPs))
		x.find("match", mServiceIPs, keyIs(destKey))
		x.external(policyChainOf(true, false, sp.ExternalPolicy), destKey, false)
	}
}

// allowedBy is the source range (or the load-balancer IP the node's own
// traffic comes from) that lets the packet through the firewall.
func (x *explainer) allowedBy() netip.Prefix {
	src := x.t.Packet.Source
	for _, r := range x.sp.FirewallRanges {
		if r.Contains(src) {
			return r
		}
	}
	return netip.PrefixFrom(src, src.BitLen())
}

// refused is the filter check that rejects or drops new traffic to a
// destination without (usable) endpoints.
func (x *explainer) refused(nodePort bool, key tuple) {
	step := strings.ToLower(string(x.t.Verdict))
	chain, set := chServiceEPCheck, mNoEndpointServices
	if nodePort {
		chain, set = chNodePortEPCheck, mNoEndpointNodePort
	}
	x.rule(step, chain, contains("vmap @"+set))
	if e, ok := x.find(step, set, keyIs(key)); ok && e.verdict.chain == chReject {
		x.rule(step, chReject, is("reject"))
	}
}

// external is the policy chain's part for external traffic: the
// short-circuits, masquerading and the policy's pool, or the filter check
// that refuses what it leaves.
func (x *explainer) external(pc policyChain, key tuple, nodePort bool) {
	t, sp := x.t, x.sp
	switch t.Reason {
	case proxier.ReasonShortCircuitPod:
		x.rule("short-circuit", pc.name, is(localMatch(x.f, sp.ShortCircuit.Pods)+" goto "+pc.cluster.pickChain()))
		x.pick(pc.cluster, key)
	case proxier.ReasonShortCircuitNode:
		x.rule("masquerade", pc.name, is("fib saddr type local jump "+chMarkMasq))
		x.rule("short-circuit", pc.name, is("fib saddr type local goto "+pc.cluster.pickChain()))
		x.pick(pc.cluster, key)
	default:
		if t.Verdict != proxier.OutcomeDNAT {
			x.refused(nodePort, key)
			return
		}
		if t.Masquerade {
			x.rule("masquerade", pc.name, is("jump "+chMarkMasq))
		}
		x.rule("policy", pc.name, is("goto "+pc.pick().pickChain()))
		x.pick(pc.pick(), key)
	}
}

// pick is the pool's part: the affinity lookup and record, the endpoint
// count, the load-balancing chain, each candidate's element, hairpin and
// masquerading.
func (x *explainer) pick(p pool, key tuple) {
	t, svc := x.t, x.sp.Svc
	proto := svc.Protocol.Lower()
	if a := x.r.affinity; t.Affinity != nil && a != nil {
		// The lookup: the pick vmap leads to the Service port's pick
		// chain, one rule per endpoint a client may be pinned to; the
		// record chain writes the entry after DNAT.
		m, pick := mAffinityPick, affinityPickPrefix+serviceHash(svc.Name)
		if p.local() {
			m, pick = mAffinityPickLocal, affinityPickLocalPrefix+serviceHash(svc.Name)
		}
		d := t.Packet.Dest
		addr, port := addrAtom(d.Addr()), portAtom(int32(d.Port()))
		x.rule("affinity", p.pickChain(), contains("vmap @"+m))
		x.find("affinity", m, keyIs(tupleOf(addr, protoAtom(svc.Protocol), port)))
		for _, c := range t.Endpoints {
			x.rule("affinity", pick, contains(" to "+c.Endpoint.String()))
		}
		x.rule("affinity", chAffinityRecord, contains("@"+affinityDests(a.proto, a.timeout)))
		x.find("affinity", affinityDests(a.proto, a.timeout), keyIs(tupleOf(addr, port)))
		x.rule("affinity", affinityChain(svc.Name), func(string) bool { return true })
	}
	x.rule("endpoint", p.pickChain(), contains("vmap @"+p.countMap()))
	count, ok := x.find("endpoint", p.countMap(), keyIs(key))
	if ok {
		x.rule("endpoint", count.verdict.chain, func(string) bool { return true })
	}
	epKey, at := tupleOf(key[0], key[2]), 2
	if p.byPort {
		epKey, at = tupleOf(key[1]), 1
	}
	masq := t.Masquerade
	for _, c := range t.Endpoints {
		x.find("endpoint", p.endpointsMap(proto), func(e elem) bool {
			k := e.key
			k[at] = atom{}
			return k == epKey && e.value[0].addr() == c.Endpoint.Addr() && e.value[1].num == uint32(c.Endpoint.Port())
		})
		if c.Hairpin {
			ip := addrAtom(c.Endpoint.Addr())
			x.find("hairpin", sHairpin, keyIs(tupleOf(ip, ip)))
			x.rule("hairpin", chMasquerading, contains("@"+sHairpin))
		}
	}
	if masq {
		x.rule("masquerade", chMasquerading, func(r string) bool { return strings.HasPrefix(r, "masquerade") })
	}
}
