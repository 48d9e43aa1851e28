package proxier

import (
	"net/netip"
	"slices"
)

// LocalMode is how traffic from this node's pods is told apart from other
// traffic (kube-proxy's --detect-local-mode).
type LocalMode string

// The detect-local modes.
const (
	LocalNone            LocalMode = ""
	LocalClusterCIDR     LocalMode = "ClusterCIDR"
	LocalNodeCIDR        LocalMode = "NodeCIDR"
	LocalBridgeInterface LocalMode = "BridgeInterface"
	LocalInterfacePrefix LocalMode = "InterfaceNamePrefix"
)

// LocalDetector says which packets come from local pods. CIDRs are used by the
// CIDR modes, Interface by the interface modes (a bridge name or a prefix).
type LocalDetector struct {
	Mode      LocalMode
	CIDRs     []netip.Prefix
	Interface string
}

// Implemented reports whether the detector can tell anything apart; when it
// cannot, ClusterIP traffic is never masqueraded for being non-local.
func (d LocalDetector) Implemented() bool {
	switch d.Mode {
	case LocalClusterCIDR, LocalNodeCIDR:
		return len(d.CIDRs) > 0
	case LocalBridgeInterface, LocalInterfacePrefix:
		return d.Interface != ""
	}
	return false
}

// Config is what a proxier knows that does not come from the API: flags.
type Config struct {
	Family IPFamily
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit used to flag packets for SNAT.
	MasqueradeBit int
	LocalDetector LocalDetector
	// NodeIPs are this node's addresses of this family: NodePorts listen on
	// those inside NodePortAddresses, and a load-balancer source range that
	// holds one lets the node itself through.
	NodeIPs []netip.Addr
	// NodePortAddresses limits NodePorts to node IPs inside these CIDRs;
	// empty means every local address.
	NodePortAddresses []netip.Prefix
	// LocalhostNodePorts makes NodePorts answer on 127.0.0.0/8 (IPv4 only;
	// needs route_localnet).
	LocalhostNodePorts bool
}

// NodePortsMatchAll reports whether NodePorts are open on every local
// address of the family, rather than on a list of node IPs.
func (c Config) NodePortsMatchAll() bool {
	any := false
	for _, p := range c.NodePortAddresses {
		if !c.Family.Matches(p.Addr()) {
			continue
		}
		any = true
		if p.Bits() == 0 {
			return true
		}
	}
	return !any
}

// NodePortIPs are the node IPs NodePorts listen on when they do not match
// every local address: node IPs inside NodePortAddresses, sorted.
func (c Config) NodePortIPs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range c.NodeIPs {
		if !c.Family.Matches(ip) {
			continue
		}
		for _, p := range c.NodePortAddresses {
			if p.Contains(ip) {
				out = append(out, ip)
				break
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// MasqueradeMark is the mark value, formatted as kube-proxy does ("0x00004000").
func (c Config) MasqueradeMark() string {
	return formatMark(uint32(1) << uint(c.MasqueradeBit))
}

func formatMark(m uint32) string {
	const hex = "0123456789abcdef"
	b := []byte("0x00000000")
	for i := 9; i >= 2; i-- {
		b[i] = hex[m&0xf]
		m >>= 4
	}
	return string(b)
}

// Verdict is what happens to new traffic for a destination.
type Verdict int

// Verdicts.
const (
	// Forward: DNAT to one of the target's endpoints.
	Forward Verdict = iota
	// Reject: no endpoints at all; refuse at once (ICMP port unreachable).
	Reject
	// Drop: endpoints exist but none that this traffic may use (a Local
	// traffic policy with no local endpoint).
	Drop
)

// ServicePlan is every decision about one service port that does not depend
// on the backend. Backends translate it; they do not re-decide it.
type ServicePlan struct {
	Svc *Service
	// ClusterEndpoints serve traffic under a Cluster policy: ready endpoints
	// (topology-filtered), or serving-terminating ones when none is ready.
	ClusterEndpoints []Endpoint
	// LocalEndpoints serve traffic under a Local policy: local ready
	// endpoints, or local serving-terminating ones when none is ready.
	LocalEndpoints []Endpoint
	// AllEndpoints is every endpoint either set uses, sorted; each gets a
	// DNAT target (and a hairpin masquerade) in the backend.
	AllEndpoints []Endpoint
	// HasEndpoints: some endpoint anywhere is ready or serving-terminating.
	// Without one, traffic is rejected; with one but none usable, dropped.
	HasEndpoints bool

	// Internal is the verdict for ClusterIP traffic, InternalEndpoints the
	// endpoints it goes to when the verdict is Forward.
	Internal          Verdict
	InternalEndpoints []Endpoint
	// MasqueradeInternal: MasqueradeAll masquerades every ClusterIP packet,
	// MasqueradeNonLocal only those not from local pods.
	MasqueradeInternal MasqueradeMode

	// External is the verdict for traffic to external destinations
	// (NodePort, external IPs, load-balancer IPs) from outside the node's
	// pods: Forward through the external path, Reject when there are no
	// endpoints, Drop when externalTrafficPolicy is Local and none is local.
	// Pods and the node itself are still served under Local (short-circuit).
	External Verdict
	// ExternalEndpoints serve external traffic: local endpoints under
	// externalTrafficPolicy Local, cluster endpoints otherwise.
	ExternalEndpoints []Endpoint
	// Firewall: load-balancer source ranges apply; FirewallAllowNode lets
	// traffic from the node itself through (a range holds a node IP).
	Firewall          bool
	FirewallRanges    []netip.Prefix
	FirewallAllowNode bool
}

// HasExternal reports whether the service has any external destination.
func (sp *ServicePlan) HasExternal() bool { return sp.Svc.ExternallyAccessible() }

// MasqueradeMode says which ClusterIP packets are SNATed.
type MasqueradeMode int

// Masquerade modes.
const (
	MasqueradeNone MasqueradeMode = iota
	MasqueradeNonLocal
	MasqueradeAll
)

// Plan is the whole node's plan for one family.
type Plan struct {
	Config   Config
	Services []ServicePlan
}

// UsesClusterEndpoints reports whether any traffic to s goes to cluster-wide
// endpoints.
func (s *Service) UsesClusterEndpoints() bool {
	return !s.InternalPolicyLocal || s.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether any traffic to s goes to local endpoints
// only.
func (s *Service) UsesLocalEndpoints() bool {
	return s.InternalPolicyLocal || (s.ExternalPolicyLocal && s.ExternallyAccessible())
}

// ExternallyAccessible reports whether s has any address reachable from
// outside the cluster: a NodePort, an external IP or a load-balancer IP.
func (s *Service) ExternallyAccessible() bool {
	return s.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
}

// MakePlan computes the plan for st under cfg. It is pure: the same inputs
// always give the same plan.
func MakePlan(cfg Config, st *State) *Plan {
	p := &Plan{Config: cfg, Services: make([]ServicePlan, 0, len(st.Services))}
	for _, svc := range st.Services {
		p.Services = append(p.Services, PlanService(cfg, st, svc))
	}
	return p
}

// PlanService is the plan of one service port of st; MakePlan calls it for
// each. Backends that keep per-service results call it directly.
func PlanService(cfg Config, st *State, svc *Service) ServicePlan {
	sp := ServicePlan{Svc: svc}
	sp.ClusterEndpoints, sp.LocalEndpoints, sp.AllEndpoints = categorize(st, svc)

	internal := sp.ClusterEndpoints
	if svc.InternalPolicyLocal {
		internal = sp.LocalEndpoints
	}
	for _, e := range svc.Endpoints {
		if e.Ready || (e.Serving && e.Terminating) {
			sp.HasEndpoints = true
			break
		}
	}
	switch {
	case !sp.HasEndpoints:
		sp.Internal = Reject
	case len(internal) == 0:
		sp.Internal = Drop
	default:
		sp.Internal = Forward
		sp.InternalEndpoints = internal
	}

	external := sp.ClusterEndpoints
	if svc.ExternalPolicyLocal {
		external = sp.LocalEndpoints
	}
	switch {
	case !sp.HasEndpoints:
		sp.External = Reject
	case len(external) == 0:
		sp.External = Drop
	default:
		sp.External = Forward
		sp.ExternalEndpoints = external
	}
	for _, r := range svc.LoadBalancerSourceRanges {
		if cfg.Family.Matches(r.Addr()) {
			sp.FirewallRanges = append(sp.FirewallRanges, r)
		}
	}
	sp.Firewall = sp.HasEndpoints && len(svc.LoadBalancerIPs) > 0 && len(sp.FirewallRanges) > 0
	if sp.Firewall {
		for _, r := range sp.FirewallRanges {
			for _, ip := range cfg.NodeIPs {
				if r.Contains(ip) {
					sp.FirewallAllowNode = true
				}
			}
		}
	}

	switch {
	case cfg.MasqueradeAll:
		sp.MasqueradeInternal = MasqueradeAll
	case cfg.LocalDetector.Implemented():
		sp.MasqueradeInternal = MasqueradeNonLocal
	}
	return sp
}

// categorize splits svc's endpoints into the cluster and local sets, applying
// topology and the terminating-endpoint fallback as kube-proxy does.
func categorize(st *State, svc *Service) (cluster, local, all []Endpoint) {
	if svc.UsesClusterEndpoints() {
		useTopology := topologyFilter(st, svc)
		cluster = filter(svc.Endpoints, func(e Endpoint) bool { return e.Ready && useTopology(e) })
		if len(cluster) == 0 {
			cluster = filter(svc.Endpoints, func(e Endpoint) bool { return e.Serving && e.Terminating })
		}
	}
	if svc.UsesLocalEndpoints() {
		local = filter(svc.Endpoints, func(e Endpoint) bool { return e.IsLocal && e.Ready })
		if len(local) == 0 {
			local = filter(svc.Endpoints, func(e Endpoint) bool { return e.IsLocal && e.Serving && e.Terminating })
		}
	}
	switch {
	case len(local) == 0:
		all = cluster
	case len(cluster) == 0:
		all = local
	default:
		all = append(slices.Clone(cluster), local...)
		slices.SortFunc(all, compareEndpoints)
		all = slices.CompactFunc(all, func(a, b Endpoint) bool { return compareEndpoints(a, b) == 0 })
	}
	return cluster, local, all
}

// topologyFilter returns the predicate cluster endpoints must pass under the
// service's topology hints: same node when every ready endpoint carries node
// hints and one names this node; else same zone when every ready endpoint
// carries zone hints and one names this node's zone; else everything.
func topologyFilter(st *State, svc *Service) func(Endpoint) bool {
	all := func(Endpoint) bool { return true }
	var ready int
	allNode, anyNode, allZone, anyZone := true, false, true, false
	for _, e := range svc.Endpoints {
		if !e.Ready {
			continue
		}
		ready++
		if len(e.NodeHints) == 0 {
			allNode = false
		} else if slices.Contains(e.NodeHints, st.NodeName) {
			anyNode = true
		}
		if len(e.ZoneHints) == 0 {
			allZone = false
		} else if st.NodeZone != "" && slices.Contains(e.ZoneHints, st.NodeZone) {
			anyZone = true
		}
	}
	if ready == 0 {
		return all
	}
	if allNode && anyNode {
		return func(e Endpoint) bool { return slices.Contains(e.NodeHints, st.NodeName) }
	}
	if allZone && anyZone {
		return func(e Endpoint) bool { return slices.Contains(e.ZoneHints, st.NodeZone) }
	}
	return all
}

func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func compareEndpoints(a, b Endpoint) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}
