package proxiertest

import (
	"github.com/svcproxy/svcproxy/proxier"
)

// The packet-flow cases, grouped by the State and Config they run on.

// webService is a ClusterIP service port with one local and one remote
// endpoint.
func webService() *proxier.Service {
	return Service("ns/web:http", proxier.TCP, "10.96.0.10", 80,
		Endpoints(Endpoint("10.244.1.2", 8080, Local), Endpoint("10.244.2.2", 8080, OnNode(OtherNode))))
}

// lbService is a LoadBalancer with source ranges and
// externalTrafficPolicy Local.
func lbService() *proxier.Service {
	return Service("ns/lb:https", proxier.TCP, "10.96.0.12", 443, NodePort(30012), LoadBalancer("1.2.3.4"), SourceRanges(AllowedRange),
		ExternalLocal, HealthCheck(31012),
		Endpoints(Endpoint("10.244.1.4", 8443, Local), Endpoint("10.244.2.4", 8443, OnNode(OtherNode))))
}

func mainFlows(mode proxier.ModeTraits) flowGroup {
	st := State(proxier.IPv4,
		webService(),
		Service("ns/np", proxier.TCP, "10.96.0.11", 80, NodePort(30011),
			Endpoints(Endpoint("10.244.1.3", 8080, Local), Endpoint("10.244.2.3", 8080))),
		lbService(),
		Service("ns/nolocal", proxier.TCP, "10.96.0.13", 80, NodePort(30013), ExternalIPs("192.168.99.13"), ExternalLocal,
			Endpoints(Endpoint("10.244.2.13", 8080))),
		Service("ns/extip:dns", proxier.UDP, "10.96.0.14", 53, ExternalIPs("192.168.99.14"), Endpoints(Endpoint("10.244.2.14", 5353))),
		Service("ns/empty", proxier.TCP, "10.96.0.15", 80, NodePort(30015), ExternalIPs("192.168.99.15"), LoadBalancer("5.6.7.8"), SourceRanges(AllowedRange)),
		Service("ns/itp", proxier.TCP, "10.96.0.16", 80, InternalLocal,
			Endpoints(Endpoint("10.244.1.16", 8080, Local), Endpoint("10.244.2.16", 8080))),
		Service("ns/itp-none", proxier.TCP, "10.96.0.17", 80, InternalLocal, Endpoints(Endpoint("10.244.2.17", 8080))),
		Service("ns/sticky", proxier.TCP, "10.96.0.18", 80, NodePort(30018), Affinity(10800),
			Endpoints(Endpoint("10.244.1.18", 8080, Local), Endpoint("10.244.2.18", 8080))),
		Service("ns/term", proxier.TCP, "10.96.0.19", 80, Endpoints(Endpoint("10.244.2.19", 8080, Gone), Endpoint("10.244.2.20", 8080, Terminating))),
		Service("ns/term-local", proxier.TCP, "10.96.0.20", 80, NodePort(30020), ExternalLocal,
			Endpoints(Endpoint("10.244.1.21", 8080, Local, Terminating), Endpoint("10.244.2.21", 8080))),
	)
	st.ServiceCIDRs = Prefixes(ServiceCIDR)
	const (
		web, np, lb, nolocal, extip, empty = "ns/web:http", "ns/np", "ns/lb:https", "ns/nolocal", "ns/extip:dns", "ns/empty"
		cip, nport, eip, lbip              = proxier.ViaClusterIP, proxier.ViaNodePort, proxier.ViaExternalIP, proxier.ViaLoadBalancerIP
	)
	webEPs := []string{"10.244.1.2:8080", "10.244.2.2:8080"}
	npEPs := []string{"10.244.1.3:8080", "10.244.2.3:8080"}
	lbEPs := []string{"10.244.1.4:8443", "10.244.2.4:8443"}
	localhost := dnat(np, nport, proxier.ReasonClusterEndpoints, true, npEPs...)
	if mode.NoLocalhostNodePorts {
		localhost = notOurs(proxier.ReasonNoServicePort)
	}
	fromNodeToEmpty := refused(proxier.OutcomeReject, proxier.ReasonNoEndpoints, empty, eip)
	if !mode.CheckNodeToExternal {
		fromNodeToEmpty = refused(proxier.OutcomeNotOurs, proxier.ReasonNodeNotChecked, empty, eip)
	}
	hairpin := dnat(web, cip, proxier.ReasonClusterEndpoints, false, webEPs...)
	hairpin.Hairpin = "10.244.1.2:8080"
	sticky := dnat("ns/sticky", cip, proxier.ReasonClusterEndpoints, false, "10.244.1.18:8080", "10.244.2.18:8080")
	sticky.Affinity = true
	stickyNP := dnat("ns/sticky", nport, proxier.ReasonClusterEndpoints, true, "10.244.1.18:8080", "10.244.2.18:8080")
	stickyNP.Affinity = true
	return flowGroup{name: "main", cfg: Config(NodeIPs(NodeIP), LocalhostNodePorts, Mode(mode)), state: st, flows: []Flow{
		// ClusterIP.
		{Name: "local pod to ClusterIP", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.10:80"),
			Want: dnat(web, cip, proxier.ReasonClusterEndpoints, false, webEPs...)},
		{Name: "remote pod to ClusterIP (the cluster CIDR holds every pod)", Packet: Pkt(proxier.FromRemotePod, RemotePodIP, "10.96.0.10:80"),
			Want: dnat(web, cip, proxier.ReasonClusterEndpoints, false, webEPs...)},
		{Name: "node to ClusterIP", Packet: Pkt(proxier.FromNode, NodeIP, "10.96.0.10:80"),
			Want: dnat(web, cip, proxier.ReasonClusterEndpoints, true, webEPs...)},
		{Name: "outside to ClusterIP", Packet: Pkt(proxier.FromOutside, OutsideIP, "10.96.0.10:80"),
			Want: dnat(web, cip, proxier.ReasonClusterEndpoints, true, webEPs...)},
		{Name: "hairpin", Packet: Pkt(proxier.FromLocalPod, "10.244.1.2", "10.96.0.10:80"), Want: hairpin},
		{Name: "unknown port of a ClusterIP", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.10:81"),
			Want: guarded(mode, proxier.OutcomeReject, proxier.ReasonUnknownPort)},
		{Name: "other protocol of a ClusterIP", Packet: UDP(Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.10:80")),
			Want: guarded(mode, proxier.OutcomeReject, proxier.ReasonUnknownPort)},
		{Name: "unallocated ClusterIP", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.99:80"),
			Want: guarded(mode, proxier.OutcomeDrop, proxier.ReasonUnallocated)},
		{Name: "unknown destination", Packet: UDP(Pkt(proxier.FromOutside, OutsideIP, "8.8.8.8:53")), Want: notOurs(proxier.ReasonNoServicePort)},
		{Name: "internalTrafficPolicy Local", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.16:80"),
			Want: dnat("ns/itp", cip, proxier.ReasonLocalEndpoints, false, "10.244.1.16:8080")},
		{Name: "internalTrafficPolicy Local without local endpoints", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.17:80"),
			Want: refused(proxier.OutcomeDrop, proxier.ReasonNoLocalEndpoints, "ns/itp-none", cip)},
		{Name: "no endpoints", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.15:80"),
			Want: refused(proxier.OutcomeReject, proxier.ReasonNoEndpoints, empty, cip)},
		{Name: "terminating fallback", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.19:80"),
			Want: dnat("ns/term", cip, proxier.ReasonClusterEndpoints, false, "10.244.2.20:8080")},
		{Name: "affinity", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.18:80"), Want: sticky},

		// NodePorts.
		{Name: "outside to NodePort", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30011"),
			Want: dnat(np, nport, proxier.ReasonClusterEndpoints, true, npEPs...)},
		{Name: "local pod to NodePort", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, NodeIP+":30011"),
			Want: dnat(np, nport, proxier.ReasonClusterEndpoints, true, npEPs...)},
		{Name: "localhost NodePort", Packet: Pkt(proxier.FromNode, "127.0.0.1", "127.0.0.1:30011"), Want: localhost},
		{Name: "unknown NodePort", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30099"), Want: notOurs(proxier.ReasonNoServicePort)},
		{Name: "NodePort without endpoints", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30015"),
			Want: refused(proxier.OutcomeReject, proxier.ReasonNoEndpoints, empty, nport)},
		{Name: "affinity through the NodePort", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30018"), Want: stickyNP},

		// externalTrafficPolicy Local and load-balancer source ranges.
		{Name: "outside in the source range to LB IP", Packet: Pkt(proxier.FromOutside, OutsideIP, "1.2.3.4:443"),
			Want: dnat(lb, lbip, proxier.ReasonLocalEndpoints, false, "10.244.1.4:8443")},
		{Name: "outside the source range to LB IP", Packet: Pkt(proxier.FromOutside, OutsideBlockedIP, "1.2.3.4:443"),
			Want: refused(proxier.OutcomeDrop, proxier.ReasonSourceRange, lb, lbip)},
		{Name: "local pod outside the source range to LB IP", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "1.2.3.4:443"),
			Want: refused(proxier.OutcomeDrop, proxier.ReasonSourceRange, lb, lbip)},
		{Name: "outside the source range to the NodePort (ranges do not apply)", Packet: Pkt(proxier.FromOutside, OutsideBlockedIP, NodeIP+":30012"),
			Want: dnat(lb, nport, proxier.ReasonLocalEndpoints, false, "10.244.1.4:8443")},
		{Name: "local pod short-circuits", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, NodeIP+":30012"),
			Want: dnat(lb, nport, proxier.ReasonShortCircuitPod, false, lbEPs...)},
		{Name: "remote pod short-circuits (the cluster CIDR holds it)", Packet: Pkt(proxier.FromRemotePod, RemotePodIP, NodeIP+":30012"),
			Want: dnat(lb, nport, proxier.ReasonShortCircuitPod, false, lbEPs...)},
		{Name: "node short-circuits, masqueraded", Packet: Pkt(proxier.FromNode, NodeIP, NodeIP+":30012"),
			Want: dnat(lb, nport, proxier.ReasonShortCircuitNode, true, lbEPs...)},
		{Name: "outside, no local endpoint, NodePort", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30013"),
			Want: refused(proxier.OutcomeDrop, proxier.ReasonNoLocalEndpoints, nolocal, nport)},
		{Name: "outside, no local endpoint, external IP", Packet: Pkt(proxier.FromOutside, OutsideIP, "192.168.99.13:80"),
			Want: refused(proxier.OutcomeDrop, proxier.ReasonNoLocalEndpoints, nolocal, eip)},
		{Name: "local pod, no local endpoint, short-circuits", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "192.168.99.13:80"),
			Want: dnat(nolocal, eip, proxier.ReasonShortCircuitPod, false, "10.244.2.13:8080")},
		{Name: "node, no local endpoint, short-circuits", Packet: Pkt(proxier.FromNode, NodeIP, "192.168.99.13:80"),
			Want: dnat(nolocal, eip, proxier.ReasonShortCircuitNode, true, "10.244.2.13:8080")},
		{Name: "terminating local fallback", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30020"),
			Want: dnat("ns/term-local", nport, proxier.ReasonLocalEndpoints, false, "10.244.1.21:8080")},

		// External IPs and load balancers without endpoints.
		{Name: "outside to external IP", Packet: UDP(Pkt(proxier.FromOutside, OutsideIP, "192.168.99.14:53")),
			Want: dnat(extip, eip, proxier.ReasonClusterEndpoints, true, "10.244.2.14:5353")},
		{Name: "local pod to external IP without endpoints", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "192.168.99.15:80"),
			Want: refused(proxier.OutcomeReject, proxier.ReasonNoEndpoints, empty, eip)},
		{Name: "node to external IP without endpoints", Packet: Pkt(proxier.FromNode, NodeIP, "192.168.99.15:80"), Want: fromNodeToEmpty},
		{Name: "LB IP without endpoints ignores source ranges", Packet: Pkt(proxier.FromOutside, OutsideBlockedIP, "5.6.7.8:80"),
			Want: refused(proxier.OutcomeReject, proxier.ReasonNoEndpoints, empty, lbip)},
	}}
}

func masqueradeAllFlows(mode proxier.ModeTraits) flowGroup {
	return flowGroup{name: "masquerade-all", cfg: Config(NodeIPs(NodeIP), MasqueradeAll, Mode(mode)), state: State(proxier.IPv4, webService()), flows: []Flow{
		{Name: "local pod to ClusterIP", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, true, "10.244.1.2:8080", "10.244.2.2:8080")},
	}}
}

func noDetectorFlows(mode proxier.ModeTraits) flowGroup {
	return flowGroup{name: "no-detector", cfg: Config(NodeIPs(NodeIP), NoDetector, Mode(mode)), state: State(proxier.IPv4, webService(), lbService()), flows: []Flow{
		{Name: "outside to ClusterIP keeps its source", Packet: Pkt(proxier.FromOutside, OutsideIP, "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, false, "10.244.1.2:8080", "10.244.2.2:8080")},
		{Name: "local pod is not short-circuited", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, NodeIP+":30012"),
			Want: dnat("ns/lb:https", proxier.ViaNodePort, proxier.ReasonLocalEndpoints, false, "10.244.1.4:8443")},
		{Name: "node short-circuits", Packet: Pkt(proxier.FromNode, NodeIP, NodeIP+":30012"),
			Want: dnat("ns/lb:https", proxier.ViaNodePort, proxier.ReasonShortCircuitNode, true, "10.244.1.4:8443", "10.244.2.4:8443")},
	}}
}

// interfaceFlows are the flows of an interface detector (a bridge, or a
// prefix of the pods' interface names).
func interfaceFlows(mode proxier.ModeTraits, name string, d proxier.LocalDetector) flowGroup {
	cfg := Config(NodeIPs(NodeIP), Detector(d), Mode(mode))
	webEPs := []string{"10.244.1.2:8080", "10.244.2.2:8080"}
	return flowGroup{name: name, cfg: cfg, state: State(proxier.IPv4, webService(), lbService()), flows: []Flow{
		{Name: "local pod to ClusterIP", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, false, webEPs...)},
		{Name: "remote pod to ClusterIP", Packet: Pkt(proxier.FromRemotePod, RemotePodIP, "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, true, webEPs...)},
		{Name: "node to ClusterIP", Packet: Pkt(proxier.FromNode, NodeIP, "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, true, webEPs...)},
		{Name: "local pod short-circuits", Packet: Pkt(proxier.FromLocalPod, LocalPodIP, NodeIP+":30012"),
			Want: dnat("ns/lb:https", proxier.ViaNodePort, proxier.ReasonShortCircuitPod, false, "10.244.1.4:8443", "10.244.2.4:8443")},
	}}
}

func nodeCIDRFlows(mode proxier.ModeTraits) flowGroup {
	cfg := Config(NodeIPs(NodeIP), Detector(proxier.LocalDetector{Mode: proxier.LocalNodeCIDR, CIDRs: Prefixes("10.244.1.0/24")}), Mode(mode))
	return flowGroup{name: "node-cidr", cfg: cfg, state: State(proxier.IPv4, webService(), lbService()), flows: []Flow{
		{Name: "remote pod to ClusterIP", Packet: Pkt(proxier.FromRemotePod, RemotePodIP, "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, true, "10.244.1.2:8080", "10.244.2.2:8080")},
		{Name: "remote pod is not short-circuited", Packet: Pkt(proxier.FromRemotePod, RemotePodIP, NodeIP+":30012"),
			Want: dnat("ns/lb:https", proxier.ViaNodePort, proxier.ReasonLocalEndpoints, false, "10.244.1.4:8443")},
	}}
}

func nodePortAddressFlows(mode proxier.ModeTraits) flowGroup {
	cfg := Config(NodeIPs(NodeIP, "10.1.1.1"), NodePortAddresses("192.168.0.0/24"), Mode(mode))
	st := State(proxier.IPv4,
		Service("ns/np", proxier.TCP, "10.96.0.11", 80, NodePort(30011), Endpoints(Endpoint("10.244.2.3", 8080))),
		Service("ns/empty", proxier.TCP, "10.96.0.15", 80, NodePort(30015)))
	empty := refused(proxier.OutcomeReject, proxier.ReasonNoEndpoints, "ns/empty", proxier.ViaNodePort)
	if mode.NodePortChecksOnNodePortAddresses {
		empty = notOurs(proxier.ReasonNoServicePort)
	}
	return flowGroup{name: "nodeport-addresses", cfg: cfg, state: st, flows: []Flow{
		{Name: "NodePort address", Packet: Pkt(proxier.FromOutside, OutsideIP, NodeIP+":30011"),
			Want: dnat("ns/np", proxier.ViaNodePort, proxier.ReasonClusterEndpoints, true, "10.244.2.3:8080")},
		{Name: "other local address", Packet: Pkt(proxier.FromOutside, OutsideIP, "10.1.1.1:30011"), Want: notOurs(proxier.ReasonNoServicePort)},
		{Name: "other local address, no endpoints", Packet: Pkt(proxier.FromOutside, OutsideIP, "10.1.1.1:30015"), Want: empty},
	}}
}

func ipv6Flows(mode proxier.ModeTraits) flowGroup {
	st := State(proxier.IPv6, Service("ns/web6", proxier.TCP, "fd00:10:96::10", 80, NodePort(30011),
		Endpoints(Endpoint("fd00:10:244:1::2", 8080, Local), Endpoint("fd00:10:244:2::2", 8080))))
	st.ServiceCIDRs = Prefixes(ServiceCIDR6)
	eps := []string{"[fd00:10:244:1::2]:8080", "[fd00:10:244:2::2]:8080"}
	return flowGroup{name: "ipv6", cfg: Config(IPv6, NodeIPs(NodeIPv6), LocalhostNodePorts, Mode(mode)), state: st, flows: []Flow{
		{Name: "local pod to ClusterIP", Packet: Pkt(proxier.FromLocalPod, "fd00:10:244:1::5", "[fd00:10:96::10]:80"),
			Want: dnat("ns/web6", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, false, eps...)},
		{Name: "outside to NodePort", Packet: Pkt(proxier.FromOutside, "2001:db8:ffff::2", "["+NodeIPv6+"]:30011"),
			Want: dnat("ns/web6", proxier.ViaNodePort, proxier.ReasonClusterEndpoints, true, eps...)},
		{Name: "no localhost NodePorts", Packet: Pkt(proxier.FromNode, "::1", "[::1]:30011"), Want: notOurs(proxier.ReasonNoServicePort)},
		{Name: "unallocated ClusterIP", Packet: Pkt(proxier.FromLocalPod, "fd00:10:244:1::5", "[fd00:10:96::99]:80"),
			Want: guarded(mode, proxier.OutcomeDrop, proxier.ReasonUnallocated)},
	}}
}

// planFlows are flows on decisions the plan took over from the backends:
// hairpin masquerading of every endpoint, and session affinity of a
// service port with a Local policy.
func planFlows(mode proxier.ModeTraits) flowGroup {
	sticky := Service("ns/sticky-local", proxier.TCP, "10.96.0.30", 80, NodePort(30030), LoadBalancer("5.6.7.30"), ExternalLocal, Affinity(60),
		Endpoints(Endpoint("10.244.1.30", 8080, Local), Endpoint("10.244.2.30", 8080, OnNode(OtherNode))))
	toWeb := dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, false, "10.244.1.2:8080", "10.244.2.2:8080")
	toWeb.Hairpin = "10.244.2.2:8080"
	viaClusterIP := dnat("ns/sticky-local", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, true, "10.244.1.30:8080", "10.244.2.30:8080")
	viaClusterIP.Affinity = true
	viaLB := dnat("ns/sticky-local", proxier.ViaLoadBalancerIP, proxier.ReasonLocalEndpoints, false, "10.244.1.30:8080")
	viaLB.Affinity = true
	return flowGroup{name: "plan", cfg: Config(NodeIPs(NodeIP), Mode(mode)), state: State(proxier.IPv4, webService(), sticky), flows: []Flow{
		{Name: "remote endpoint to its own ClusterIP (hairpin)", Packet: Pkt(proxier.FromRemotePod, "10.244.2.2", "10.96.0.10:80"), Want: toWeb},
		{Name: "affinity to a Local service through its ClusterIP", Packet: Pkt(proxier.FromOutside, OutsideIP, "10.96.0.30:80"), Want: viaClusterIP},
		{Name: "affinity to a Local service through its LB IP", Packet: Pkt(proxier.FromOutside, OutsideIP, "5.6.7.30:80"), Want: viaLB},
	}}
}

// twoCIDRFlows: ClusterCIDR detection over two cluster CIDRs matches pods
// of either.
func twoCIDRFlows(mode proxier.ModeTraits) flowGroup {
	cfg := Config(NodeIPs(NodeIP), Detector(proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: Prefixes(PodCIDR, "10.245.0.0/16")}), Mode(mode))
	webEPs := []string{"10.244.1.2:8080", "10.244.2.2:8080"}
	return flowGroup{name: "two-cluster-cidrs", cfg: cfg, state: State(proxier.IPv4, webService(), lbService()), flows: []Flow{
		{Name: "local pod of the second cluster CIDR to ClusterIP", Packet: Pkt(proxier.FromLocalPod, "10.245.1.5", "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, false, webEPs...)},
		{Name: "local pod of the second cluster CIDR short-circuits", Packet: Pkt(proxier.FromLocalPod, "10.245.1.5", NodeIP+":30012"),
			Want: dnat("ns/lb:https", proxier.ViaNodePort, proxier.ReasonShortCircuitPod, false, "10.244.1.4:8443", "10.244.2.4:8443")},
		{Name: "remote pod of the second cluster CIDR to ClusterIP", Packet: Pkt(proxier.FromRemotePod, "10.245.2.5", "10.96.0.10:80"),
			Want: dnat("ns/web:http", proxier.ViaClusterIP, proxier.ReasonClusterEndpoints, false, webEPs...)},
	}}
}
