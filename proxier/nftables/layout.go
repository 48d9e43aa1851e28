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
//	pick-*:      jump to the Service port's affinity pick chain, then
//	             vmap @count-* → lb-*-<K>
//	lb-*-<K>:    dnat to key . numgen random mod K map @endpoints-*
//
// Filter hooks hold what must happen after (or instead of) DNAT: the
// load-balancer source-range firewall (before DNAT), REJECT for services with
// no endpoints and DROP for Local policies with none local, rejection of
// unknown ClusterIP ports, and the recording of session affinity.
//
// The backend is three parts, which proxier.go ties together:
//
//   - the translator, pure: a State's plan rendered to typed elements and
//     chains (render.go, elem.go, skeleton.go, policy.go), their
//     ref-counted index (index.go), and the change from the last table
//     (translate.go, with the stale session affinity in affinity.go and
//     the repair of others' damage in repair.go);
//   - the writer, the only code that writes to the kernel: it picks how a
//     change gets there (writer.go, coldload.go, refill.go, netlink.go) and
//     deletes and carries session-affinity entries (affinity_kernel.go);
//   - the guard (package guard), which watches the table for others'
//     changes and hands the damage to the next sync.
package nftables

import (
	"bytes"
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

// Session affinity is per Service port, as kube-proxy's (whose affinity
// sets are per endpoint of the port, reached from every address of the
// port): a client pinned through the ClusterIP stays on its endpoint
// through the NodePort or an external IP.
//
// The dynamic sets hold (client . destination . port . endpoint . port),
// one set per protocol and timeout: sets, not maps with the endpoint as
// data, because nft 1.0.6 aborts on a dynamic map update whose key or
// data is longer than one 16-byte register (every IPv6 form of such an
// entry), while it writes a set update with a key of up to four. When a new connection of a Service
// port with affinity has been DNATed, its record chain (reached from the
// affinity-dests vmap by the original destination) writes the client's
// entry under every destination of the port at once.
//
// The pick chains jump, by the packet's destination, to the Service
// port's pick chain (affinity-dests-pick), which has one rule per
// endpoint: the client's entry for this destination and that endpoint,
// then DNAT to it. So an entry to an endpoint that is gone is never used.
// nft 1.0.6 takes no literal in a lookup's key, so the endpoint stands in
// the key as a selector masked to zero and or'ed with it. The local
// pools jump to a chain of this node's endpoints only
// (affinity-dests-pick-local): a Local traffic policy never follows an
// entry to a remote endpoint.

// Affinity sets and maps are named affinity-*: the dynamic sets the
// packet path fills, and the static affinity-dests-* the syncs write.
const (
	affinityPrefix      = "affinity-"
	affinityDestsPrefix = "affinity-dests-"
)

// isAffinitySet reports whether name is a dynamic affinity set.
func isAffinitySet(name string) bool {
	return strings.HasPrefix(name, affinityPrefix) && !strings.HasPrefix(name, affinityDestsPrefix)
}

// isTrafficSet is isAffinitySet of a name's bytes, without allocating: the
// sets whose elements the packet path writes, which the guard leaves to it.
func isTrafficSet(name []byte) bool {
	return bytes.HasPrefix(name, affinityPrefixBytes) && !bytes.HasPrefix(name, affinityDestsPrefixBytes)
}

var affinityPrefixBytes, affinityDestsPrefixBytes = []byte(affinityPrefix), []byte(affinityDestsPrefix)

// affinitySet is the dynamic set remembering the endpoint each client was
// sent to, per protocol and timeout.
func affinitySet(proto proxier.Protocol, timeout int32) string {
	return fmt.Sprintf("affinity-%s-%d", proto.Lower(), timeout)
}

// affinityDests maps the original destinations (daddr . dport) of the
// Service ports whose affinity is kept in affinitySet(proto, timeout) to
// their record chains.
func affinityDests(proto proxier.Protocol, timeout int32) string {
	return fmt.Sprintf("affinity-dests-%s-%d", proto.Lower(), timeout)
}

// mAffinityPick and mAffinityPickLocal map the destinations (daddr .
// proto . dport) of the Service ports with affinity to their pick chains:
// every endpoint, and this node's.
const (
	mAffinityPick      = "affinity-dests-pick"
	mAffinityPickLocal = "affinity-dests-pick-local"
)

// Chain name prefixes of a Service port with affinity: its record chain,
// and its pick chains.
const (
	affinityChainPrefix     = "affinity-rec-"
	affinityPickPrefix      = "affinity-pick-"
	affinityPickLocalPrefix = "affinity-pick-local-"
)

// fam is the per-family spelling of types and expressions.
type fam struct {
	family knftables.Family
	ip     string // "ip" or "ip6" (as in "ip daddr")
	addr   string // ipv4_addr or ipv6_addr
}

func famOf(f proxier.IPFamily) fam {
	if f == proxier.IPv6 {
		return fam{knftables.IPv6Family, "ip6", "ipv6_addr"}
	}
	return fam{knftables.IPv4Family, "ip", "ipv4_addr"}
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
