package proxier

import (
	"fmt"
	"net/netip"
	"slices"
)

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

func (v Verdict) String() string {
	switch v {
	case Forward:
		return "forward"
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	}
	return "unknown"
}

// Policy is a traffic policy (internalTrafficPolicy or
// externalTrafficPolicy) in force for one kind of traffic.
type Policy int

// Traffic policies.
const (
	PolicyCluster Policy = iota
	PolicyLocal
)

func (p Policy) String() string {
	if p == PolicyLocal {
		return "Local"
	}
	return "Cluster"
}

// MarshalText makes a Policy its name in JSON.
func (p Policy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a Policy's name, so that a Trace's JSON decodes.
func (p *Policy) UnmarshalText(b []byte) error {
	switch string(b) {
	case "Cluster":
		*p = PolicyCluster
	case "Local":
		*p = PolicyLocal
	default:
		return fmt.Errorf("unknown traffic policy %q", b)
	}
	return nil
}

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
	// DNAT target in the backend.
	AllEndpoints []Endpoint
	// HasEndpoints: some endpoint anywhere is ready or serving-terminating.
	// Without one, traffic is rejected; with one but none usable, dropped.
	HasEndpoints bool

	// InternalPolicy is the policy for ClusterIP traffic. Internal is its
	// verdict, InternalEndpoints the endpoints it goes to when the verdict
	// is Forward.
	InternalPolicy    Policy
	Internal          Verdict
	InternalEndpoints []Endpoint
	// MasqueradeInternal: MasqueradeAll masquerades every ClusterIP packet,
	// MasqueradeNonLocal only those MasqueradeInternalMatch selects (the
	// ones not from this node's pods).
	MasqueradeInternal      MasqueradeMode
	MasqueradeInternalMatch LocalTraffic

	// ExternalPolicy is the policy for traffic to external destinations
	// (NodePort, external IPs, load-balancer IPs). External is the verdict
	// for such traffic from outside the node's pods: Forward through the
	// external path, Reject when there are no endpoints, Drop when the
	// policy is Local and none is local. ShortCircuit may serve pods and
	// the node itself all the same.
	ExternalPolicy Policy
	External       Verdict
	// ExternalEndpoints serve external traffic: local endpoints under
	// externalTrafficPolicy Local, cluster endpoints otherwise.
	ExternalEndpoints []Endpoint
	// MasqueradeExternal: traffic that takes the external path is
	// masqueraded (externalTrafficPolicy Cluster: the endpoint may be on
	// another node, whose reply must come back here). Under Local it keeps
	// its source address.
	MasqueradeExternal bool
	// ShortCircuit: how traffic to external destinations that starts on
	// this node bypasses the Local policy (kube-proxy's KUBE-EXT chain).
	ShortCircuit ShortCircuit
	// Firewall: load-balancer source ranges apply; FirewallAllowNode lets
	// traffic from the node itself through (a range holds a node IP), which
	// comes from a load-balancer IP.
	Firewall          bool
	FirewallRanges    []netip.Prefix
	FirewallAllowNode bool

	// Hairpin are the endpoints whose traffic to the Service, when it comes
	// back to themselves, is masqueraded (or the reply would bypass the
	// reverse DNAT): every endpoint of the port, as kube-proxy does. Sorted
	// as AllEndpoints.
	Hairpin []Endpoint
	// Affinity is ClientIP session affinity, when the port has it and
	// endpoints to pin.
	Affinity Affinity
}

// ShortCircuit is kube-proxy's exception to externalTrafficPolicy Local
// for traffic that starts on this node: it cannot reach a local endpoint
// that is not there, and it has no source address to preserve, so it goes
// to the cluster endpoints. The zero value short-circuits nothing.
type ShortCircuit struct {
	// Pods matches this node's pods: their traffic goes to the cluster
	// endpoints and keeps its source. Not implemented when pods cannot be
	// told apart.
	Pods LocalTraffic `json:"pods"`
	// Node: the node's own traffic goes to the cluster endpoints,
	// masqueraded (its source address may mean nothing to another node).
	Node bool `json:"node"`
}

// Affinity is a service port's ClientIP session affinity.
type Affinity struct {
	// TimeoutSeconds is how long a client stays pinned; 0 means no
	// affinity.
	TimeoutSeconds int32 `json:"timeoutSeconds"`
	// Protocol and Destinations: a client's entry is shared by every
	// destination of the port the node exposes — the ClusterIP, external
	// IPs and load-balancer IPs at the port, and the NodePort addresses at
	// the NodePort — in that order.
	Protocol     Protocol         `json:"protocol"`
	Destinations []netip.AddrPort `json:"destinations"`
}

// Enabled reports whether the port has session affinity.
func (a Affinity) Enabled() bool { return a.TimeoutSeconds > 0 }

// HasExternal reports whether the service has any external destination.
func (sp *ServicePlan) HasExternal() bool { return sp.Svc.ExternallyAccessible() }

// IsHairpin reports whether e is one of the Hairpin endpoints.
func (sp *ServicePlan) IsHairpin(e Endpoint) bool {
	_, ok := slices.BinarySearchFunc(sp.Hairpin, e, compareEndpoints)
	return ok
}

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
	// LocalPods matches traffic from this node's pods.
	LocalPods LocalTraffic
	// NodePorts says where NodePorts answer.
	NodePorts NodePorts
	// ServiceCIDRs are the State's service CIDRs of the family, else the
	// config's --service-cluster-ip-range ones.
	ServiceCIDRs []netip.Prefix
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
	p := &Plan{
		Config:       cfg,
		Services:     make([]ServicePlan, 0, len(st.Services)),
		LocalPods:    LocalPodTraffic(cfg.LocalDetector, cfg.Family),
		NodePorts:    NodePortsOf(cfg),
		ServiceCIDRs: familyPrefixes(st.ServiceCIDRs, cfg.Family),
	}
	if len(p.ServiceCIDRs) == 0 {
		p.ServiceCIDRs = familyPrefixes(cfg.ServiceClusterIPRange, cfg.Family)
	}
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
	sp.Hairpin = sp.AllEndpoints
	for _, e := range svc.Endpoints {
		if e.Ready || (e.Serving && e.Terminating) {
			sp.HasEndpoints = true
			break
		}
	}
	pick := func(local bool) (Policy, []Endpoint) {
		if local {
			return PolicyLocal, sp.LocalEndpoints
		}
		return PolicyCluster, sp.ClusterEndpoints
	}
	var internal, external []Endpoint
	sp.InternalPolicy, internal = pick(svc.InternalPolicyLocal)
	sp.Internal, sp.InternalEndpoints = verdict(sp.HasEndpoints, internal)
	sp.ExternalPolicy, external = pick(svc.ExternalPolicyLocal)
	sp.External, sp.ExternalEndpoints = verdict(sp.HasEndpoints, external)

	local := LocalPodTraffic(cfg.LocalDetector, cfg.Family)
	switch {
	case cfg.MasqueradeAll:
		sp.MasqueradeInternal = MasqueradeAll
	case local.Implemented():
		sp.MasqueradeInternal = MasqueradeNonLocal
		sp.MasqueradeInternalMatch = local.Not()
	}
	if svc.ExternallyAccessible() {
		if sp.ExternalPolicy == PolicyLocal {
			sp.ShortCircuit = ShortCircuit{Pods: local, Node: true}
		} else {
			sp.MasqueradeExternal = true
		}
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
	if svc.AffinityTimeoutSeconds > 0 && sp.HasEndpoints {
		sp.Affinity = affinity(cfg, svc)
	}
	return sp
}

// verdict is the verdict for traffic that may use eps, and the endpoints it
// goes to.
func verdict(hasEndpoints bool, eps []Endpoint) (Verdict, []Endpoint) {
	switch {
	case !hasEndpoints:
		return Reject, nil
	case len(eps) == 0:
		return Drop, nil
	}
	return Forward, eps
}

// affinity lists the destinations that share one client's affinity entry.
func affinity(cfg Config, svc *Service) Affinity {
	a := Affinity{TimeoutSeconds: svc.AffinityTimeoutSeconds, Protocol: svc.Protocol}
	port := uint16(svc.Port)
	a.Destinations = append(a.Destinations, netip.AddrPortFrom(svc.ClusterIP, port))
	for _, ips := range [][]netip.Addr{svc.ExternalIPs, svc.LoadBalancerIPs} {
		for _, ip := range ips {
			a.Destinations = append(a.Destinations, netip.AddrPortFrom(ip, port))
		}
	}
	if svc.NodePort != 0 {
		for _, ip := range NodePortsOf(cfg).Addrs(cfg.Family, cfg.NodeIPs) {
			a.Destinations = append(a.Destinations, netip.AddrPortFrom(ip, uint16(svc.NodePort)))
		}
	}
	return a
}
