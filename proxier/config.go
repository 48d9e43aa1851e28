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
	Mode      LocalMode      `json:"mode"`
	CIDRs     []netip.Prefix `json:"cidrs,omitempty"`
	Interface string         `json:"interface,omitempty"`
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

// LocalTraffic is a typed match on where a packet comes from: from this
// node's pods, or (Negate) from anywhere else. Each backend renders it in
// its own syntax; neither builds one polarity by editing the text of the
// other.
type LocalTraffic struct {
	Mode LocalMode `json:"mode"`
	// CIDRs (the CIDR modes): every pod CIDR of the family; a packet whose
	// source is in any of them is local.
	CIDRs []netip.Prefix `json:"cidrs,omitempty"`
	// Interface (the interface modes): the bridge's name, or the prefix of
	// the pods' interface names.
	Interface string `json:"interface,omitempty"`
	// Negate: the match selects packets that are not from local pods.
	Negate bool `json:"negate,omitempty"`
}

// LocalPodTraffic is the match for traffic from this node's pods under d,
// for family f: the CIDR modes keep every CIDR of the family.
func LocalPodTraffic(d LocalDetector, f IPFamily) LocalTraffic {
	m := LocalTraffic{Mode: d.Mode}
	switch d.Mode {
	case LocalClusterCIDR, LocalNodeCIDR:
		m.CIDRs = familyPrefixes(d.CIDRs, f)
		if len(m.CIDRs) == 0 {
			return LocalTraffic{}
		}
	case LocalBridgeInterface, LocalInterfacePrefix:
		if d.Interface == "" {
			return LocalTraffic{}
		}
		m.Interface = d.Interface
	default:
		return LocalTraffic{}
	}
	return m
}

// Not is the match with the other polarity.
func (l LocalTraffic) Not() LocalTraffic {
	l.Negate = !l.Negate
	return l
}

// Implemented reports whether the match can tell anything apart; one
// that cannot (LocalNone) is never rendered.
func (l LocalTraffic) Implemented() bool {
	return l.Mode != LocalNone
}

// Matches reports whether a packet from src matches. viaPodInterface says
// the packet came in on the interface of one of this node's pods (the
// interface modes look at nothing else); the node's own packets have no
// input interface.
func (l LocalTraffic) Matches(src netip.Addr, viaPodInterface bool) bool {
	local := false
	switch l.Mode {
	case LocalClusterCIDR, LocalNodeCIDR:
		local = slices.ContainsFunc(l.CIDRs, func(p netip.Prefix) bool { return p.Contains(src) })
	case LocalBridgeInterface, LocalInterfacePrefix:
		local = viaPodInterface
	default:
		return false
	}
	return local != l.Negate
}

// familyPrefixes is ps's prefixes of family f; ps itself when all are.
func familyPrefixes(ps []netip.Prefix, f IPFamily) []netip.Prefix {
	if !slices.ContainsFunc(ps, func(p netip.Prefix) bool { return !f.Matches(p.Addr()) }) {
		return ps
	}
	var out []netip.Prefix
	for _, p := range ps {
		if f.Matches(p.Addr()) {
			out = append(out, p)
		}
	}
	return out
}

// ModeTraits are the behaviours in which kube-proxy's iptables and
// nftables modes legitimately differ, as data: a backend states its own
// (IPTablesMode, NFTablesMode) and the plan and the tracer read the fields,
// never a mode's name. The zero value is iptables mode, the only one the
// iptables backend renders: it reads NoLocalhostNodePorts through
// Plan.NodePorts, and its rules are what the other traits, unset, say.
type ModeTraits struct {
	// GuardServiceIPs: new traffic to a ClusterIP on a port (or protocol)
	// none of its Service ports serves is rejected, and traffic to an
	// address of the service CIDRs that is no ClusterIP is dropped.
	// iptables mode lets both pass untouched.
	GuardServiceIPs bool `json:"guardServiceIPs,omitempty"`
	// CheckNodeToExternal: the node's own traffic to an external IP or
	// load-balancer IP of a Service without endpoints is rejected as
	// others' is. iptables mode checks external destinations only on input
	// and forward, so such traffic leaves the node unless the address is
	// one of its own.
	CheckNodeToExternal bool `json:"checkNodeToExternal,omitempty"`
	// NodePortChecksOnNodePortAddresses: a NodePort without usable
	// endpoints is rejected or dropped only on the NodePort addresses.
	// iptables mode does so on every local address.
	NodePortChecksOnNodePortAddresses bool `json:"nodePortChecksOnNodePortAddresses,omitempty"`
	// NoLocalhostNodePorts: NodePorts never answer on loopback, whatever
	// Config.LocalhostNodePorts says.
	NoLocalhostNodePorts bool `json:"noLocalhostNodePorts,omitempty"`
}

// The traits of kube-proxy's two modes (and so of svcproxy's backends).
var (
	IPTablesMode = ModeTraits{}
	NFTablesMode = ModeTraits{GuardServiceIPs: true, CheckNodeToExternal: true, NodePortChecksOnNodePortAddresses: true, NoLocalhostNodePorts: true}
)

// Config is what a proxier knows that does not come from the API: flags.
type Config struct {
	Family IPFamily `json:"family"`
	// MasqueradeAll masquerades all traffic to ClusterIPs.
	MasqueradeAll bool `json:"masqueradeAll"`
	// MasqueradeBit is the fwmark bit used to flag packets for SNAT.
	MasqueradeBit int           `json:"masqueradeBit"`
	LocalDetector LocalDetector `json:"localDetector"`
	// NodeIPs are this node's addresses of this family: NodePorts listen on
	// those inside NodePortAddresses, and a load-balancer source range that
	// holds one lets the node itself through.
	NodeIPs []netip.Addr `json:"nodeIPs"`
	// LocalAddrs are the node's other addresses of this family, when known
	// (its interfaces at start): where NodePorts matching every local
	// address answer too, and what the tracer counts as the node.
	LocalAddrs []netip.Addr `json:"localAddrs,omitempty"`
	// NodePortAddresses limits NodePorts to node IPs inside these CIDRs;
	// empty means every local address.
	NodePortAddresses []netip.Prefix `json:"nodePortAddresses,omitempty"`
	// LocalhostNodePorts makes NodePorts answer on 127.0.0.0/8 (IPv4 only;
	// needs route_localnet).
	LocalhostNodePorts bool `json:"localhostNodePorts"`
	// ServiceClusterIPRange (--service-cluster-ip-range) stands for the
	// service CIDRs when the State carries none.
	ServiceClusterIPRange []netip.Prefix `json:"serviceClusterIPRange,omitempty"`
	// Mode is the backend's kube-proxy mode, as traits.
	Mode ModeTraits `json:"mode"`
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

// NodePorts says where the node's NodePorts answer.
type NodePorts struct {
	// AllLocal: on every local address of the family but Loopback (unless
	// Localhost); else on IPs only.
	AllLocal bool `json:"allLocal"`
	// IPs: the addresses when not AllLocal, sorted. Loopback ones are
	// left out unless localhost NodePorts are on.
	IPs []netip.Addr `json:"ips,omitempty"`
	// Localhost: NodePorts answer on 127.0.0.0/8 (IPv4; needs
	// route_localnet and a guard against martians).
	Localhost bool `json:"localhost"`
	// Loopback is the family's loopback range.
	Loopback netip.Prefix `json:"loopback"`
}

// NodePortsOf is where NodePorts answer under cfg.
func NodePortsOf(cfg Config) NodePorts {
	np := NodePorts{AllLocal: cfg.NodePortsMatchAll(), Loopback: netip.MustParsePrefix("127.0.0.0/8")}
	if cfg.Family == IPv6 {
		np.Loopback = netip.MustParsePrefix("::1/128")
	}
	lh := cfg.LocalhostNodePorts && cfg.Family == IPv4 && !cfg.Mode.NoLocalhostNodePorts
	if np.AllLocal {
		np.Localhost = lh
		return np
	}
	for _, ip := range cfg.NodePortIPs() {
		if !ip.IsLoopback() || lh {
			np.IPs = append(np.IPs, ip)
		}
	}
	for _, p := range cfg.NodePortAddresses {
		if p.Addr().Is4() && p.Contains(netip.MustParseAddr("127.0.0.1")) {
			np.Localhost = lh
		}
	}
	return np
}

// Addrs are the node's addresses NodePorts answer on, given its node IPs:
// the IPs, or under AllLocal every node IP of the family (loopback ranges
// are not listed).
func (np NodePorts) Addrs(f IPFamily, nodeIPs []netip.Addr) []netip.Addr {
	if !np.AllLocal {
		return np.IPs
	}
	var out []netip.Addr
	for _, ip := range nodeIPs {
		if f.Matches(ip) && !np.Loopback.Contains(ip) {
			out = append(out, ip)
		}
	}
	return out
}

// Answers reports whether a NodePort answers on dst; the node's local
// addresses are taken to be nodeIPs and the loopback range.
func (np NodePorts) Answers(dst netip.Addr, nodeIPs []netip.Addr) bool {
	if !np.AllLocal {
		return slices.Contains(np.IPs, dst)
	}
	if np.Loopback.Contains(dst) {
		return np.Localhost
	}
	return slices.Contains(nodeIPs, dst)
}
