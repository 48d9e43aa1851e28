package proxier

import (
	"net/netip"
	"slices"
)

// The packet-flow tracer answers, from the plan alone, what happens to the
// first packet of a new connection: which service port it meets and how,
// the policy in force, the endpoints it may be DNATed to, whether it is
// masqueraded, and the verdict, each with its reason. Tests hold every
// backend's rules to it, and explain prints it.

// SourceKind is what sent a packet, as this node sees it.
type SourceKind string

// Source kinds.
const (
	// FromLocalPod: a pod on this node; the packet comes in on its interface.
	FromLocalPod SourceKind = "local-pod"
	// FromRemotePod: a pod on another node, routed to this one.
	FromRemotePod SourceKind = "remote-pod"
	// FromNode: the node itself (a host-network process), from one of its
	// own addresses.
	FromNode SourceKind = "node"
	// FromOutside: a client outside the cluster.
	FromOutside SourceKind = "outside"
)

// Packet is the first packet of a connection.
type Packet struct {
	Source   netip.Addr     `json:"source"`
	Kind     SourceKind     `json:"kind"`
	Dest     netip.AddrPort `json:"destination"`
	Protocol Protocol       `json:"protocol"`
}

// Via is how a packet's destination matched a service port.
type Via string

// Ways to reach a service port.
const (
	ViaClusterIP      Via = "ClusterIP"
	ViaNodePort       Via = "NodePort"
	ViaExternalIP     Via = "ExternalIP"
	ViaLoadBalancerIP Via = "LoadBalancerIP"
)

// Outcome is the tracer's verdict.
type Outcome string

// Outcomes.
const (
	OutcomeDNAT   Outcome = "DNAT"
	OutcomeReject Outcome = "REJECT"
	OutcomeDrop   Outcome = "DROP"
	// OutcomeNotOurs: svcproxy leaves the packet alone.
	OutcomeNotOurs Outcome = "NOT-OURS"
)

// Reason says why the tracer decided what it did.
type Reason string

// Reasons for a verdict.
const (
	ReasonClusterEndpoints  Reason = "to a cluster endpoint"
	ReasonLocalEndpoints    Reason = "policy Local: to an endpoint on this node"
	ReasonShortCircuitPod   Reason = "short-circuit: a pod of this node goes to a cluster endpoint"
	ReasonShortCircuitNode  Reason = "short-circuit: the node goes to a cluster endpoint"
	ReasonNoEndpoints       Reason = "the service port has no endpoints"
	ReasonNoLocalEndpoints  Reason = "policy Local and no endpoint on this node"
	ReasonSourceRange       Reason = "source outside the loadBalancerSourceRanges"
	ReasonUnknownPort       Reason = "no port of this ClusterIP serves this port and protocol"
	ReasonUnallocated       Reason = "an address of the service CIDRs that no Service has"
	ReasonNoServicePort     Reason = "no service port has this destination"
	ReasonNodeNotChecked    Reason = "the node's own traffic to an external destination is not checked in this mode"
	ReasonOtherFamily       Reason = "not this proxier's address family"
	ReasonMasqueradeAll     Reason = "masquerade-all"
	ReasonNotFromLocalPod   Reason = "ClusterIP traffic outside the local-traffic match (--detect-local-mode)"
	ReasonFromLocalPod      Reason = "ClusterIP traffic that the local-traffic match (--detect-local-mode) counts as a pod's keeps its source"
	ReasonNoLocalDetection  Reason = "local traffic cannot be told apart: ClusterIP traffic keeps its source"
	ReasonExternalCluster   Reason = "externalTrafficPolicy Cluster: the endpoint may be on another node"
	ReasonExternalLocal     Reason = "externalTrafficPolicy Local keeps the client's source"
	ReasonPodKeepsSource    Reason = "a short-circuited pod keeps its source"
	ReasonNodeIsMasqueraded Reason = "the node's own short-circuited traffic is masqueraded"
)

// MatchedPort is the service port a packet met.
type MatchedPort struct {
	Name ServicePortName `json:"name"`
	Via  Via             `json:"via"`
	// Address is the destination that matched (for a NodePort, the node
	// address and the NodePort).
	Address netip.AddrPort `json:"address"`
}

// TracePolicy is the traffic policy in force for the packet.
type TracePolicy struct {
	// Traffic is "internal" (ClusterIP) or "external".
	Traffic string `json:"traffic"`
	Policy  Policy `json:"policy"`
	// ShortCircuit: the Local policy was bypassed (see ShortCircuit).
	ShortCircuit bool `json:"shortCircuit,omitempty"`
}

// Candidate is one endpoint the packet may be DNATed to.
type Candidate struct {
	Endpoint    netip.AddrPort `json:"endpoint"`
	Node        string         `json:"node,omitempty"`
	Local       bool           `json:"local,omitempty"`
	Probability float64        `json:"probability"`
	// Masquerade: the packet is masqueraded when it goes to this endpoint;
	// Hairpin: because the endpoint is the packet's source.
	Masquerade bool `json:"masquerade"`
	Hairpin    bool `json:"hairpin,omitempty"`
}

// Trace is what happens to a packet.
type Trace struct {
	Packet    Packet       `json:"packet"`
	Port      *MatchedPort `json:"port,omitempty"`
	Policy    *TracePolicy `json:"policy,omitempty"`
	Endpoints []Candidate  `json:"endpoints,omitempty"`
	// Affinity applies when the port has ClientIP session affinity: a
	// client with an entry goes to its endpoint instead.
	Affinity *Affinity `json:"affinity,omitempty"`
	// Masquerade is decided before an endpoint is picked (a Candidate
	// may add hairpin masquerading).
	Masquerade       bool    `json:"masquerade"`
	MasqueradeReason Reason  `json:"masqueradeReason,omitempty"`
	Verdict          Outcome `json:"verdict"`
	Reason           Reason  `json:"reason"`
}

// Trace follows pkt through the plan.
func (p *Plan) Trace(pkt Packet) Trace {
	t := Trace{Packet: pkt}
	dst := pkt.Dest.Addr()
	if !p.Config.Family.Matches(dst) {
		t.Verdict, t.Reason = OutcomeNotOurs, ReasonOtherFamily
		return t
	}
	sp, via := p.match(pkt)
	if sp == nil {
		p.unmatched(&t)
		return t
	}
	t.Port = &MatchedPort{Name: sp.Svc.Name, Via: via, Address: pkt.Dest}
	switch {
	case via == ViaClusterIP:
		p.internal(&t, sp)
	case via == ViaNodePort && !p.AnswersNodePort(dst):
		// Only the no-endpoint check of the NodePort applies here.
		t.Policy = &TracePolicy{Traffic: "external", Policy: sp.ExternalPolicy}
		t.Verdict, t.Reason = outcomeOf(sp.External), noEndpointsReason(sp.External)
	default:
		p.external(&t, sp, via)
	}
	return t
}

// match finds the service port a packet meets: a service IP at its port
// first, then a NodePort on a NodePort address (or, in a mode that checks
// NodePorts on every local address, one without usable endpoints there).
func (p *Plan) match(pkt Packet) (*ServicePlan, Via) {
	dst, port := pkt.Dest.Addr(), pkt.Dest.Port()
	for i := range p.Services {
		svc := p.Services[i].Svc
		if svc.Protocol != pkt.Protocol || uint16(svc.Port) != port {
			continue
		}
		switch {
		case svc.ClusterIP == dst:
			return &p.Services[i], ViaClusterIP
		case slices.Contains(svc.ExternalIPs, dst):
			return &p.Services[i], ViaExternalIP
		case slices.Contains(svc.LoadBalancerIPs, dst):
			return &p.Services[i], ViaLoadBalancerIP
		}
	}
	nodePort := p.AnswersNodePort(dst)
	everyLocal := !p.Config.Mode.NodePortChecksOnNodePortAddresses && p.isLocal(dst)
	for i := range p.Services {
		sp := &p.Services[i]
		if sp.Svc.Protocol != pkt.Protocol || sp.Svc.NodePort == 0 || uint16(sp.Svc.NodePort) != port {
			continue
		}
		if nodePort || (everyLocal && sp.External != Forward) {
			return sp, ViaNodePort
		}
	}
	return nil, ""
}

// AnswersNodePort reports whether NodePorts answer on dst, the node's
// addresses being its node IPs, LocalAddrs and the loopback range.
func (p *Plan) AnswersNodePort(dst netip.Addr) bool {
	return p.NodePorts.Answers(dst, slices.Concat(p.Config.NodeIPs, p.Config.LocalAddrs))
}

// isLocal reports whether a is one of the node's addresses (its node IPs,
// other local addresses, or the loopback range).
func (p *Plan) isLocal(a netip.Addr) bool {
	return p.NodePorts.Loopback.Contains(a) || slices.Contains(p.Config.NodeIPs, a) || slices.Contains(p.Config.LocalAddrs, a)
}

func (p *Plan) unmatched(t *Trace) {
	dst := t.Packet.Dest.Addr()
	t.Verdict, t.Reason = OutcomeNotOurs, ReasonNoServicePort
	if !p.Config.Mode.GuardServiceIPs {
		return
	}
	if slices.ContainsFunc(p.Services, func(sp ServicePlan) bool { return sp.Svc.ClusterIP == dst }) {
		t.Verdict, t.Reason = OutcomeReject, ReasonUnknownPort
	} else if slices.ContainsFunc(p.ServiceCIDRs, func(c netip.Prefix) bool { return c.Contains(dst) }) {
		t.Verdict, t.Reason = OutcomeDrop, ReasonUnallocated
	}
}

// internal is ClusterIP traffic.
func (p *Plan) internal(t *Trace, sp *ServicePlan) {
	t.Policy = &TracePolicy{Traffic: "internal", Policy: sp.InternalPolicy}
	if sp.Internal != Forward {
		t.Verdict, t.Reason = outcomeOf(sp.Internal), noEndpointsReason(sp.Internal)
		return
	}
	switch sp.MasqueradeInternal {
	case MasqueradeAll:
		t.Masquerade, t.MasqueradeReason = true, ReasonMasqueradeAll
	case MasqueradeNonLocal:
		if sp.MasqueradeInternalMatch.Matches(t.Packet.Source, t.Packet.Kind == FromLocalPod) {
			t.Masquerade, t.MasqueradeReason = true, ReasonNotFromLocalPod
		} else {
			t.MasqueradeReason = ReasonFromLocalPod
		}
	default:
		t.MasqueradeReason = ReasonNoLocalDetection
	}
	reason := ReasonClusterEndpoints
	if sp.InternalPolicy == PolicyLocal {
		reason = ReasonLocalEndpoints
	}
	t.forward(sp, sp.InternalEndpoints, reason)
}

// external is traffic to a NodePort, an external IP or a load-balancer IP.
func (p *Plan) external(t *Trace, sp *ServicePlan, via Via) {
	pkt := t.Packet
	t.Policy = &TracePolicy{Traffic: "external", Policy: sp.ExternalPolicy}
	if sp.External == Reject {
		t.Verdict, t.Reason = OutcomeReject, ReasonNoEndpoints
		if pkt.Kind == FromNode && via != ViaNodePort && !p.Config.Mode.CheckNodeToExternal && !p.isLocal(pkt.Dest.Addr()) {
			t.Verdict, t.Reason = OutcomeNotOurs, ReasonNodeNotChecked
		}
		return
	}
	if via == ViaLoadBalancerIP && sp.Firewall && !firewallAllows(sp, pkt.Source) {
		t.Verdict, t.Reason = OutcomeDrop, ReasonSourceRange
		return
	}
	sc := sp.ShortCircuit
	switch {
	case sc.Pods.Implemented() && sc.Pods.Matches(pkt.Source, pkt.Kind == FromLocalPod):
		t.Policy.ShortCircuit = true
		t.MasqueradeReason = ReasonPodKeepsSource
		t.forward(sp, sp.ClusterEndpoints, ReasonShortCircuitPod)
	case sc.Node && pkt.Kind == FromNode:
		t.Policy.ShortCircuit = true
		t.Masquerade, t.MasqueradeReason = true, ReasonNodeIsMasqueraded
		t.forward(sp, sp.ClusterEndpoints, ReasonShortCircuitNode)
	case sp.External != Forward:
		t.Verdict, t.Reason = outcomeOf(sp.External), noEndpointsReason(sp.External)
	case sp.MasqueradeExternal:
		t.Masquerade, t.MasqueradeReason = true, ReasonExternalCluster
		t.forward(sp, sp.ExternalEndpoints, ReasonClusterEndpoints)
	default:
		t.MasqueradeReason = ReasonExternalLocal
		t.forward(sp, sp.ExternalEndpoints, ReasonLocalEndpoints)
	}
}

// firewallAllows reports whether the load-balancer source ranges let src
// through: a range holds it, or the node is let through and src is one of
// the load-balancer IPs (the node's own traffic to them comes from there).
func firewallAllows(sp *ServicePlan, src netip.Addr) bool {
	if slices.ContainsFunc(sp.FirewallRanges, func(r netip.Prefix) bool { return r.Contains(src) }) {
		return true
	}
	return sp.FirewallAllowNode && slices.Contains(sp.Svc.LoadBalancerIPs, src)
}

// forward DNATs the packet to one of eps, each as likely.
func (t *Trace) forward(sp *ServicePlan, eps []Endpoint, reason Reason) {
	t.Verdict, t.Reason = OutcomeDNAT, reason
	for _, e := range eps {
		hairpin := e.IP == t.Packet.Source && sp.IsHairpin(e)
		t.Endpoints = append(t.Endpoints, Candidate{
			Endpoint:    netip.AddrPortFrom(e.IP, uint16(e.Port)),
			Node:        e.NodeName,
			Local:       e.IsLocal,
			Probability: 1 / float64(len(eps)),
			Masquerade:  t.Masquerade || hairpin,
			Hairpin:     hairpin,
		})
	}
	if sp.Affinity.Enabled() {
		a := sp.Affinity
		t.Affinity = &a
	}
}

func outcomeOf(v Verdict) Outcome {
	switch v {
	case Forward:
		return OutcomeDNAT
	case Reject:
		return OutcomeReject
	}
	return OutcomeDrop
}

func noEndpointsReason(v Verdict) Reason {
	switch v {
	case Reject:
		return ReasonNoEndpoints
	case Drop:
		return ReasonNoLocalEndpoints
	}
	return ""
}
