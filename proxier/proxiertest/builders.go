// Package proxiertest builds the States and Configs the proxier tests use,
// for the core and every backend alike, and holds the packet-flow case
// table every backend is checked against.
//
// Addresses follow one convention: pods in 10.244.0.0/16 (this node's in
// 10.244.1.0/24, another node's in 10.244.2.0/24), ClusterIPs in
// 10.96.0.0/16, node IPs 192.168.0.2 (this node) and 192.168.0.3, external
// IPs in 192.168.99.0/24, load-balancer IPs 1.2.3.4 and 5.6.7.8, clients
// outside the cluster in 203.0.113.0/24 (203.0.113.0/25 is the source range
// the tests allow). IPv6 uses fd00:10:244::/48, fd00:10:96::/112 and
// 2001:db8::2.
package proxiertest

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Conventional names and addresses.
const (
	NodeName     = "node-1"
	OtherNode    = "node-2"
	PodCIDR      = "10.244.0.0/16"
	PodCIDRv6    = "fd00:10:244::/48"
	ServiceCIDR  = "10.96.0.0/16"
	ServiceCIDR6 = "fd00:10:96::/112"
	NodeIP       = "192.168.0.2"
	NodeIPv6     = "2001:db8::2"
)

// Addr parses an address; it panics on a bad one (tests only).
func Addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// Addrs parses addresses.
func Addrs(ss ...string) []netip.Addr { return parseAll(ss, Addr) }

func parseAll[T any](ss []string, parse func(string) T) []T {
	out := make([]T, len(ss))
	for i, s := range ss {
		out[i] = parse(s)
	}
	return out
}

// Prefix parses a CIDR.
func Prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// Prefixes parses CIDRs.
func Prefixes(ss ...string) []netip.Prefix { return parseAll(ss, Prefix) }

// AddrPort parses "ip:port" ("[v6]:port").
func AddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// EndpointOption changes an endpoint being built.
type EndpointOption func(*proxier.Endpoint)

// Endpoint is a ready, serving endpoint on another node unless opts say
// otherwise.
func Endpoint(ip string, port int32, opts ...EndpointOption) proxier.Endpoint {
	e := proxier.Endpoint{IP: Addr(ip), Port: port, Ready: true, Serving: true}
	for _, o := range opts {
		o(&e)
	}
	return e
}

// Endpoint options.
var (
	// Local puts the endpoint on this node.
	Local EndpointOption = func(e *proxier.Endpoint) { e.IsLocal, e.NodeName = true, NodeName }
	// NotReady: neither ready nor serving.
	NotReady EndpointOption = func(e *proxier.Endpoint) { e.Ready, e.Serving = false, false }
	// Terminating: terminating and still serving.
	Terminating EndpointOption = func(e *proxier.Endpoint) { e.Ready, e.Serving, e.Terminating = false, true, true }
	// Gone: terminating and no longer serving.
	Gone EndpointOption = func(e *proxier.Endpoint) { e.Ready, e.Serving, e.Terminating = false, false, true }
)

// OnNode puts the endpoint on the named node (this one when it is
// NodeName).
func OnNode(name string) EndpointOption {
	return func(e *proxier.Endpoint) { e.NodeName, e.IsLocal = name, name == NodeName }
}

// Zone sets the endpoint's zone.
func Zone(z string) EndpointOption { return func(e *proxier.Endpoint) { e.Zone = z } }

// ZoneHints sets the endpoint's zone hints.
func ZoneHints(zs ...string) EndpointOption { return func(e *proxier.Endpoint) { e.ZoneHints = zs } }

// NodeHints sets the endpoint's node hints.
func NodeHints(ns ...string) EndpointOption { return func(e *proxier.Endpoint) { e.NodeHints = ns } }

// ServiceOption changes a service port being built.
type ServiceOption func(*proxier.Service)

// Service is a ClusterIP service port named "namespace/name" or
// "namespace/name:port", shaped by opts.
func Service(name string, proto proxier.Protocol, clusterIP string, port int32, opts ...ServiceOption) *proxier.Service {
	n := proxier.ServicePortName{Protocol: proto}
	n.Namespace, n.Name, _ = strings.Cut(name, "/")
	n.Name, n.Port, _ = strings.Cut(n.Name, ":")
	s := &proxier.Service{Name: n, ClusterIP: Addr(clusterIP), Port: port, Protocol: proto}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Endpoints sets the service port's endpoints (in the order given).
func Endpoints(eps ...proxier.Endpoint) ServiceOption {
	return func(s *proxier.Service) { s.Endpoints = eps }
}

// NodePort gives the service port a NodePort.
func NodePort(p int32) ServiceOption { return func(s *proxier.Service) { s.NodePort = p } }

// ExternalIPs gives the service port external IPs.
func ExternalIPs(ips ...string) ServiceOption {
	return func(s *proxier.Service) { s.ExternalIPs = Addrs(ips...) }
}

// LoadBalancer gives the service port load-balancer IPs.
func LoadBalancer(ips ...string) ServiceOption {
	return func(s *proxier.Service) { s.LoadBalancerIPs = Addrs(ips...) }
}

// SourceRanges sets loadBalancerSourceRanges.
func SourceRanges(cidrs ...string) ServiceOption {
	return func(s *proxier.Service) { s.LoadBalancerSourceRanges = Prefixes(cidrs...) }
}

// Affinity sets ClientIP session affinity with the given timeout.
func Affinity(seconds int32) ServiceOption {
	return func(s *proxier.Service) { s.AffinityTimeoutSeconds = seconds }
}

// HealthCheck sets the health-check node port.
func HealthCheck(p int32) ServiceOption {
	return func(s *proxier.Service) { s.HealthCheckNodePort = p }
}

// Service options without arguments.
var (
	// ExternalLocal: externalTrafficPolicy Local.
	ExternalLocal ServiceOption = func(s *proxier.Service) { s.ExternalPolicyLocal = true }
	// InternalLocal: internalTrafficPolicy Local.
	InternalLocal ServiceOption = func(s *proxier.Service) { s.InternalPolicyLocal = true }
)

// State is this node's State for family f with svcs, in the order given.
func State(f proxier.IPFamily, svcs ...*proxier.Service) *proxier.State {
	return &proxier.State{Family: f, NodeName: NodeName, Services: svcs}
}

// ConfigOption changes a config being built.
type ConfigOption func(*proxier.Config)

// Config is an IPv4 config with masquerade bit 14 and ClusterCIDR
// detection of PodCIDR, shaped by opts.
func Config(opts ...ConfigOption) proxier.Config {
	c := proxier.Config{
		Family:        proxier.IPv4,
		MasqueradeBit: 14,
		LocalDetector: proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: Prefixes(PodCIDR)},
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// Config options without arguments.
var (
	// IPv6 makes the config IPv6, detecting PodCIDRv6.
	IPv6 ConfigOption = func(c *proxier.Config) {
		c.Family = proxier.IPv6
		c.LocalDetector = proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: Prefixes(PodCIDRv6)}
	}
	MasqueradeAll      ConfigOption = func(c *proxier.Config) { c.MasqueradeAll = true }
	LocalhostNodePorts ConfigOption = func(c *proxier.Config) { c.LocalhostNodePorts = true }
	// NoDetector: local pod traffic cannot be told apart.
	NoDetector ConfigOption = func(c *proxier.Config) { c.LocalDetector = proxier.LocalDetector{} }
)

// Detector sets the local-traffic detector.
func Detector(d proxier.LocalDetector) ConfigOption {
	return func(c *proxier.Config) { c.LocalDetector = d }
}

// NodeIPs sets the node's IPs.
func NodeIPs(ips ...string) ConfigOption {
	return func(c *proxier.Config) { c.NodeIPs = Addrs(ips...) }
}

// NodePortAddresses sets --nodeport-addresses.
func NodePortAddresses(cidrs ...string) ConfigOption {
	return func(c *proxier.Config) { c.NodePortAddresses = Prefixes(cidrs...) }
}

// Mode sets the backend's mode traits.
func Mode(m proxier.ModeTraits) ConfigOption { return func(c *proxier.Config) { c.Mode = m } }

// ServiceRange sets --service-cluster-ip-range.
func ServiceRange(cidrs ...string) ConfigOption {
	return func(c *proxier.Config) { c.ServiceClusterIPRange = Prefixes(cidrs...) }
}

// WithServiceCIDRs is st carrying the ServiceCIDRs cidrs (the same
// Service pointers).
func WithServiceCIDRs(st *proxier.State, cidrs ...string) *proxier.State {
	c := *st
	c.ServiceCIDRs = Prefixes(cidrs...)
	return &c
}

// ScaleState is this node's IPv4 State with n ClusterIP service ports
// "ns/svc<i>" of ten endpoints each (the first on this node); every tenth
// has a NodePort.
func ScaleState(n int) *proxier.State {
	svcs := make([]*proxier.Service, 0, n)
	for i := 0; i < n; i++ {
		eps := make([]proxier.Endpoint, 0, 10)
		for j := 0; j < 10; j++ {
			var opts []EndpointOption
			if j == 0 {
				opts = append(opts, Local)
			}
			eps = append(eps, Endpoint(fmt.Sprintf("10.%d.%d.%d", 100+j, i>>8, i&255), 8080, opts...))
		}
		s := Service(fmt.Sprintf("ns/svc%d", i), proxier.TCP, fmt.Sprintf("10.96.%d.%d", i>>8, i&255), 80, Endpoints(eps...))
		if i%10 == 0 {
			s.NodePort = int32(30000 + i/10)
		}
		svcs = append(svcs, s)
	}
	return State(proxier.IPv4, svcs...)
}
