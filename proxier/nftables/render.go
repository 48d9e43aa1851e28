package nftables

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// elem is one set or map element: the set/map it belongs to, its key
// components and (for maps) value components.
type elem struct {
	set   string
	key   []string
	value []string
}

// id identifies an element within the table: its set and key.
func (e elem) id() string {
	n := len(e.set) + 1
	for _, k := range e.key {
		n += len(k) + 3
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(e.set)
	b.WriteByte(0)
	for i, k := range e.key {
		if i > 0 {
			b.WriteString(" . ")
		}
		b.WriteString(k)
	}
	return b.String()
}

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
	// affDests are the destinations (address, port) of a Service port
	// with affinity, affChain its record chain and affRules the chain's
	// rules.
	affDests [][2]string
	affChain string
	affRules []string
}

func secondsDuration(s int32) time.Duration { return time.Duration(s) * time.Second }

// renderService computes one service port's elements from its plan.
func renderService(cfg proxier.Config, sp *proxier.ServicePlan, noAffinity bool) *svcRender {
	svc := sp.Svc
	r := &svcRender{plan: *sp, lbCounts: map[string]int{}}
	proto := svc.Protocol.Lower()
	port := strconv.Itoa(int(svc.Port))
	dest := func(ip netip.Addr) []string { return []string{ip.String(), proto, port} }
	add := func(set string, key []string, value ...string) {
		r.elems = append(r.elems, elem{set: set, key: key, value: value})
	}
	addPool := func(p pool, key []string, eps []proxier.Endpoint) {
		if len(eps) == 0 {
			return
		}
		lb := p.lbChain(proto, len(eps))
		r.lbCounts[lb] = len(eps)
		add(p.countMap(), key, "goto "+lb)
		// The endpoints map is per protocol: its key has no protocol.
		epKey := slices.Delete(slices.Clone(key), len(key)-2, len(key)-1)
		for i, e := range eps {
			add(p.endpointsMap(proto), append(slices.Clone(epKey), strconv.Itoa(i)), e.IP.String(), strconv.Itoa(int(e.Port)))
		}
	}
	noEndpoints := func(v proxier.Verdict) string {
		if v == proxier.Reject {
			return "goto " + chReject
		}
		return "drop"
	}

	add(sClusterIPs, []string{svc.ClusterIP.String()})

	// ClusterIP.
	switch sp.Internal {
	case proxier.Forward:
		if svc.InternalPolicyLocal {
			add(mServiceIPs, dest(svc.ClusterIP), "goto "+chClusterIPLocal)
			addPool(poolIPLocal, dest(svc.ClusterIP), sp.InternalEndpoints)
		} else {
			add(mServiceIPs, dest(svc.ClusterIP), "goto "+chClusterIP)
			addPool(poolIP, dest(svc.ClusterIP), sp.InternalEndpoints)
		}
	default:
		add(mNoEndpointServices, dest(svc.ClusterIP), noEndpoints(sp.Internal))
	}

	// External destinations.
	if svc.ExternallyAccessible() {
		externalIPs := append(slices.Clone(svc.ExternalIPs), svc.LoadBalancerIPs...)
		npKey := []string{proto, strconv.Itoa(int(svc.NodePort))}
		if sp.HasEndpoints {
			ipChain, npChain := chExternal, chNodePort
			if svc.ExternalPolicyLocal {
				ipChain, npChain = chExternalLocal, chNodePortLocal
			}
			for _, ip := range externalIPs {
				add(mServiceIPs, dest(ip), "goto "+ipChain)
				addPool(poolIP, dest(ip), sp.ClusterEndpoints)
				if svc.ExternalPolicyLocal {
					addPool(poolIPLocal, dest(ip), sp.LocalEndpoints)
				}
			}
			if svc.NodePort != 0 {
				add(mServiceNodePorts, npKey, "goto "+npChain)
				addPool(poolNP, npKey, sp.ClusterEndpoints)
				if svc.ExternalPolicyLocal {
					addPool(poolNPLocal, npKey, sp.LocalEndpoints)
				}
			}
		}
		if sp.External != proxier.Forward {
			for _, ip := range externalIPs {
				add(mNoEndpointServices, dest(ip), noEndpoints(sp.External))
			}
			if svc.NodePort != 0 {
				add(mNoEndpointNodePort, npKey, noEndpoints(sp.External))
			}
		}
		if sp.Firewall {
			for _, ip := range svc.LoadBalancerIPs {
				add(sFirewallDests, dest(ip))
				for _, cidr := range sp.FirewallRanges {
					add(sFirewallAllow, append(dest(ip), cidr.String()))
				}
				if sp.FirewallAllowNode {
					add(sFirewallAllow, append(dest(ip), ip.String()))
				}
			}
		}
	}

	// Hairpin: an endpoint reaching itself through the service is SNATed.
	// Only a pod on this node can send its own packets through this node.
	for _, e := range sp.AllEndpoints {
		if e.IsLocal {
			add(sHairpin, []string{e.IP.String(), e.IP.String()})
		}
	}

	if t := svc.AffinityTimeoutSeconds; t > 0 && sp.HasEndpoints && !noAffinity {
		r.affinity = &affinityKey{svc.Protocol, t}
		r.affDests = [][2]string{{svc.ClusterIP.String(), port}}
		for _, ip := range append(slices.Clone(svc.ExternalIPs), svc.LoadBalancerIPs...) {
			r.affDests = append(r.affDests, [2]string{ip.String(), port})
		}
		if svc.NodePort != 0 {
			for _, ip := range cfg.NodeIPs {
				if cfg.Family.Matches(ip) {
					r.affDests = append(r.affDests, [2]string{ip.String(), strconv.Itoa(int(svc.NodePort))})
				}
			}
		}
		r.affChain = affinityChain(svc.Name)
		for _, d := range r.affDests {
			add(affinityDests(svc.Protocol, t), d[:], "goto "+r.affChain)
		}
		local := svc.ExternalPolicyLocal || svc.InternalPolicyLocal
		if local {
			for _, e := range sp.AllEndpoints {
				if e.IsLocal {
					add(sAffinityLocalEPs, []string{e.IP.String(), proto, strconv.Itoa(int(e.Port))})
				}
			}
		}
		r.affRules = affinityRules(famOf(cfg.Family), *r.affinity, r.affDests, local)
	}
	return r
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
func affinityRules(f fam, a affinityKey, dests [][2]string, local bool) []string {
	updates := func(m string) string {
		var b strings.Builder
		for i, d := range dests {
			if i > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "update @%s { %s saddr . %s . %s : %s daddr . th dport }", m, f.ip, d[0], d[1], f.ip)
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
