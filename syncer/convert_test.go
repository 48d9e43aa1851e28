package syncer

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxier"
)

// recorder is a reporter that remembers "kind/reason/value".
type recorder struct{ got []string }

func (r *recorder) invalid(kind, reason string, _ metav1.Object, value string) {
	r.got = append(r.got, kind+"/"+reason+"/"+value)
}

var cmpAddrs = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func ip(s string) netip.Addr       { return netip.MustParseAddr(s) }
func prefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// svc makes a ClusterIP Service ns1/svc1 with one TCP port "p80" 80.
func svc(mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "svc1", ResourceVersion: "1"},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  "172.30.0.41",
			ClusterIPs: []string{"172.30.0.41"},
			Ports:      []v1.ServicePort{{Name: "p80", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

type epOpt func(*discovery.Endpoint)

func onNode(n string) epOpt { return func(e *discovery.Endpoint) { e.NodeName = ptr.To(n) } }
func conds(ready, serving, terminating *bool) epOpt {
	return func(e *discovery.Endpoint) {
		e.Conditions = discovery.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

func ep(addr string, opts ...epOpt) discovery.Endpoint {
	e := discovery.Endpoint{Addresses: []string{addr}}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func port(name string, p int32, proto v1.Protocol) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(proto)}
}

// slice makes an EndpointSlice of ns1/svc1.
func slice(name string, at discovery.AddressType, ports []discovery.EndpointPort, eps ...discovery.Endpoint) *discovery.EndpointSlice {
	return &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns1", Name: name, ResourceVersion: "1",
			Labels: map[string]string{discovery.LabelServiceName: "svc1"},
		},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func p80() []discovery.EndpointPort {
	return []discovery.EndpointPort{port("p80", 8080, v1.ProtocolTCP)}
}

var spn80 = proxier.ServicePortName{Namespace: "ns1", Name: "svc1", Port: "p80", Protocol: proxier.TCP}

// readyEP is the converted form of a ready, remote endpoint.
func readyEP(addr string, p int32) proxier.Endpoint {
	return proxier.Endpoint{IP: ip(addr), Port: p, Ready: true, Serving: true}
}

// base is the converted form of svc() with the given endpoints.
func base(eps ...proxier.Endpoint) *proxier.Service {
	return &proxier.Service{Name: spn80, ClusterIP: ip("172.30.0.41"), Port: 80, Protocol: proxier.TCP, Endpoints: eps}
}

// lbPort is base at clusterIP with one external IP, load-balancer IP and
// source range.
func lbPort(clusterIP, externalIP, lbIP, sourceRange string, eps ...proxier.Endpoint) *proxier.Service {
	s := base(eps...)
	s.ClusterIP = ip(clusterIP)
	s.ExternalIPs = []netip.Addr{ip(externalIP)}
	s.LoadBalancerIPs = []netip.Addr{ip(lbIP)}
	s.LoadBalancerSourceRanges = []netip.Prefix{prefix(sourceRange)}
	return s
}

func TestBuildServicePorts(t *testing.T) {
	const node = "node-a"
	tests := []struct {
		name    string
		family  proxier.IPFamily // IPv4 when 0
		svc     *v1.Service
		slices  []*discovery.EndpointSlice
		want    []*proxier.Service
		reports []string
	}{
		{
			name:   "basic, endpoints sorted by IP then port",
			svc:    svc(),
			slices: []*discovery.EndpointSlice{slice("s1", discovery.AddressTypeIPv4, p80(), ep("10.0.0.10"), ep("10.0.0.2"), ep("10.0.0.9"))},
			want:   []*proxier.Service{base(readyEP("10.0.0.2", 8080), readyEP("10.0.0.9", 8080), readyEP("10.0.0.10", 8080))},
		},
		{
			name: "leading zeros are accepted everywhere",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ClusterIP, s.Spec.ClusterIPs = "172.30.0.041", []string{"172.30.0.041"}
				s.Spec.ExternalIPs = []string{"1.2.3.004"}
				s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.000/025"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.099.022"}}
			}),
			slices: []*discovery.EndpointSlice{slice("s1", discovery.AddressTypeIPv4, p80(), ep("10.180.00.001"))},
			want:   []*proxier.Service{lbPort("172.30.0.41", "1.2.3.4", "192.168.99.22", "203.0.113.0/25", readyEP("10.180.0.1", 8080))},
		},
		{
			name: "bad IPs are skipped and reported, the rest stays",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalIPs = []string{"not-an-ip", "1.2.3.4", "1.2.3.4"}
				s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/33", " 10.1.0.0/16 "}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "300.1.1.1"}, {IP: "5.6.7.8"}}
			}),
			slices: []*discovery.EndpointSlice{slice("s1", discovery.AddressTypeIPv4, p80(), ep("bogus"), ep("10.0.0.1"))},
			want:   []*proxier.Service{lbPort("172.30.0.41", "1.2.3.4", "5.6.7.8", "10.1.0.0/16", readyEP("10.0.0.1", 8080))},
			reports: []string{
				"Service/InvalidExternalIP/not-an-ip",
				"Service/InvalidLoadBalancerIP/300.1.1.1",
				"Service/InvalidSourceRange/10.0.0.0/33",
				"EndpointSlice/InvalidAddress/bogus",
			},
		},
		{
			name:    "unparseable ClusterIP: service skipped and reported",
			svc:     svc(func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.0.0.256", []string{"10.0.0.256"} }),
			want:    nil,
			reports: []string{"Service/InvalidClusterIP/10.0.0.256"},
		},
		{
			name:   "clusterIPs absent: falls back to spec.clusterIP",
			svc:    svc(func(s *v1.Service) { s.Spec.ClusterIPs = nil }),
			slices: []*discovery.EndpointSlice{slice("s1", discovery.AddressTypeIPv4, p80(), ep("10.0.0.1"))},
			want:   []*proxier.Service{base(readyEP("10.0.0.1", 8080))},
		},
		{
			name:   "dual-stack service, IPv6 family: other family filtered silently",
			family: proxier.IPv6,
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ClusterIPs = []string{"172.30.0.41", "fd00::41"}
				s.Spec.ExternalIPs = []string{"1.2.3.4", "2001:db8::1"}
				s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8", "2001:db8::/32"}
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "5.6.7.8"}, {IP: "2001:db8::5"}}
			}),
			slices: []*discovery.EndpointSlice{
				slice("v4", discovery.AddressTypeIPv4, p80(), ep("10.0.0.1")),
				slice("v6", discovery.AddressTypeIPv6, p80(), ep("fd00::2"), ep("10.0.0.3")),
				slice("fqdn", discovery.AddressTypeFQDN, p80(), ep("example.com")),
			},
			want:    []*proxier.Service{lbPort("fd00::41", "2001:db8::1", "2001:db8::5", "2001:db8::/32", readyEP("fd00::2", 8080))},
			reports: []string{"EndpointSlice/WrongFamily/10.0.0.3"},
		},
		{
			name:   "single-stack IPv4 service has nothing for IPv6",
			family: proxier.IPv6,
			svc:    svc(),
			slices: []*discovery.EndpointSlice{slice("s1", discovery.AddressTypeIPv4, p80(), ep("10.0.0.1"))},
			want:   nil,
		},
		{
			name: "ipMode Proxy and hostname-only ingress ignored, VIP kept",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
					{IP: "5.5.5.5", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example.com"},
					{IP: "6.6.6.6", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
					{IP: "7.7.7.7"},
				}
			}),
			want: []*proxier.Service{func() *proxier.Service {
				s := base()
				s.LoadBalancerIPs = []netip.Addr{ip("6.6.6.6"), ip("7.7.7.7")}
				return s
			}()},
		},
		{
			name: "headless skipped",
			svc: svc(func(s *v1.Service) {
				s.Spec.ClusterIP, s.Spec.ClusterIPs = v1.ClusterIPNone, []string{v1.ClusterIPNone}
			}),
			want: nil,
		},
		{
			name: "no ClusterIP skipped",
			svc:  svc(func(s *v1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil }),
			want: nil,
		},
		{
			name: "ExternalName skipped",
			svc:  svc(func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeExternalName; s.Spec.ExternalName = "example.com" }),
			want: nil,
		},
		{
			name: "dedup across slices: non-terminating beats terminating, local beats remote",
			svc:  svc(),
			slices: []*discovery.EndpointSlice{
				slice("a", discovery.AddressTypeIPv4, p80(),
					ep("10.0.0.1", conds(ptr.To(false), ptr.To(true), ptr.To(true)), onNode("node-b")),
					ep("10.0.0.2", onNode("node-b"))),
				slice("b", discovery.AddressTypeIPv4, p80(),
					ep("10.0.0.1", onNode("node-c")),
					ep("10.0.0.2", onNode(node)),
					ep("10.0.0.2", conds(ptr.To(false), ptr.To(false), ptr.To(true)), onNode(node))),
			},
			want: []*proxier.Service{base(
				proxier.Endpoint{IP: ip("10.0.0.1"), Port: 8080, NodeName: "node-c", Ready: true, Serving: true},
				proxier.Endpoint{IP: ip("10.0.0.2"), Port: 8080, NodeName: node, IsLocal: true, Ready: true, Serving: true},
			)},
		},
		{
			name: "only the first address counts; endpoints without addresses skipped",
			svc:  svc(),
			slices: []*discovery.EndpointSlice{slice("a", discovery.AddressTypeIPv4, p80(),
				discovery.Endpoint{Addresses: []string{"10.0.0.1", "10.0.0.99"}},
				discovery.Endpoint{},
			)},
			want:    []*proxier.Service{base(readyEP("10.0.0.1", 8080))},
			reports: []string{"EndpointSlice/NoAddresses/"},
		},
		{
			name: "condition defaults and explicit values, zone, hints",
			svc:  svc(),
			slices: []*discovery.EndpointSlice{slice("a", discovery.AddressTypeIPv4, p80(),
				ep("10.0.0.1"),
				ep("10.0.0.2", conds(ptr.To(false), nil, nil)),
				ep("10.0.0.3", conds(ptr.To(false), ptr.To(true), ptr.To(true))),
				ep("10.0.0.4", conds(nil, ptr.To(false), ptr.To(false))),
				ep("10.0.0.5", func(e *discovery.Endpoint) {
					e.Zone = ptr.To("zone-a")
					e.Hints = &discovery.EndpointHints{
						ForZones: []discovery.ForZone{{Name: "zone-a"}, {Name: "zone-b"}},
						ForNodes: []discovery.ForNode{{Name: node}},
					}
				}),
			)},
			want: []*proxier.Service{base(
				proxier.Endpoint{IP: ip("10.0.0.1"), Port: 8080, Ready: true, Serving: true},
				proxier.Endpoint{IP: ip("10.0.0.2"), Port: 8080, Ready: false, Serving: true},
				proxier.Endpoint{IP: ip("10.0.0.3"), Port: 8080, Ready: false, Serving: true, Terminating: true},
				proxier.Endpoint{IP: ip("10.0.0.4"), Port: 8080, Ready: true, Serving: false},
				proxier.Endpoint{IP: ip("10.0.0.5"), Port: 8080, Ready: true, Serving: true, Zone: "zone-a",
					ZoneHints: []string{"zone-a", "zone-b"}, NodeHints: []string{node}},
			)},
		},
		{
			name: "slice ports matched by name and protocol; nil name and nil port ignored",
			svc: svc(func(s *v1.Service) {
				s.Spec.Ports = []v1.ServicePort{
					{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP},
					{Name: "dns-tcp", Port: 53, Protocol: v1.ProtocolTCP},
					{Name: "", Port: 9, Protocol: v1.ProtocolSCTP},
				}
			}),
			slices: []*discovery.EndpointSlice{slice("a", discovery.AddressTypeIPv4,
				[]discovery.EndpointPort{
					port("dns", 5353, v1.ProtocolUDP),
					port("dns", 5354, v1.ProtocolTCP), // no service port dns/TCP
					port("dns-tcp", 5355, v1.ProtocolTCP),
					{Name: nil, Port: ptr.To[int32](7), Protocol: ptr.To(v1.ProtocolSCTP)},
					{Name: ptr.To(""), Port: nil, Protocol: ptr.To(v1.ProtocolSCTP)},
					port("", 99, v1.ProtocolSCTP),
				},
				ep("10.0.0.1"))},
			want: []*proxier.Service{
				{Name: proxier.ServicePortName{Namespace: "ns1", Name: "svc1", Port: "", Protocol: proxier.SCTP},
					ClusterIP: ip("172.30.0.41"), Port: 9, Protocol: proxier.SCTP,
					Endpoints: []proxier.Endpoint{readyEP("10.0.0.1", 99)}},
				{Name: proxier.ServicePortName{Namespace: "ns1", Name: "svc1", Port: "dns", Protocol: proxier.UDP},
					ClusterIP: ip("172.30.0.41"), Port: 53, Protocol: proxier.UDP,
					Endpoints: []proxier.Endpoint{readyEP("10.0.0.1", 5353)}},
				{Name: proxier.ServicePortName{Namespace: "ns1", Name: "svc1", Port: "dns-tcp", Protocol: proxier.TCP},
					ClusterIP: ip("172.30.0.41"), Port: 53, Protocol: proxier.TCP,
					Endpoints: []proxier.Endpoint{readyEP("10.0.0.1", 5355)}},
			},
			reports: []string{"EndpointSlice/MissingPortName/", "EndpointSlice/InvalidPort/"},
		},
		{
			name: "NodePort, ETP Local, ClientIP affinity default, ITP Local, traffic distribution",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.HealthCheckNodePort = 31000 // only for LoadBalancer
				s.Spec.TrafficDistribution = ptr.To("PreferSameZone")
			}),
			want: []*proxier.Service{func() *proxier.Service {
				s := base()
				s.NodePort = 30080
				s.ExternalPolicyLocal = true
				s.InternalPolicyLocal = true
				s.AffinityTimeoutSeconds = 10800
				s.TrafficDistribution = "PreferSameZone"
				return s
			}()},
		},
		{
			name: "LoadBalancer ETP Local gets health check node port; explicit affinity timeout",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 31000
				s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
				s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
			}),
			want: []*proxier.Service{func() *proxier.Service {
				s := base()
				s.ExternalPolicyLocal = true
				s.HealthCheckNodePort = 31000
				s.AffinityTimeoutSeconds = 60
				return s
			}()},
		},
		{
			name: "ETP Local on a plain ClusterIP is not external; with externalIPs it is",
			svc: svc(func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: []*proxier.Service{base()},
		},
		{
			name: "ETP Local with externalIPs",
			svc: svc(func(s *v1.Service) {
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
				s.Spec.ExternalIPs = []string{"1.2.3.4"}
			}),
			want: []*proxier.Service{func() *proxier.Service {
				s := base()
				s.ExternalPolicyLocal = true
				s.ExternalIPs = []netip.Addr{ip("1.2.3.4")}
				return s
			}()},
		},
		{
			name: "zero-length source range allows everyone",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8", " 0.0.0.0/0"}
			}),
			want: []*proxier.Service{base()},
		},
		{
			name: "LoadBalancer ETP Local without health check node port is reported",
			svc: svc(func(s *v1.Service) {
				s.Spec.Type = v1.ServiceTypeLoadBalancer
				s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			}),
			want: []*proxier.Service{func() *proxier.Service {
				s := base()
				s.ExternalPolicyLocal = true
				return s
			}()},
			reports: []string{"Service/MissingHealthCheckNodePort/"},
		},
		{
			name: "invalid and duplicate service ports skipped",
			svc: svc(func(s *v1.Service) {
				s.Spec.Ports = append(s.Spec.Ports,
					v1.ServicePort{Name: "p80", Port: 81, Protocol: v1.ProtocolTCP},
					v1.ServicePort{Name: "zero", Port: 0, Protocol: v1.ProtocolTCP})
			}),
			want:    []*proxier.Service{base()},
			reports: []string{"Service/DuplicatePort/ns1/svc1:p80", "Service/InvalidPort/ns1/svc1:zero"},
		},
		{
			name:   "nil Service",
			svc:    nil,
			slices: []*discovery.EndpointSlice{slice("a", discovery.AddressTypeIPv4, p80(), ep("10.0.0.1"))},
			want:   nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.family
			if f == 0 {
				f = proxier.IPv4
			}
			rec := &recorder{}
			got := buildServicePorts(tc.svc, tc.slices, f, node, rec)
			if diff := cmp.Diff(tc.want, got, cmpAddrs); diff != "" {
				t.Errorf("services (-want +got):\n%s", diff)
			}
			slices.Sort(rec.got)
			want := slices.Clone(tc.reports)
			slices.Sort(want)
			if diff := cmp.Diff(want, slices.Compact(rec.got)); diff != "" {
				t.Errorf("reports (-want +got):\n%s", diff)
			}
			for _, s := range got {
				if err := s.Validate(f); err != nil {
					t.Errorf("built service does not validate: %v", err)
				}
			}
		})
	}
}

// TestBuildServicePortsSharesNoMemory checks that each port owns its slices,
// so that reusing one port's pointer never aliases another's data.
func TestBuildServicePortsSharesNoMemory(t *testing.T) {
	s := svc(func(s *v1.Service) {
		s.Spec.ExternalIPs = []string{"1.2.3.4"}
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "p81", Port: 81, Protocol: v1.ProtocolTCP})
	})
	got := buildServicePorts(s, nil, proxier.IPv4, "", nopReporter{})
	if len(got) != 2 {
		t.Fatalf("got %d ports, want 2", len(got))
	}
	got[0].ExternalIPs[0] = ip("9.9.9.9")
	if got[1].ExternalIPs[0] != ip("1.2.3.4") {
		t.Errorf("ports share their ExternalIPs backing array")
	}
}

func TestParseSloppy(t *testing.T) {
	addr := func(s string) (string, bool) { a, ok := parseAddr(s); return a.String(), ok }
	pfx := func(s string) (string, bool) { p, ok := parsePrefix(s); return p.String(), ok }
	for _, tc := range []struct {
		name  string
		parse func(string) (string, bool)
		cases map[string]string // input -> parsed, or "invalid"
	}{
		{"parseAddr", addr, map[string]string{
			"172.30.0.041":      "172.30.0.41",
			"1.2.3.004":         "1.2.3.4",
			"192.168.099.022":   "192.168.99.22",
			"10.180.00.001":     "10.180.0.1",
			"::ffff:1.2.3.4":    "1.2.3.4",
			"fd00::0001":        "fd00::1",
			" 10.0.0.1 ":        "10.0.0.1",
			"10.0.0":            "invalid",
			"":                  "invalid",
			"fe80::1%eth0":      "invalid",
			"1.2.3.4/32":        "invalid",
			"2001:db8::1:2:3:4": "2001:db8::1:2:3:4",
		}},
		{"parsePrefix", pfx, map[string]string{
			"203.0.113.000/025": "203.0.113.0/25",
			"10.1.2.3/8":        "10.0.0.0/8",
			"2001:db8::1/32":    "2001:db8::/32",
			"10.0.0.0/33":       "invalid",
			"10.0.0.0":          "invalid",
		}},
	} {
		for in, want := range tc.cases {
			got, ok := tc.parse(in)
			if !ok {
				got = "invalid"
			}
			if got != want {
				t.Errorf("%s(%q) = %s, want %s", tc.name, in, got, want)
			}
		}
	}
}

// TestWrongFamilyReported: external IPs, load-balancer IPs and source ranges
// of a family in which the Service has no ClusterIP are reported, each with
// its own reason; those of the other family of a dual-stack Service are not.
func TestWrongFamilyReported(t *testing.T) {
	lb := func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1"}
		s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/24", "2001:db8:1::/64"}
		s.Spec.Ports[0].NodePort = 30080
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "198.51.100.1"}, {IP: "2001:db8::2"}}
	}
	dual := func(s *v1.Service) {
		s.Spec.ClusterIPs = []string{"172.30.0.41", "fd00::41"}
		s.Spec.IPFamilies = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
	}
	for _, tc := range []struct {
		name string
		svc  *v1.Service
		f    proxier.IPFamily
		want []string
	}{
		{"IPv4-only Service, IPv4 proxier", svc(lb), proxier.IPv4, []string{
			"Service/WrongFamilyExternalIP/2001:db8::1",
			"Service/WrongFamilyLoadBalancerIP/2001:db8::2",
			"Service/WrongFamilySourceRange/2001:db8:1::/64",
		}},
		{"IPv4-only Service, IPv6 proxier", svc(lb), proxier.IPv6, nil},
		{"dual-stack Service, IPv4 proxier", svc(lb, dual), proxier.IPv4, nil},
		{"dual-stack Service, IPv6 proxier", svc(lb, dual), proxier.IPv6, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			ports := buildServicePorts(tc.svc, nil, tc.f, "node-1", rec)
			slices.Sort(rec.got)
			if diff := cmp.Diff(tc.want, rec.got); diff != "" {
				t.Errorf("reports (-want +got):\n%s", diff)
			}
			if tc.f == proxier.IPv4 && len(ports) == 1 {
				p := ports[0]
				if len(p.ExternalIPs) != 1 || len(p.LoadBalancerIPs) != 1 || len(p.LoadBalancerSourceRanges) != 1 {
					t.Errorf("IPv4 addresses: external %v, LB %v, ranges %v; want one of each", p.ExternalIPs, p.LoadBalancerIPs, p.LoadBalancerSourceRanges)
				}
			}
		})
	}
}
