// Package nftables is svcproxy's nftables backend. Its layout does not grow
// with the number of Services: a fixed set of chains, sets and maps, where
// each Service costs only map and set elements. (A set or map per Service
// makes the kernel walk every set whenever one is bound, which is O(N²); see
// "The floor" in the performance notes.) The only chains that multiply are
// the load-balancing chains, one per distinct endpoint count and endpoint
// map, which do not depend on the number of Services.
//
// Packet path (nat prerouting/output → "services"):
//
//	services:    daddr . proto . dport vmap @service-ips      → a policy chain
//	             local daddr: proto . dport vmap @service-nodeports → a policy chain
//	policy:      cluster-ip | cluster-ip-local | external | external-local |
//	             nodeport | nodeport-local: masquerade marks and the Local
//	             traffic-policy short-circuits, then goto a pick chain
//	pick-*:      session affinity lookup, then vmap @count-* → lb-*-<K>
//	lb-*-<K>:    dnat to key . numgen random mod K map @endpoints-*
//
// Filter hooks hold what must happen after (or instead of) DNAT: the
// load-balancer source-range firewall (before DNAT), REJECT for services with
// no endpoints and DROP for Local policies with none local, rejection of
// unknown ClusterIP ports, and the recording of session affinity.
package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
)

// TableName is the name of svcproxy's table in both the ip and ip6 families.
const TableName = "svcproxy"

// Fixed chain names.
const (
	chFilterPreroutingPreDNAT = "filter-prerouting-pre-dnat"
	chFilterOutputPreDNAT     = "filter-output-pre-dnat"
	chFilterInput             = "filter-input"
	chFilterForward           = "filter-forward"
	chFilterOutput            = "filter-output"
	chNATPrerouting           = "nat-prerouting"
	chNATOutput               = "nat-output"
	chNATPostrouting          = "nat-postrouting"

	chFirewallCheck   = "firewall-check"
	chServiceEPCheck  = "service-endpoints-check"
	chNodePortEPCheck = "nodeport-endpoints-check"
	chClusterIPsCheck = "cluster-ips-check"
	chReject          = "reject-chain"
	chServices        = "services"
	chMasquerading    = "masquerading"
	chMarkMasq        = "mark-for-masquerade"
	chAffinityRecord  = "affinity-record"

	chClusterIP      = "cluster-ip"
	chClusterIPLocal = "cluster-ip-local"
	chExternal       = "external"
	chExternalLocal  = "external-local"
	chNodePort       = "nodeport"
	chNodePortLocal  = "nodeport-local"
)

// pool is one endpoint pool family: addressed by destination (ClusterIP,
// external and load-balancer IPs) or by NodePort; all or local endpoints.
type pool struct {
	name   string // ip, ip-local, np, np-local
	byPort bool   // keyed by proto . port only (NodePorts)
}

var (
	poolIP      = pool{"ip", false}
	poolIPLocal = pool{"ip-local", false}
	poolNP      = pool{"np", true}
	poolNPLocal = pool{"np-local", true}
	pools       = []pool{poolIP, poolIPLocal, poolNP, poolNPLocal}
)

func (p pool) pickChain() string { return "pick-" + p.name }
func (p pool) local() bool       { return strings.HasSuffix(p.name, "-local") }
func (p pool) countMap() string  { return "count-" + p.name }

// protocols are the Service protocols. Endpoint maps and lb chains are per
// protocol: a DNAT to an address and port carries a dependency on the
// transport protocol, which nft takes from the map's value type.
var protocols = []string{"tcp", "udp", "sctp"}

func (p pool) endpointsMap(proto string) string { return "endpoints-" + p.name + "-" + proto }
func (p pool) lbChain(proto string, k int) string {
	return fmt.Sprintf("lb-%s-%s-%d", p.name, proto, k)
}
func (p pool) lbPrefix(proto string) string { return "lb-" + p.name + "-" + proto + "-" }

// endpointsKeyExpr is the key of an endpoints map without the random index.
func (p pool) endpointsKeyExpr(f fam, proto string) string {
	if p.byPort {
		return proto + " dport"
	}
	return f.ip + " daddr . " + proto + " dport"
}
func (p pool) keyExpr(f fam) string {
	if p.byPort {
		return "meta l4proto . th dport"
	}
	return f.ip + " daddr . meta l4proto . th dport"
}

// Fixed set and map names.
const (
	mServiceIPs         = "service-ips"
	mServiceNodePorts   = "service-nodeports"
	mNoEndpointServices = "no-endpoint-services"
	mNoEndpointNodePort = "no-endpoint-nodeports"
	sClusterIPs         = "cluster-ips"
	sServiceCIDRs       = "service-cidrs"
	sNodePortIPs        = "nodeport-ips"
	sFirewallDests      = "firewall-dests"
	sFirewallAllow      = "firewall-allow"
	sHairpin            = "hairpin"
)

// Session affinity is per Service port, as kube-proxy's (whose recent
// lists are per endpoint chain, reached from every address of the Service
// port): a client pinned through the ClusterIP stays on its endpoint
// through the NodePort or an external IP. The pick chains look a client up
// by (saddr . daddr . dport), with the packet's own destination; so when a
// new connection of a Service port with affinity has been DNATed, its
// record chain (one per such Service port, reached from the
// affinity-dests vmap by the original destination) writes the client's
// entry under every destination of the Service port at once. nft 1.0.6
// cannot look a map up with constants in the key, but it can update one
// so.
//
// Local traffic policies must not reuse an entry that points to a remote
// endpoint: the local pools look clients up in a map of their own,
// written only when the endpoint chosen is one of this node's
// (affinity-dests-local-eps).

// Affinity maps and sets are named affinity-*: the dynamic maps the
// packet path fills, and the static affinity-dests-* the syncs write.
const (
	affinityPrefix      = "affinity-"
	affinityDestsPrefix = "affinity-dests-"
)

// isAffinityMap reports whether name is a dynamic affinity map.
func isAffinityMap(name string) bool {
	return strings.HasPrefix(name, affinityPrefix) && !strings.HasPrefix(name, affinityDestsPrefix)
}

// affinityMap is the dynamic map remembering the endpoint each client was
// sent to, per protocol and timeout.
func affinityMap(proto proxier.Protocol, timeout int32) string {
	return fmt.Sprintf("affinity-%s-%d", proto.Lower(), timeout)
}

// affinityLocalMap is affinityMap for the local pools: only endpoints on
// this node.
func affinityLocalMap(proto proxier.Protocol, timeout int32) string {
	return fmt.Sprintf("affinity-local-%s-%d", proto.Lower(), timeout)
}

// affinityDests maps the original destinations (daddr . dport) of the
// Service ports whose affinity is kept in affinityMap(proto, timeout) to
// their record chains.
func affinityDests(proto proxier.Protocol, timeout int32) string {
	return fmt.Sprintf("affinity-dests-%s-%d", proto.Lower(), timeout)
}

// sAffinityLocalEPs holds the endpoints on this node (addr . proto . port)
// of Service ports with affinity and a Local traffic policy.
const sAffinityLocalEPs = "affinity-dests-local-eps"

// affinityChainPrefix starts the name of a Service port's record chain.
const affinityChainPrefix = "affinity-rec-"

// fam is the per-family spelling of types and expressions.
type fam struct {
	family knftables.Family
	ip     string // "ip" or "ip6" (as in "ip daddr")
	addr   string // ipv4_addr or ipv6_addr
	lo     string // loopback net
}

func famOf(f proxier.IPFamily) fam {
	if f == proxier.IPv6 {
		return fam{knftables.IPv6Family, "ip6", "ipv6_addr", "::1"}
	}
	return fam{knftables.IPv4Family, "ip", "ipv4_addr", "127.0.0.0/8"}
}

func ptr[T any](v T) *T { return &v }

func baseChain(name string, t knftables.BaseChainType, h knftables.BaseChainHook, prio knftables.BaseChainPriority) *knftables.Chain {
	return &knftables.Chain{Name: name, Type: ptr(t), Hook: ptr(h), Priority: ptr(prio)}
}

// skeleton is the fixed part of the table for a config: chains with their
// static rules, and every set and map (without elements).
type skeleton struct {
	chains []*knftables.Chain
	rules  map[string][]string // chain → rules
	sets   []*knftables.Set
	maps   []*knftables.Map
	elems  []elem // fixed elements: the NodePort addresses
}

// setDef is a set or map of the skeleton: its name and definition.
type setDef struct {
	name string
	obj  knftables.Object
}

// setDefs lists the skeleton's sets, then its maps, in their order.
func (sk *skeleton) setDefs() []setDef {
	out := make([]setDef, 0, len(sk.sets)+len(sk.maps))
	for _, s := range sk.sets {
		out = append(out, setDef{s.Name, s})
	}
	for _, m := range sk.maps {
		out = append(out, setDef{m.Name, m})
	}
	return out
}

func newSkeleton(cfg proxier.Config, affinity []affinityKey) *skeleton {
	f := famOf(cfg.Family)
	mark := cfg.MasqueradeMark()
	sk := &skeleton{rules: map[string][]string{}}
	add := func(c *knftables.Chain, rules ...string) {
		sk.chains = append(sk.chains, c)
		sk.rules[c.Name] = rules
	}
	// Numeric priorities: nft before 1.0.7 rejects the names "dstnat" and
	// "srcnat" in the output hook. dstnat is -100, srcnat 100, filter 0.
	dnatPrio := knftables.BaseChainPriority("-100")
	preDNAT := knftables.BaseChainPriority("-110")
	snatPrio := knftables.BaseChainPriority("100")

	recordJump := []string{}
	if len(affinity) > 0 {
		recordJump = []string{"ct state new ct status dnat jump " + chAffinityRecord}
	}
	add(baseChain(chFilterPreroutingPreDNAT, knftables.FilterType, knftables.PreroutingHook, preDNAT), "ct state new jump "+chFirewallCheck)
	add(baseChain(chFilterOutputPreDNAT, knftables.FilterType, knftables.OutputHook, preDNAT), "ct state new jump "+chFirewallCheck)
	// Affinity is recorded wherever a DNATed connection's first packet
	// ends up: forwarded to a pod, or delivered to this host (an endpoint on
	// the host network).
	add(baseChain(chFilterInput, knftables.FilterType, knftables.InputHook, knftables.FilterPriority),
		append([]string{"ct state new jump " + chNodePortEPCheck, "ct state new jump " + chServiceEPCheck}, recordJump...)...)
	add(baseChain(chFilterForward, knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority),
		append([]string{"ct state new jump " + chServiceEPCheck, "ct state new jump " + chClusterIPsCheck}, recordJump...)...)
	add(baseChain(chFilterOutput, knftables.FilterType, knftables.OutputHook, knftables.FilterPriority),
		append([]string{"ct state new jump " + chServiceEPCheck, "ct state new jump " + chClusterIPsCheck}, recordJump...)...)
	add(baseChain(chNATPrerouting, knftables.NATType, knftables.PreroutingHook, dnatPrio), "jump "+chServices)
	add(baseChain(chNATOutput, knftables.NATType, knftables.OutputHook, dnatPrio), "jump "+chServices)
	add(baseChain(chNATPostrouting, knftables.NATType, knftables.PostroutingHook, snatPrio), "jump "+chMasquerading)

	key := f.ip + " daddr . meta l4proto . th dport"
	add(&knftables.Chain{Name: chFirewallCheck},
		fmt.Sprintf("%s @%s %s . %s saddr != @%s drop", key, sFirewallDests, key, f.ip, sFirewallAllow))
	add(&knftables.Chain{Name: chServiceEPCheck}, key+" vmap @"+mNoEndpointServices)
	add(&knftables.Chain{Name: chNodePortEPCheck}, nodePortMatch(cfg, f)+" meta l4proto . th dport vmap @"+mNoEndpointNodePort)
	// A known ClusterIP on an unknown port is rejected; any other address in
	// a service CIDR is unallocated and dropped. The CIDRs are elements of
	// an interval set, so a ServiceCIDR change is an element change, not a
	// new rule (see serviceCIDRElems).
	add(&knftables.Chain{Name: chClusterIPsCheck},
		fmt.Sprintf("%s daddr @%s reject", f.ip, sClusterIPs),
		fmt.Sprintf("%s daddr @%s drop", f.ip, sServiceCIDRs))
	add(&knftables.Chain{Name: chReject}, "reject")
	add(&knftables.Chain{Name: chServices},
		key+" vmap @"+mServiceIPs,
		nodePortMatch(cfg, f)+" meta l4proto . th dport vmap @"+mServiceNodePorts)
	add(&knftables.Chain{Name: chMarkMasq}, "mark set mark or "+mark)
	add(&knftables.Chain{Name: chMasquerading},
		fmt.Sprintf("ct status dnat %s saddr . %s daddr @%s masquerade fully-random", f.ip, f.ip, sHairpin),
		fmt.Sprintf("mark and %s == 0 return", mark),
		"mark set mark xor "+mark,
		"masquerade fully-random")

	// Policy chains.
	var masq []string
	switch {
	case cfg.MasqueradeAll:
		masq = []string{"jump " + chMarkMasq}
	case cfg.LocalDetector.Implemented():
		masq = []string{ifNotLocal(cfg, f) + " jump " + chMarkMasq}
	}
	add(&knftables.Chain{Name: chClusterIP}, append(masq, "goto "+poolIP.pickChain())...)
	add(&knftables.Chain{Name: chClusterIPLocal}, append(masq, "goto "+poolIPLocal.pickChain())...)
	add(&knftables.Chain{Name: chExternal}, "jump "+chMarkMasq, "goto "+poolIP.pickChain())
	add(&knftables.Chain{Name: chNodePort}, "jump "+chMarkMasq, "goto "+poolNP.pickChain())
	for _, lc := range []struct {
		name           string
		cluster, local pool
	}{{chExternalLocal, poolIP, poolIPLocal}, {chNodePortLocal, poolNP, poolNPLocal}} {
		var rules []string
		if cfg.LocalDetector.Implemented() {
			rules = append(rules, ifLocal(cfg, f)+" goto "+lc.cluster.pickChain())
		}
		rules = append(rules,
			"fib saddr type local jump "+chMarkMasq,
			"fib saddr type local goto "+lc.cluster.pickChain(),
			"goto "+lc.local.pickChain())
		add(&knftables.Chain{Name: lc.name}, rules...)
	}

	// Pick chains: affinity first (a client with an entry is DNATed to its
	// endpoint), then the endpoint count.
	for _, p := range pools {
		var rules []string
		for _, a := range affinity {
			m := affinityMap(a.proto, a.timeout)
			if p.local() {
				m = affinityLocalMap(a.proto, a.timeout)
			}
			rules = append(rules, fmt.Sprintf("meta l4proto %s dnat %s to %s saddr . %s daddr . th dport map @%s",
				a.proto.Lower(), f.ip, f.ip, f.ip, m))
		}
		rules = append(rules, p.keyExpr(f)+" vmap @"+p.countMap())
		add(&knftables.Chain{Name: p.pickChain()}, rules...)
	}
	if len(affinity) > 0 {
		var rules []string
		for _, a := range affinity {
			rules = append(rules, fmt.Sprintf("meta l4proto %s ct original %s daddr . ct original proto-dst vmap @%s",
				a.proto.Lower(), f.ip, affinityDests(a.proto, a.timeout)))
		}
		add(&knftables.Chain{Name: chAffinityRecord}, rules...)
	}

	// Sets and maps.
	svcKey := f.addr + " . inet_proto . inet_service"
	verdictMap := func(name, typ string) {
		sk.maps = append(sk.maps, &knftables.Map{Name: name, Type: typ + " : verdict"})
	}
	verdictMap(mServiceIPs, svcKey)
	verdictMap(mServiceNodePorts, "inet_proto . inet_service")
	verdictMap(mNoEndpointServices, svcKey)
	verdictMap(mNoEndpointNodePort, "inet_proto . inet_service")
	for _, p := range pools {
		if p.byPort {
			verdictMap(p.countMap(), "inet_proto . inet_service")
		} else {
			verdictMap(p.countMap(), svcKey)
		}
		// Typed with the protocol's own "dport", never "th dport": nft
		// 1.0.6 cannot read a "th dport" value back from the kernel (a later
		// rule using the map fails with "conflicting protocols").
		for _, proto := range protocols {
			sk.maps = append(sk.maps, &knftables.Map{Name: p.endpointsMap(proto),
				TypeOf: p.endpointsKeyExpr(f, proto) + " . numgen random mod 1 : " + f.ip + " daddr . " + proto + " dport"})
		}
	}
	if !cfg.NodePortsMatchAll() {
		for _, ip := range cfg.NodePortIPs() {
			sk.elems = append(sk.elems, elem{set: sNodePortIPs, key: tupleOf(addrAtom(ip))})
		}
	}
	sk.sets = append(sk.sets,
		&knftables.Set{Name: sClusterIPs, Type: f.addr},
		&knftables.Set{Name: sServiceCIDRs, Type: f.addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}},
		&knftables.Set{Name: sNodePortIPs, Type: f.addr},
		&knftables.Set{Name: sFirewallDests, Type: svcKey},
		&knftables.Set{Name: sFirewallAllow, Type: svcKey + " . " + f.addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}},
		&knftables.Set{Name: sHairpin, Type: f.addr + " . " + f.addr},
	)
	if len(affinity) > 0 {
		sk.sets = append(sk.sets, &knftables.Set{Name: sAffinityLocalEPs, Type: svcKey})
	}
	for _, a := range affinity {
		sk.maps = append(sk.maps, &knftables.Map{Name: affinityDests(a.proto, a.timeout), TypeOf: f.ip + " daddr . th dport : verdict"})
		for _, m := range []string{affinityMap(a.proto, a.timeout), affinityLocalMap(a.proto, a.timeout)} {
			sk.maps = append(sk.maps, &knftables.Map{Name: m,
				TypeOf:  f.ip + " saddr . " + f.ip + " daddr . th dport : " + f.ip + " daddr . " + a.proto.Lower() + " dport",
				Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
				Timeout: ptr(secondsDuration(a.timeout))})
		}
	}
	return sk
}

// key is a fingerprint of the skeleton: a change means a full rewrite.
func (sk *skeleton) key() string {
	var b strings.Builder
	for _, c := range sk.chains {
		fmt.Fprintf(&b, "%s|%v|%v|%v\n", c.Name, deref(c.Type), deref(c.Hook), deref(c.Priority))
		for _, r := range sk.rules[c.Name] {
			b.WriteString(r + "\n")
		}
	}
	for _, s := range sk.sets {
		fmt.Fprintf(&b, "set %s %s %s %v\n", s.Name, s.Type, s.TypeOf, s.Flags)
	}
	for _, m := range sk.maps {
		fmt.Fprintf(&b, "map %s %s %s %v %v\n", m.Name, m.Type, m.TypeOf, m.Flags, deref(m.Timeout))
	}
	for _, e := range sk.elems {
		fmt.Fprintf(&b, "element %s %s\n", e.set, e.keyText(mustSpec(e.set)))
	}
	return b.String()
}

func deref[T any](v *T) any {
	if v == nil {
		return nil
	}
	return *v
}

// serviceCIDRElems are the elements of the service-cidrs set for cidrs:
// those of family f, masked, sorted, without duplicates and without any
// prefix that another one contains (the set has no auto-merge, and the
// kernel rejects overlapping intervals).
func serviceCIDRElems(f proxier.IPFamily, cidrs []netip.Prefix) []elem {
	var ps []netip.Prefix
	for _, c := range cidrs {
		if !c.IsValid() || !f.Matches(c.Addr()) {
			continue
		}
		if c.Addr().Is4In6() {
			if c.Bits() < 96 {
				continue
			}
			c = netip.PrefixFrom(c.Addr().Unmap(), c.Bits()-96)
		}
		ps = append(ps, c.Masked())
	}
	// Shorter prefixes first: a prefix is covered iff an earlier kept one
	// contains its address.
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	var kept []netip.Prefix
	for _, p := range ps {
		if !slices.ContainsFunc(kept, func(k netip.Prefix) bool { return k.Contains(p.Addr()) }) {
			kept = append(kept, p)
		}
	}
	slices.SortFunc(kept, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	out := make([]elem, 0, len(kept))
	for _, p := range kept {
		out = append(out, elem{set: sServiceCIDRs, key: tupleOf(prefixAtom(p))})
	}
	return out
}

// parseCIDRs parses CIDR strings, skipping invalid ones.
func parseCIDRs(ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if p, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// nodePortMatch selects packets addressed to a NodePort address.
func nodePortMatch(cfg proxier.Config, f fam) string {
	if cfg.NodePortsMatchAll() {
		return fmt.Sprintf("fib daddr type local %s daddr != %s", f.ip, f.lo)
	}
	return fmt.Sprintf("%s daddr @%s", f.ip, sNodePortIPs)
}

func ifNotLocal(cfg proxier.Config, f fam) string {
	d := cfg.LocalDetector
	switch d.Mode {
	case proxier.LocalClusterCIDR, proxier.LocalNodeCIDR:
		for _, c := range d.CIDRs {
			if cfg.Family.Matches(c.Addr()) {
				return fmt.Sprintf("%s saddr != %s", f.ip, c)
			}
		}
	case proxier.LocalBridgeInterface:
		return fmt.Sprintf("iifname != %q", d.Interface)
	case proxier.LocalInterfacePrefix:
		return fmt.Sprintf("iifname != %q", d.Interface+"*")
	}
	return ""
}

func ifLocal(cfg proxier.Config, f fam) string {
	return strings.Replace(ifNotLocal(cfg, f), " != ", " ", 1)
}
