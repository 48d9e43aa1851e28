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

// affinityKey identifies an affinity map: one per protocol and timeout in use.
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
	// with affinity, affChain its record chain and affRules the chain's
	// rules.
	affDests []netip.AddrPort
	affChain string
	affRules []string
}

func secondsDuration(s int32) time.Duration { return time.Duration(s) * time.Second }

// renderService computes one service port's elements from its plan.
func renderService(f fam, sp *proxier.ServicePlan, noAffinity bool) *svcRender {
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

	if a := sp.Affinity; a.Enabled() && !noAffinity {
		r.affinity = &affinityKey{a.Protocol, a.TimeoutSeconds}
		r.affDests = a.Destinations
		r.affChain = affinityChain(svc.Name)
		for _, d := range r.affDests {
			addV(affinityDests(a.Protocol, a.TimeoutSeconds), tupleOf(addrAtom(d.Addr()), portAtom(int32(d.Port()))), gotoChain(r.affChain))
		}
		local := sp.InternalPolicy == proxier.PolicyLocal || sp.ExternalPolicy == proxier.PolicyLocal
		if local {
			for _, e := range sp.LocalEndpoints {
				add(sAffinityLocalEPs, tupleOf(addrAtom(e.IP), protoA, portAtom(e.Port)))
			}
		}
		r.affRules = affinityRules(f, *r.affinity, r.affDests, local)
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
		n += len(sp.Affinity.Destinations) + len(sp.LocalEndpoints)
	}
	return n
}

// affinityChain names the record chain of a Service port with affinity:
// stable across syncs and restarts, and short.
func affinityChain(n proxier.ServicePortName) string {
	h := fnv.New64a()
	h.Write([]byte(n.String()))
	return fmt.Sprintf("%s%016x", affinityChainPrefix, h.Sum64())
}

// affinityRules are the rules of a record chain: the client's entry
// written under every destination of the Service port, and into the local
// pools' map too when the endpoint is on this node and a Local policy may
// look it up.
func affinityRules(f fam, a affinityKey, dests []netip.AddrPort, local bool) []string {
	updates := func(m string) string {
		var b strings.Builder
		for i, d := range dests {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "update @%s { %s saddr . %s . %d : %s daddr . th dport }", m, f.ip, d.Addr(), d.Port(), f.ip)
		}
		return b.String()
	}
	rules := []string{updates(affinityMap(a.proto, a.timeout))}
	if local {
		rules = append(rules, fmt.Sprintf("%s daddr . meta l4proto . th dport @%s %s", f.ip, sAffinityLocalEPs, updates(affinityLocalMap(a.proto, a.timeout))))
	}
	return rules
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

// renderAll plans and renders svcs, on every CPU when there are many;
// without session affinity when noAffinity.
func renderAll(cfg proxier.Config, st *proxier.State, svcs []*proxier.Service, noAffinity bool) []*svcRender {
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
				out[i] = renderService(f, &sp, noAffinity)
			}
		}(w)
	}
	wg.Wait()
	return out
}
