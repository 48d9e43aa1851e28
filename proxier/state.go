// Package proxier decides what the kernel holds for a node's Services and
// puts it there. The syncer hands it an immutable State on every sync; Plan
// turns that into per-service-port decisions shared by every backend, and a
// backend (proxier/iptables, proxier/nftables) renders the plan into rules
// and applies them.
package proxier

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Protocol is a Service port's L4 protocol, as spelled in the Kubernetes API.
type Protocol string

// The protocols a Service port may carry.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Lower is the protocol as iptables and nftables spell it.
func (p Protocol) Lower() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	}
	return string(p)
}

// IPFamily is the address family a proxier instance handles.
type IPFamily int

// The address families.
const (
	IPv4 IPFamily = 4
	IPv6 IPFamily = 6
)

func (f IPFamily) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// MarshalText makes an IPFamily its name in JSON, as the Kubernetes API
// spells it ("IPv4", "IPv6").
func (f IPFamily) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// Matches reports whether a belongs to family f.
func (f IPFamily) Matches(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	if f == IPv6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4() || a.Is4In6()
}

// ServicePortName identifies one port of one Service. Its String form is
// kube-proxy's "namespace/name:port" (":port" omitted for an unnamed port);
// the protocol is part of the identity but not of the string.
type ServicePortName struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Port      string   `json:"port,omitempty"`
	Protocol  Protocol `json:"protocol"`
}

func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.Namespace + "/" + n.Name
	}
	return n.Namespace + "/" + n.Name + ":" + n.Port
}

// Less orders service ports by namespace, name, port name and protocol.
func (n ServicePortName) Less(o ServicePortName) bool {
	if n.Namespace != o.Namespace {
		return n.Namespace < o.Namespace
	}
	if n.Name != o.Name {
		return n.Name < o.Name
	}
	if n.Port != o.Port {
		return n.Port < o.Port
	}
	return n.Protocol < o.Protocol
}

// Endpoint is one backend address of a service port, after the syncer merged
// every EndpointSlice of the Service and deduplicated by IP:port.
type Endpoint struct {
	IP   netip.Addr `json:"ip"`
	Port int32      `json:"port"`
	// NodeName is the node hosting the endpoint; IsLocal says it is this node.
	NodeName string `json:"nodeName,omitempty"`
	IsLocal  bool   `json:"isLocal"`
	Zone     string `json:"zone,omitempty"`
	// Conditions, with the EndpointSlice API defaults already applied
	// (ready and serving default to true, terminating to false).
	Ready       bool `json:"ready"`
	Serving     bool `json:"serving"`
	Terminating bool `json:"terminating"`
	// Topology hints.
	ZoneHints []string `json:"zoneHints,omitempty"`
	NodeHints []string `json:"nodeHints,omitempty"`
}

// String is the endpoint as IP:port ("[v6]:port" for IPv6).
func (e Endpoint) String() string {
	return netip.AddrPortFrom(e.IP, uint16(e.Port)).String()
}

// Service is one port of one Service, in one address family, with its
// endpoints. The syncer never mutates a Service it has handed over: when
// anything about a service port changes it builds a new value, so a backend
// may keep pointers from the previous State and compare them.
type Service struct {
	Name      ServicePortName `json:"name"`
	ClusterIP netip.Addr      `json:"clusterIP"`
	Port      int32           `json:"port"`
	Protocol  Protocol        `json:"protocol"`
	// NodePort is 0 when the port has none.
	NodePort int32 `json:"nodePort,omitempty"`
	// ExternalIPs and LoadBalancerIPs (VIP mode only) of this family.
	ExternalIPs              []netip.Addr   `json:"externalIPs,omitempty"`
	LoadBalancerIPs          []netip.Addr   `json:"loadBalancerIPs,omitempty"`
	LoadBalancerSourceRanges []netip.Prefix `json:"loadBalancerSourceRanges,omitempty"`
	// AffinityTimeoutSeconds > 0 means sessionAffinity ClientIP.
	AffinityTimeoutSeconds int32 `json:"affinityTimeoutSeconds,omitempty"`
	// ExternalPolicyLocal: externalTrafficPolicy Local on an externally
	// accessible service. InternalPolicyLocal: internalTrafficPolicy Local.
	ExternalPolicyLocal bool   `json:"externalPolicyLocal"`
	InternalPolicyLocal bool   `json:"internalPolicyLocal"`
	HealthCheckNodePort int32  `json:"healthCheckNodePort,omitempty"`
	TrafficDistribution string `json:"trafficDistribution,omitempty"`

	// Endpoints, sorted by IP:port, deduplicated.
	Endpoints []Endpoint `json:"endpoints"`
}

// State is everything one proxier (one address family) needs for one sync.
// It is immutable once built.
type State struct {
	Family   IPFamily `json:"family"`
	NodeName string   `json:"nodeName"`
	NodeZone string   `json:"nodeZone,omitempty"`
	// Services sorted by Name.
	Services []*Service `json:"services"`
	// ServiceCIDRs are the spec.cidrs of this family of every ServiceCIDR
	// object (networking.k8s.io/v1), sorted; nil when they are unknown (the
	// API does not serve them, RBAC forbids reading them, or none has this
	// family), in which case a backend uses --service-cluster-ip-range.
	ServiceCIDRs []netip.Prefix `json:"serviceCIDRs"`
}

// Key identifies a service port's kernel objects; it is stable across syncs.
func (s *Service) Key() string {
	return s.Name.String() + "/" + s.Protocol.Lower()
}

// DestString is "ip:port" of the ClusterIP, for logs.
func (s *Service) DestString() string {
	return netip.AddrPortFrom(s.ClusterIP, uint16(s.Port)).String()
}

// Validate reports the first thing about s that a backend cannot program.
func (s *Service) Validate(f IPFamily) error {
	if !f.Matches(s.ClusterIP) {
		return fmt.Errorf("service %s: cluster IP %v is not %v", s.Name, s.ClusterIP, f)
	}
	if s.Port <= 0 || s.Port > 65535 {
		return fmt.Errorf("service %s: invalid port %s", s.Name, strconv.Itoa(int(s.Port)))
	}
	switch s.Protocol {
	case TCP, UDP, SCTP:
	default:
		return fmt.Errorf("service %s: unsupported protocol %q", s.Name, s.Protocol)
	}
	return nil
}
