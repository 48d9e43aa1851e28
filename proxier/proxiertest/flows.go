package proxiertest

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Flow is one packet-flow case, in the style of kube-proxy's
// runPacketFlowTests: a node's State and Config, the first packet of a
// connection, and what must happen to it. The tracer and every backend's
// rendered rules are held to the same table.
type Flow struct {
	Name   string
	Config proxier.Config
	State  *proxier.State
	Packet proxier.Packet
	Want   Want
}

// Want is a flow's expected outcome.
type Want struct {
	Verdict proxier.Outcome
	// Reason is the tracer's reason for the verdict.
	Reason proxier.Reason
	// Port and Via: the service port met ("ns/name:port"), and how; ""
	// when none.
	Port string
	Via  proxier.Via
	// Endpoints the packet may be DNATed to ("ip:port"), each as likely.
	Endpoints []string
	// Masquerade: the packet is masqueraded whichever endpoint it goes to;
	// Hairpin: the endpoint it is masqueraded at because it is the source.
	Masquerade bool
	Hairpin    string
	// Affinity: ClientIP session affinity applies.
	Affinity bool
}

// Observed is what a backend check saw of a flow.
type Observed struct {
	Verdict   proxier.Outcome
	Endpoints []ObservedEndpoint
	Affinity  bool
}

// ObservedEndpoint is one DNAT target a backend reaches.
type ObservedEndpoint struct {
	Endpoint    netip.AddrPort
	Probability float64
	Masquerade  bool
}

func (e ObservedEndpoint) String() string {
	return fmt.Sprintf("%s p=%.4f masquerade=%v", e.Endpoint, e.Probability, e.Masquerade)
}

// Check lists how o differs from what w expects of a backend: the verdict,
// the endpoints (in any order) with equal probabilities, each one's
// masquerading, and affinity.
func (w Want) Check(o Observed) []string {
	var errs []string
	if o.Verdict != w.Verdict {
		errs = append(errs, fmt.Sprintf("verdict %s, want %s", o.Verdict, w.Verdict))
	}
	if o.Affinity != w.Affinity {
		errs = append(errs, fmt.Sprintf("affinity %v, want %v", o.Affinity, w.Affinity))
	}
	var want []string
	for _, e := range w.Endpoints {
		want = append(want, ObservedEndpoint{AddrPort(e), 1 / float64(len(w.Endpoints)), w.Masquerade || e == w.Hairpin}.String())
	}
	var got []string
	sum := 0.0
	for _, e := range o.Endpoints {
		sum += e.Probability
		e.Probability = math.Round(e.Probability*1e6) / 1e6
		got = append(got, e.String())
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		errs = append(errs, fmt.Sprintf("endpoints\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t")))
	}
	if len(o.Endpoints) > 0 && math.Abs(sum-1) > 1e-6 {
		errs = append(errs, fmt.Sprintf("endpoint probabilities add up to %v", sum))
	}
	return errs
}

// Pkt is a TCP packet of the given kind from src to dst ("ip:port").
func Pkt(kind proxier.SourceKind, src, dst string) proxier.Packet {
	return proxier.Packet{Source: Addr(src), Kind: kind, Dest: AddrPort(dst), Protocol: proxier.TCP}
}

// UDP is p over UDP.
func UDP(p proxier.Packet) proxier.Packet {
	p.Protocol = proxier.UDP
	return p
}

// Sources the flows use.
const (
	LocalPodIP       = "10.244.1.5"
	RemotePodIP      = "10.244.2.5"
	OutsideIP        = "203.0.113.2"
	OutsideBlockedIP = "203.0.113.130"
	AllowedRange     = "203.0.113.0/25"
)

// flowGroup is flows sharing one State and Config.
type flowGroup struct {
	name  string
	cfg   proxier.Config
	state *proxier.State
	flows []Flow
}

func (g flowGroup) expand() []Flow {
	out := make([]Flow, len(g.flows))
	for i, f := range g.flows {
		f.Name = g.name + "/" + f.Name
		f.Config, f.State = g.cfg, g.state
		out[i] = f
	}
	return out
}

// dnat is a DNAT outcome at port via via.
func dnat(port string, via proxier.Via, reason proxier.Reason, masq bool, eps ...string) Want {
	return Want{Verdict: proxier.OutcomeDNAT, Reason: reason, Port: port, Via: via, Endpoints: eps, Masquerade: masq}
}

// refused is a REJECT or DROP outcome at port via via.
func refused(v proxier.Outcome, reason proxier.Reason, port string, via proxier.Via) Want {
	return Want{Verdict: v, Reason: reason, Port: port, Via: via}
}

// notOurs is a packet svcproxy leaves alone.
func notOurs(reason proxier.Reason) Want {
	return Want{Verdict: proxier.OutcomeNotOurs, Reason: reason}
}

// guarded is what a mode that guards service IPs does instead of leaving
// the packet alone.
func guarded(mode proxier.ModeTraits, v proxier.Outcome, reason proxier.Reason) Want {
	if !mode.GuardServiceIPs {
		return notOurs(proxier.ReasonNoServicePort)
	}
	return Want{Verdict: v, Reason: reason}
}

// Flows is the packet-flow table for a backend of the given mode; the
// cases where kube-proxy's modes differ expect what that mode does.
func Flows(mode proxier.ModeTraits) []Flow {
	var out []Flow
	for _, g := range []flowGroup{
		mainFlows(mode),
		masqueradeAllFlows(mode),
		noDetectorFlows(mode),
		interfaceFlows(mode, "bridge", proxier.LocalDetector{Mode: proxier.LocalBridgeInterface, Interface: "cbr0"}),
		nodeCIDRFlows(mode),
		nodePortAddressFlows(mode),
		ipv6Flows(mode),
		planFlows(mode),
		twoCIDRFlows(mode),
		interfaceFlows(mode, "interface-prefix", proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: "veth"}),
	} {
		out = append(out, g.expand()...)
	}
	return out
}

// ObservedOf is what a backend check would see of the tracer's answer tr.
func ObservedOf(tr proxier.Trace) Observed {
	o := Observed{Verdict: tr.Verdict, Affinity: tr.Affinity != nil}
	for _, c := range tr.Endpoints {
		o.Endpoints = append(o.Endpoints, ObservedEndpoint{Endpoint: c.Endpoint, Probability: c.Probability, Masquerade: c.Masquerade})
	}
	return o
}

// InputInterface is the interface a packet of the given kind comes in on:
// a local pod's own (the bridge, or one named with the detector's prefix),
// eth0 for what is routed here, none for the node's own packets.
func InputInterface(d proxier.LocalDetector, kind proxier.SourceKind) string {
	switch {
	case kind == proxier.FromNode:
		return ""
	case kind != proxier.FromLocalPod:
		return "eth0"
	case d.Mode == proxier.LocalBridgeInterface:
		return d.Interface
	case d.Mode == proxier.LocalInterfacePrefix:
		return d.Interface + "1a2b"
	}
	return "veth1a2b"
}
