package syncer

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	netutils "k8s.io/utils/net"

	"github.com/svcproxy/svcproxy/proxier"
)

// defaultAffinityTimeout is the API default of
// spec.sessionAffinityConfig.clientIP.timeoutSeconds.
const defaultAffinityTimeout = 10800

// Object kinds and reasons used when bad input is skipped. They are the
// label values of svcproxy_invalid_objects_total.
const (
	kindService       = "Service"
	kindEndpointSlice = "EndpointSlice"

	reasonInvalidClusterIP       = "InvalidClusterIP"
	reasonInvalidExternalIP      = "InvalidExternalIP"
	reasonInvalidLoadBalancerIP  = "InvalidLoadBalancerIP"
	reasonInvalidSourceRange     = "InvalidSourceRange"
	reasonInvalidPort            = "InvalidPort"
	reasonDuplicatePort          = "DuplicatePort"
	reasonMissingHealthCheckPort = "MissingHealthCheckNodePort"
	reasonMissingServiceName     = "MissingServiceName"
	reasonMissingPortName        = "MissingPortName"
	reasonNoAddresses            = "NoAddresses"
	reasonInvalidAddress         = "InvalidAddress"
	reasonWrongFamily            = "WrongFamily"
	// An external IP, load-balancer ingress IP or source range of a family
	// in which the Service has no ClusterIP: no proxier programs it.
	// (kube-proxy drops these too and logs them at V(4).)
	reasonWrongFamilyExternalIP     = "WrongFamilyExternalIP"
	reasonWrongFamilyLoadBalancerIP = "WrongFamilyLoadBalancerIP"
	reasonWrongFamilySourceRange    = "WrongFamilySourceRange"
)

// reporter is told about every piece of input that is skipped because it is
// malformed. Skipping never fails a sync: every other Service keeps working.
type reporter interface {
	invalid(kind, reason string, obj metav1.Object, value string)
}

// nopReporter discards reports.
type nopReporter struct{}

func (nopReporter) invalid(string, string, metav1.Object, string) {}

// parseAddr parses an IP address the way kube-proxy does: leading zeros in
// IPv4 octets are accepted ("10.180.00.001" is 10.180.0.1). IPv4-mapped IPv6
// addresses become plain IPv4.
func parseAddr(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(strings.TrimSpace(s))
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// ParseIP is parseAddr for the flags that name addresses, so that they
// parse them as the API's addresses are.
func ParseIP(s string) (netip.Addr, bool) { return parseAddr(s) }

// parsePrefix parses a CIDR sloppily (see parseAddr) and returns its masked
// network.
func parsePrefix(s string) (netip.Prefix, bool) {
	_, ipn, err := netutils.ParseCIDRSloppy(strings.TrimSpace(s))
	if err != nil || ipn == nil {
		return netip.Prefix{}, false
	}
	return ipNetToPrefix(ipn)
}

func ipNetToPrefix(ipn *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := ipn.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if a.Is4In6() && bits == 128 {
		if ones < 96 {
			return netip.Prefix{}, false
		}
		ones -= 96
	}
	p := netip.PrefixFrom(a.Unmap(), ones)
	if !p.IsValid() {
		return netip.Prefix{}, false
	}
	return p.Masked(), true
}

// primaryClusterIP is spec.clusterIP, or the first of spec.clusterIPs when
// only that is set.
func primaryClusterIP(svc *v1.Service) string {
	if svc.Spec.ClusterIP != "" {
		return svc.Spec.ClusterIP
	}
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs[0]
	}
	return ""
}

// shouldSkipService reports whether kube-proxy never proxies svc: headless
// (ClusterIP None or unset) and ExternalName services.
func shouldSkipService(svc *v1.Service) bool {
	ip := primaryClusterIP(svc)
	return ip == "" || ip == v1.ClusterIPNone || svc.Spec.Type == v1.ServiceTypeExternalName
}

// clusterIPFor returns svc's ClusterIP of family f, from spec.clusterIPs
// (falling back to spec.clusterIP). ok is false when the Service has none in
// that family.
func clusterIPFor(svc *v1.Service, f proxier.IPFamily, r reporter) (netip.Addr, bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if s == "" || s == v1.ClusterIPNone {
			continue
		}
		a, ok := parseAddr(s)
		if !ok {
			r.invalid(kindService, reasonInvalidClusterIP, svc, s)
			continue
		}
		if f.Matches(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// otherFamily is the address family that is not f.
func otherFamily(f proxier.IPFamily) proxier.IPFamily {
	if f == proxier.IPv6 {
		return proxier.IPv4
	}
	return proxier.IPv6
}

// wrongFamily says which addresses of a Service no proxier will program:
// those of a family in which the Service has no ClusterIP. Addresses of the
// other family of a dual-stack Service are not errors: its other family's
// proxier programs them.
type wrongFamily struct {
	other  proxier.IPFamily
	report bool // the Service has no ClusterIP in other
	reason string
}

func wrongFamilyOf(svc *v1.Service, f proxier.IPFamily, reason string) wrongFamily {
	other := otherFamily(f)
	_, dual := clusterIPFor(svc, other, nopReporter{})
	return wrongFamily{other: other, report: !dual, reason: reason}
}

// check reports a, of the other family, when nothing will program it.
func (w wrongFamily) check(a netip.Addr, obj metav1.Object, value string, r reporter) {
	if w.report && w.other.Matches(a) {
		r.invalid(kindService, w.reason, obj, value)
	}
}

// addrsOfFamily parses ips, reports the unparseable ones and those of a
// family nothing programs (see wrongFamily), and returns those of family f,
// in order, without duplicates.
func addrsOfFamily(ips []string, f proxier.IPFamily, reason string, wrong wrongFamily, obj metav1.Object, r reporter) []netip.Addr {
	var out []netip.Addr
	for _, s := range ips {
		a, ok := parseAddr(s)
		if !ok {
			r.invalid(kindService, reason, obj, s)
			continue
		}
		if !f.Matches(a) {
			wrong.check(a, obj, s, r)
			continue
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// loadBalancerIPs returns the VIP-mode ingress IPs of family f. Ingress
// points in Proxy mode are reached through the load balancer, not by
// destination address, and hostname-only ones have nothing to program.
func loadBalancerIPs(svc *v1.Service, f proxier.IPFamily, r reporter) []netip.Addr {
	var ips []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue
		}
		if ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP {
			continue
		}
		ips = append(ips, ing.IP)
	}
	return addrsOfFamily(ips, f, reasonInvalidLoadBalancerIP, wrongFamilyOf(svc, f, reasonWrongFamilyLoadBalancerIP), svc, r)
}

// sourceRanges returns spec.loadBalancerSourceRanges of family f. Whitespace
// is trimmed (validation once allowed it). A zero-length prefix allows
// everyone, which is the same as no ranges at all.
func sourceRanges(svc *v1.Service, f proxier.IPFamily, r reporter) []netip.Prefix {
	var out []netip.Prefix
	wrong := wrongFamilyOf(svc, f, reasonWrongFamilySourceRange)
	allowAll := false
	for _, s := range svc.Spec.LoadBalancerSourceRanges {
		p, ok := parsePrefix(s)
		if !ok {
			r.invalid(kindService, reasonInvalidSourceRange, svc, s)
			continue
		}
		if !f.Matches(p.Addr()) {
			wrong.check(p.Addr(), svc, s, r)
			continue
		}
		if p.Bits() == 0 {
			allowAll = true
		}
		if allowAll {
			continue
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	if allowAll {
		return nil
	}
	return out
}

// externallyAccessible reports whether svc receives traffic addressed to
// something other than its ClusterIP.
func externallyAccessible(svc *v1.Service) bool {
	return svc.Spec.Type == v1.ServiceTypeLoadBalancer ||
		svc.Spec.Type == v1.ServiceTypeNodePort ||
		len(svc.Spec.ExternalIPs) > 0
}

func protocolOf(p v1.Protocol) proxier.Protocol {
	if p == "" {
		return proxier.TCP
	}
	return proxier.Protocol(p)
}

// buildServicePorts converts one Service and its EndpointSlices into the
// service ports of family f, sorted by name. It returns nil for Services that
// are not proxied or have no ClusterIP in f. It is pure: the inputs are not
// modified and the result shares no memory with them.
func buildServicePorts(svc *v1.Service, epSlices []*discovery.EndpointSlice, f proxier.IPFamily, nodeName string, r reporter) []*proxier.Service {
	if svc == nil || shouldSkipService(svc) {
		return nil
	}
	clusterIP, ok := clusterIPFor(svc, f, r)
	if !ok {
		return nil
	}

	var affinity int32
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		affinity = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			affinity = *c.ClientIP.TimeoutSeconds
		}
	}
	externalLocal := externallyAccessible(svc) && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	var hcPort int32
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && externalLocal {
		hcPort = svc.Spec.HealthCheckNodePort
		if hcPort == 0 {
			r.invalid(kindService, reasonMissingHealthCheckPort, svc, "")
		}
	}
	var trafficDistribution string
	if svc.Spec.TrafficDistribution != nil {
		trafficDistribution = *svc.Spec.TrafficDistribution
	}
	externalIPs := addrsOfFamily(svc.Spec.ExternalIPs, f, reasonInvalidExternalIP, wrongFamilyOf(svc, f, reasonWrongFamilyExternalIP), svc, r)
	lbIPs := loadBalancerIPs(svc, f, r)
	ranges := sourceRanges(svc, f, r)

	// Only slices of this family take part; FQDN slices never do.
	var famSlices []*discovery.EndpointSlice
	for _, es := range epSlices {
		if addressTypeFamily(es.AddressType) == f {
			famSlices = append(famSlices, es)
		}
	}
	// Map iteration order is random upstream; we merge in slice-name order so
	// the same input always gives the same output.
	slices.SortFunc(famSlices, func(a, b *discovery.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })

	out := make([]*proxier.Service, 0, len(svc.Spec.Ports))
	for i := range svc.Spec.Ports {
		sp := &svc.Spec.Ports[i]
		name := proxier.ServicePortName{
			Namespace: svc.Namespace,
			Name:      svc.Name,
			Port:      sp.Name,
			Protocol:  protocolOf(sp.Protocol),
		}
		if sp.Port <= 0 || sp.Port > 65535 {
			r.invalid(kindService, reasonInvalidPort, svc, name.String())
			continue
		}
		if slices.ContainsFunc(out, func(s *proxier.Service) bool { return s.Name == name }) {
			r.invalid(kindService, reasonDuplicatePort, svc, name.String())
			continue
		}
		out = append(out, &proxier.Service{
			Name:                     name,
			ClusterIP:                clusterIP,
			Port:                     sp.Port,
			Protocol:                 name.Protocol,
			NodePort:                 sp.NodePort,
			ExternalIPs:              slices.Clone(externalIPs),
			LoadBalancerIPs:          slices.Clone(lbIPs),
			LoadBalancerSourceRanges: slices.Clone(ranges),
			AffinityTimeoutSeconds:   affinity,
			ExternalPolicyLocal:      externalLocal,
			InternalPolicyLocal:      internalLocal,
			HealthCheckNodePort:      hcPort,
			TrafficDistribution:      trafficDistribution,
			Endpoints:                endpointsFor(famSlices, name, f, nodeName, r),
		})
	}
	slices.SortFunc(out, func(a, b *proxier.Service) int { return compareNames(a.Name, b.Name) })
	if len(out) == 0 {
		return nil
	}
	return out
}

func compareNames(a, b proxier.ServicePortName) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}

// addressTypeFamily maps an EndpointSlice address type to a family; 0 for
// FQDN and anything unknown.
func addressTypeFamily(t discovery.AddressType) proxier.IPFamily {
	switch t {
	case discovery.AddressTypeIPv4:
		return proxier.IPv4
	case discovery.AddressTypeIPv6:
		return proxier.IPv6
	}
	return 0
}

// endpointsFor merges the endpoints of every slice (all of family f) for
// service port name, deduplicated by IP:port and sorted by IP, then port.
func endpointsFor(epSlices []*discovery.EndpointSlice, name proxier.ServicePortName, f proxier.IPFamily, nodeName string, r reporter) []proxier.Endpoint {
	byAddr := map[netip.AddrPort]int{} // index into eps
	var eps []proxier.Endpoint
	for _, es := range epSlices {
		for _, port := range es.Ports {
			if port.Name == nil {
				// As upstream: an unnamed port is spelled "", never nil.
				r.invalid(kindEndpointSlice, reasonMissingPortName, es, "")
				continue
			}
			if port.Port == nil || *port.Port <= 0 || *port.Port > 65535 {
				r.invalid(kindEndpointSlice, reasonInvalidPort, es, *port.Name)
				continue
			}
			var proto v1.Protocol
			if port.Protocol != nil {
				proto = *port.Protocol
			}
			if *port.Name != name.Port || protocolOf(proto) != name.Protocol {
				continue
			}
			for i := range es.Endpoints {
				ep, ok := convertEndpoint(es, &es.Endpoints[i], *port.Port, f, nodeName, r)
				if !ok {
					continue
				}
				key := netip.AddrPortFrom(ep.IP, uint16(ep.Port))
				if j, dup := byAddr[key]; dup {
					if preferEndpoint(ep, eps[j]) {
						eps[j] = ep
					}
					continue
				}
				byAddr[key] = len(eps)
				eps = append(eps, ep)
			}
		}
	}
	slices.SortFunc(eps, func(a, b proxier.Endpoint) int {
		if c := a.IP.Compare(b.IP); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	return eps
}

// preferEndpoint decides between two endpoints with the same IP:port (an
// endpoint moving between slices, or a pod IP reused before the old pod is
// gone): a non-terminating one wins over a terminating one, then a local one
// over a remote one; otherwise the first seen stays.
func preferEndpoint(cand, cur proxier.Endpoint) bool {
	if cand.Terminating != cur.Terminating {
		return !cand.Terminating
	}
	return cand.IsLocal && !cur.IsLocal
}

// convertEndpoint converts one endpoint of a slice. Only its first address
// counts, as upstream.
func convertEndpoint(es *discovery.EndpointSlice, e *discovery.Endpoint, port int32, f proxier.IPFamily, nodeName string, r reporter) (proxier.Endpoint, bool) {
	if len(e.Addresses) == 0 {
		r.invalid(kindEndpointSlice, reasonNoAddresses, es, "")
		return proxier.Endpoint{}, false
	}
	ip, ok := parseAddr(e.Addresses[0])
	if !ok {
		r.invalid(kindEndpointSlice, reasonInvalidAddress, es, e.Addresses[0])
		return proxier.Endpoint{}, false
	}
	if !f.Matches(ip) {
		r.invalid(kindEndpointSlice, reasonWrongFamily, es, e.Addresses[0])
		return proxier.Endpoint{}, false
	}
	ep := proxier.Endpoint{
		IP:          ip,
		Port:        port,
		Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
		Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.NodeName != nil {
		ep.NodeName = *e.NodeName
		ep.IsLocal = nodeName != "" && ep.NodeName == nodeName
	}
	if e.Zone != nil {
		ep.Zone = *e.Zone
	}
	if h := e.Hints; h != nil {
		for _, z := range h.ForZones {
			ep.ZoneHints = append(ep.ZoneHints, z.Name)
		}
		for _, n := range h.ForNodes {
			ep.NodeHints = append(ep.NodeHints, n.Name)
		}
	}
	return ep, true
}
