package nftables

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// affinityKey identifies an affinity set: one per protocol and timeout in use.
type affinityKey struct {
	proto   proxier.Protocol
	timeout int32
}

// svcRender is everything one service port contributes to the table.
type svcRender struct {
	plan     proxier.ServicePlan
	elems    []elem
	lbCounts map[string]int // lb chain name → K
	affinity *affinityKey
	// affDests are the plan's affinity destinations of a Service port
	// with affinity, affChains its record and pick chains.
	affDests  []netip.AddrPort
	affChains []dynChain
}

func secondsDuration(s int32) time.Duration { return time.Duration(s) * time.Second }

// renderService computes one service port's elements from its plan.
func renderService(f fam, sp *proxier.ServicePlan) *svcRender {
	svc := sp.Svc
	r := &svcRender{plan: *sp, lbCounts: map[string]int{}, elems: make([]elem, 0, elemsBound(sp))}
	proto := svc.Protocol.Lower()
	protoA, portA := protoAtom(svc.Protocol), portAtom(svc.Port)
	dest := func(ip netip.Addr) tuple { return tupleOf(addrAtom(ip), protoA, portA) }
	add := func(set string, key tuple) {
		r.elems = append(r.elems, elem{set: set, key: key})
	}
	addV := func(set string, key tuple, v verdict) {
		r.elems = append(r.elems, elem{set: set, key: key, verdict: v})
	}
	addPool := func(p pool, key tuple, eps []proxier.Endpoint) {
		if len(eps) == 0 {
			return
		}
		lb := p.lbChain(proto, len(eps))
		r.lbCounts[lb] = len(eps)
		addV(p.countMap(), key, gotoChain(lb))
		// The endpoints map is per protocol: its key has no protocol, and
		// ends with the endpoint's index.
		epKey, at := tupleOf(key[0], key[2]), 2
		if p.byPort {
			epKey, at = tupleOf(key[1]), 1
		}
		m := p.endpointsMap(proto)
		for i, e := range eps {
			k := epKey
			k[at] = indexAtom(i)
			r.elems = append(r.elems, elem{set: m, key: k, value: [maxValue]atom{addrAtom(e.IP), portAtom(e.Port)}})
		}
	}
	noEndpoints := func(v proxier.Verdict) verdict {
		if v == proxier.Reject {
			return gotoChain(chReject)
		}
		return drop
	}

	add(sClusterIPs, tupleOf(addrAtom(svc.ClusterIP)))

	// ClusterIP.
	switch sp.Internal {
	case proxier.Forward:
		pc := policyChainOf(false, false, sp.InternalPolicy)
		addV(mServiceIPs, dest(svc.ClusterIP), gotoChain(pc.name))
		addPool(pc.pick(), dest(svc.ClusterIP), sp.InternalEndpoints)
	default:
		addV(mNoEndpointServices, dest(svc.ClusterIP), noEndpoints(sp.Internal))
	}

	// External destinations: the policy chain's pool gets the external
	// endpoints; under Local, the cluster pool the short-circuit goes to
	// gets the cluster endpoints.
	if sp.HasExternal() {
		externalIPs := append(slices.Clone(svc.ExternalIPs), svc.LoadBalancerIPs...)
		npKey := tupleOf(protoA, portAtom(svc.NodePort))
		pools := func(pc policyChain, key tuple) {
			if pc.policy == proxier.PolicyLocal {
				addPool(pc.cluster, key, sp.ClusterEndpoints)
			}
			addPool(pc.pick(), key, sp.ExternalEndpoints)
		}
		if sp.HasEndpoints {
			ipChain, npChain := policyChainOf(true, false, sp.ExternalPolicy), policyChainOf(true, true, sp.ExternalPolicy)
			for _, ip := range externalIPs {
				addV(mServiceIPs, dest(ip), gotoChain(ipChain.name))
				pools(ipChain, dest(ip))
			}
			if svc.NodePort != 0 {
				addV(mServiceNodePorts, npKey, gotoChain(npChain.name))
				pools(npChain, npKey)
			}
		}
		if sp.External != proxier.Forward {
			for _, ip := range externalIPs {
				addV(mNoEndpointServices, dest(ip), noEndpoints(sp.External))
			}
			if svc.NodePort != 0 {
				addV(mNoEndpointNodePort, npKey, noEndpoints(sp.External))
			}
		}
		if sp.Firewall {
			for _, ip := range svc.LoadBalancerIPs {
				add(sFirewallDests, dest(ip))
				allow := func(src netip.Prefix) {
					k := dest(ip)
					k[3] = prefixAtom(src)
					add(sFirewallAllow, k)
				}
				for _, cidr := range sp.FirewallRanges {
					allow(cidr)
				}
				if sp.FirewallAllowNode {
					allow(netip.PrefixFrom(ip, ip.BitLen()))
				}
			}
		}
	}

	// Hairpin: an endpoint reaching itself through the service is SNATed.
	for _, e := range sp.Hairpin {
		add(sHairpin, tupleOf(addrAtom(e.IP), addrAtom(e.IP)))
	}

	if a := sp.Affinity; a.Enabled() {
		r.renderAffinity(f, sp)
	}
	return r
}

// elemsBound bounds the elements renderService makes of sp, so that its
// slice is allocated once.
func elemsBound(sp *proxier.ServicePlan) int {
	svc := sp.Svc
	external := len(svc.ExternalIPs) + len(svc.LoadBalancerIPs)
	if svc.NodePort != 0 {
		external++
	}
	// Per destination: its verdict map's element, and a count and the
	// endpoints per pool.
	perExternal := 3 + len(sp.ClusterEndpoints)
	if sp.ExternalPolicy == proxier.PolicyLocal {
		perExternal += 1 + len(sp.LocalEndpoints)
	}
	n := 3 + len(sp.InternalEndpoints) + external*perExternal + len(sp.Hairpin)
	n += len(svc.LoadBalancerIPs) * (2 + len(sp.FirewallRanges))
	if sp.Affinity.Enabled() {
		n += 3 * len(sp.Affinity.Destinations)
	}
	return n
}

// renderAffinity adds a Service port's affinity: its destinations in the
// record and pick vmaps, and the chains they lead to. Local pools get a
// pick chain of this node's endpoints when a Local policy may look a
// client up.
func (r *svcRender) renderAffinity(f fam, sp *proxier.ServicePlan) {
	a, svc := sp.Affinity, sp.Svc
	r.affinity = &affinityKey{a.Protocol, a.TimeoutSeconds}
	r.affDests = a.Destinations
	h := serviceHash(svc.Name)
	rec, pick, pickLocal := affinityChainPrefix+h, affinityPickPrefix+h, affinityPickLocalPrefix+h
	set := affinitySet(a.Protocol, a.TimeoutSeconds)
	// A destination reaches the local pools when its policy is Local.
	localAt := func(d netip.AddrPort) bool {
		if d == netip.AddrPortFrom(svc.ClusterIP, uint16(svc.Port)) {
			return sp.InternalPolicy == proxier.PolicyLocal
		}
		return sp.ExternalPolicy == proxier.PolicyLocal
	}
	local := false
	protoA := protoAtom(a.Protocol)
	for _, d := range r.affDests {
		addr, port := addrAtom(d.Addr()), portAtom(int32(d.Port()))
		r.elems = append(r.elems,
			elem{set: affinityDests(a.Protocol, a.TimeoutSeconds), key: tupleOf(addr, port), verdict: gotoChain(rec)},
			elem{set: mAffinityPick, key: tupleOf(addr, protoA, port), verdict: jumpChain(pick)})
		if localAt(d) && len(sp.LocalEndpoints) > 0 {
			local = true
			r.elems = append(r.elems, elem{set: mAffinityPickLocal, key: tupleOf(addr, protoA, port), verdict: jumpChain(pickLocal)})
		}
	}
	r.affChains = []dynChain{
		{rec, []string{recordRule(f, set, r.affDests)}},
		{pick, pickRules(f, set, a.Protocol, affinityEndpointList(sp))},
	}
	if local {
		r.affChains = append(r.affChains, dynChain{pickLocal, pickRules(f, set, a.Protocol, sortedEndpoints(sp.LocalEndpoints))})
	}
}

// serviceHash names a Service port's affinity chains: stable across syncs
// and restarts, and short.
func serviceHash(n proxier.ServicePortName) string {
	h := fnv.New64a()
	h.Write([]byte(n.String()))
	return fmt.Sprintf("%016x", h.Sum64())
}

// affinityChain names the record chain of a Service port with affinity.
func affinityChain(n proxier.ServicePortName) string { return affinityChainPrefix + serviceHash(n) }

// recordRule is the rule of a record chain: the client's entry, for the
// endpoint the connection was DNATed to, written under every destination
// of the Service port.
func recordRule(f fam, set string, dests []netip.AddrPort) string {
	var b strings.Builder
	for i, d := range dests {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "update @%s { %s saddr . %s . %d . %s daddr . th dport }", set, f.ip, d.Addr(), d.Port(), f.ip)
	}
	return b.String()
}

// pickRules are the rules of a pick chain: for each endpoint, the client's
// entry under the packet's destination and that endpoint, then DNAT to it.
// The endpoint is a selector masked to zero and or'ed with its value (nft
// 1.0.6 takes no literal in a lookup's key).
func pickRules(f fam, set string, proto proxier.Protocol, eps []netip.AddrPort) []string {
	zero := "0.0.0.0"
	if f.ip == "ip6" {
		zero = "::"
	}
	rules := make([]string, 0, len(eps))
	for _, e := range eps {
		rules = append(rules, fmt.Sprintf("meta l4proto %s %s saddr . %s daddr . th dport . %s daddr & %s | %s . th dport & 0 | %d @%s dnat %s to %s",
			proto.Lower(), f.ip, f.ip, f.ip, zero, e.Addr(), e.Port(), set, f.ip, e))
	}
	return rules
}

// affinityEndpointList is every endpoint the Service port balances over,
// sorted: those the cluster pools' pick chain may pin a client to.
func affinityEndpointList(sp *proxier.ServicePlan) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(sp.ClusterEndpoints))
	for ep := range affinityEndpoints(sp) {
		out = append(out, ep)
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return out
}

// sortedEndpoints is eps as addresses and ports, sorted, without
// duplicates.
func sortedEndpoints(eps []proxier.Endpoint) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, e := range eps {
		out = append(out, netip.AddrPortFrom(e.IP, uint16(e.Port)))
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}

// lbRule is the single rule of a load-balancing chain.
func lbRule(f fam, p pool, proto string, k int) string {
	return fmt.Sprintf("dnat %s to %s . numgen random mod %d map @%s", f.ip, p.endpointsKeyExpr(f, proto), k, p.endpointsMap(proto))
}

// lbChainPool returns the pool, protocol and count of an lb chain name.
func lbChainPool(name string) (pool, string, int, bool) {
	for _, p := range pools {
		for _, proto := range protocols {
			if rest, ok := strings.CutPrefix(name, p.lbPrefix(proto)); ok {
				if k, err := strconv.Atoi(rest); err == nil {
					return p, proto, k, true
				}
			}
		}
	}
	return pool{}, "", 0, false
}

// renderAll plans and renders svcs, on every CPU when there are many.
func renderAll(cfg proxier.Config, st *proxier.State, svcs []*proxier.Service) []*svcRender {
	out := make([]*svcRender, len(svcs))
	f := famOf(cfg.Family)
	workers := runtime.GOMAXPROCS(0)
	if len(svcs) < 1000 || workers < 2 {
		workers = 1
	}
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(svcs); i += workers {
				sp := proxier.PlanService(cfg, st, svcs[i])
				out[i] = renderService(f, &sp)
			}
		}(w)
	}
	wg.Wait()
	return out
}
