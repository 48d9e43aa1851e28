package e2e

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
	"github.com/svcproxy/svcproxy/proxier"
)

// `svcproxy explain` held against real traffic. Each case asks explain,
// with the running proxy's flags and against the live API server, what
// happens to a new connection; checks the answer's shape against the
// Service the test made; then makes the same connection and checks that
// traffic did what explain said: the endpoints that answered are among
// explain's (each of them answering, or one alone under affinity), each
// saw the client's own source exactly where explain says "not
// masqueraded", and REJECT is refused, DROP times out.

// origin is where a test connection starts.
type origin struct {
	name string
	ip   string       // the source address, explain's --from
	pod  *harness.Pod // a pod on this node, or
	ns   *harness.Netns
	ext  bool // the outside client (ip is its source address)
}

func fromPod(p *harness.Pod) origin  { return origin{name: "pod " + p.Name, ip: p.IP, pod: p} }
func fromPod6(p *harness.Pod) origin { return origin{name: "pod " + p.Name, ip: p.IP6, pod: p} }
func fromOutside(ip string) origin   { return origin{name: "outside " + ip, ip: ip, ext: true} }
func fromNode() origin               { return origin{name: "node", ip: harness.NodeIP, ns: env.Node} }

// send makes n attempts from o to dst ("IP:port") over proto.
func (c *tc) send(o origin, dst, proto string, n int, timeout time.Duration) []harness.Reply {
	c.Helper()
	opts := harness.ClientOptions{Proto: proto, Target: dst, Count: n, Timeout: timeout}
	switch {
	case o.pod != nil:
		return c.connect(o.pod, opts)
	case o.ext:
		opts.SrcIP = o.ip
		return c.externalOpts(opts)
	}
	rs, err := env.ConnectFrom(c.ctx, o.ns, opts)
	if err != nil {
		c.Fatal(err)
	}
	return rs
}

// explain asks svcproxy explain about a new connection from src to dst
// ("IP:port") over proto.
func (c *tc) explain(src, dst, proto string, extra ...string) *harness.Explanation {
	c.Helper()
	ex, err := env.Explain(c.ctx, append([]string{"--from", src, "--to", dst + "/" + proto}, extra...)...)
	if err != nil {
		c.Fatal(err)
	}
	c.Logf("explain --from %s --to %s/%s (%s): %s", src, dst, proto, ex.SourceKind, summary(ex))
	return ex
}

// summary is one line of an explanation.
func summary(ex *harness.Explanation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s)", ex.Verdict, ex.Reason)
	if ex.Port != nil {
		fmt.Fprintf(&b, " via %s", ex.Port.Via)
	}
	if ex.Policy != nil {
		fmt.Fprintf(&b, ", %s policy %s", ex.Policy.Traffic, ex.Policy.Policy)
		if ex.Policy.ShortCircuit {
			b.WriteString(" short-circuited")
		}
	}
	for _, e := range ex.Endpoints {
		fmt.Fprintf(&b, ", %s p=%.2f masq=%v", e.Endpoint, e.Probability, e.Masquerade)
		if e.Hairpin {
			b.WriteString(" hairpin")
		}
	}
	if ex.Affinity != nil {
		fmt.Fprintf(&b, ", affinity %ds", ex.Affinity.TimeoutSeconds)
	}
	fmt.Fprintf(&b, ", %d rule(s)", len(ex.Rules))
	return b.String()
}

// shape is what explain must say, as the test knows from the Service and
// the endpoints it made.
type shape struct {
	verdict proxier.Outcome
	reason  proxier.Reason // "": not checked
	via     proxier.Via    // "": no port matched
	kind    proxier.SourceKind
	policy  string // "Cluster" or "Local" ("": not checked)
	short   bool   // the Local policy short-circuited
	eps     []*harness.Pod
	v6      bool // eps at their IPv6 addresses
}

// checkShape fails the test (and goes on) where ex differs from want.
func (c *tc) checkShape(ex *harness.Explanation, want shape) {
	c.Helper()
	var bad []string
	if ex.Verdict != want.verdict {
		bad = append(bad, fmt.Sprintf("verdict %s, want %s", ex.Verdict, want.verdict))
	}
	if want.reason != "" && ex.Reason != want.reason {
		bad = append(bad, fmt.Sprintf("reason %q, want %q", ex.Reason, want.reason))
	}
	if ex.SourceKind != want.kind {
		bad = append(bad, fmt.Sprintf("sourceKind %q, want %q", ex.SourceKind, want.kind))
	}
	switch {
	case want.via == "" && ex.Port != nil:
		bad = append(bad, fmt.Sprintf("matched a port via %s, want none", ex.Port.Via))
	case want.via != "" && (ex.Port == nil || ex.Port.Via != want.via):
		bad = append(bad, fmt.Sprintf("port %+v, want one via %s", ex.Port, want.via))
	}
	if want.policy != "" && (ex.Policy == nil || ex.Policy.Policy != want.policy || ex.Policy.ShortCircuit != want.short) {
		bad = append(bad, fmt.Sprintf("policy %+v, want %s (short-circuit %v)", ex.Policy, want.policy, want.short))
	}
	var got, wantEps []string
	for _, e := range ex.Endpoints {
		got = append(got, e.Endpoint.String())
	}
	for _, p := range want.eps {
		wantEps = append(wantEps, endpointAt(p, want.v6).String())
	}
	slices.Sort(got)
	slices.Sort(wantEps)
	if !slices.Equal(got, wantEps) {
		bad = append(bad, fmt.Sprintf("endpoints %v, want %v", got, wantEps))
	}
	if want.verdict == proxier.OutcomeDNAT {
		sum := 0.0
		for _, e := range ex.Endpoints {
			sum += e.Probability
			if math.Abs(e.Probability-1/float64(len(ex.Endpoints))) > 1e-6 {
				bad = append(bad, fmt.Sprintf("endpoint %s probability %v, want 1/%d", e.Endpoint, e.Probability, len(ex.Endpoints)))
			}
		}
		if math.Abs(sum-1) > 1e-6 {
			bad = append(bad, fmt.Sprintf("probabilities add up to %v", sum))
		}
	}
	if len(ex.Rules) == 0 {
		bad = append(bad, "no rules named")
	}
	family := "IPv4"
	if want.v6 {
		family = "IPv6"
	}
	if ex.Mode != env.ProxyMode || ex.Family != family {
		bad = append(bad, fmt.Sprintf("mode %q family %q, want %q %q", ex.Mode, ex.Family, env.ProxyMode, family))
	}
	if len(bad) > 0 {
		c.Errorf("explain's answer:\n\t%s\n%s", strings.Join(bad, "\n\t"), ex.JSON)
	}
}

// endpointAt is the echo server's endpoint of pod p.
func endpointAt(p *harness.Pod, v6 bool) netip.AddrPort {
	ip := p.IP
	if v6 {
		ip = p.IP6
	}
	return netip.AddrPortFrom(netip.MustParseAddr(ip), harness.EchoPort)
}

// podNamed is the pod whose echo server is called name, or nil.
func podNamed(name string) *harness.Pod {
	for _, p := range env.Pods() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// agree complains unless the replies rs to connections from src are what
// ex predicted. DNAT: every attempt answered by one of ex's endpoints,
// which saw src as the source exactly when ex does not masquerade the
// packet to it (and masqSrc, if set, when it does); under affinity all by
// one endpoint, otherwise each endpoint at least once. REJECT: every
// attempt refused. DROP: every attempt timed out.
func agree(ex *harness.Explanation, rs []harness.Reply, src, masqSrc string) string {
	if len(rs) == 0 {
		return "no attempts made"
	}
	switch ex.Verdict {
	case proxier.OutcomeReject, proxier.OutcomeDrop:
		want := map[proxier.Outcome]string{proxier.OutcomeReject: "refused", proxier.OutcomeDrop: "timeout"}[ex.Verdict]
		for i, r := range rs {
			if r.Err != want {
				return fmt.Sprintf("explain says %s (%s), attempt %d got %q, want ERR %s", ex.Verdict, ex.Reason, i, r.Line, want)
			}
		}
		return ""
	case proxier.OutcomeDNAT:
	default:
		return fmt.Sprintf("explain says %s (%s): no traffic prediction to hold it to", ex.Verdict, ex.Reason)
	}
	from := netip.MustParseAddr(src)
	cands := map[netip.AddrPort]harness.ExplainedEndpoint{}
	for _, e := range ex.Endpoints {
		cands[e.Endpoint] = e
	}
	tally := map[netip.AddrPort]int{}
	for i, r := range rs {
		if r.Err != "" {
			return fmt.Sprintf("explain says DNAT, attempt %d got %q (%s)", i, r.Line, harness.FormatTally(harness.Tally(rs)))
		}
		p := podNamed(r.Backend)
		if p == nil {
			return fmt.Sprintf("attempt %d answered by unknown %q", i, r.Line)
		}
		ep := endpointAt(p, from.Is6())
		cand, ok := cands[ep]
		if !ok {
			return fmt.Sprintf("attempt %d answered by %s (%s), not one of explain's endpoints (%s)", i, r.Backend, ep, harness.FormatTally(harness.Tally(rs)))
		}
		tally[ep]++
		seen, err := netip.ParseAddr(r.SourceIP())
		switch {
		case err != nil:
			return fmt.Sprintf("attempt %d: source %q: %v", i, r.Source, err)
		case !cand.Masquerade && seen != from:
			return fmt.Sprintf("%s saw source %s; explain says the packet keeps its source %s (%s)", r.Backend, seen, from, ex.MasqueradeReason)
		case cand.Masquerade && seen == from:
			return fmt.Sprintf("%s saw the client's own source %s; explain says it is masqueraded (%s)", r.Backend, seen, ex.MasqueradeReason)
		case cand.Masquerade && masqSrc != "" && seen.String() != masqSrc:
			return fmt.Sprintf("%s saw source %s, want the masquerade address %s", r.Backend, seen, masqSrc)
		}
	}
	if ex.Affinity != nil {
		if len(tally) != 1 {
			return fmt.Sprintf("explain says affinity (%ds), but connections spread: %s", ex.Affinity.TimeoutSeconds, harness.FormatTally(harness.Tally(rs)))
		}
		return ""
	}
	for _, e := range ex.Endpoints {
		if tally[e.Endpoint] == 0 {
			return fmt.Sprintf("explain's endpoint %s (probability %.2f) never answered (%s)", e.Endpoint, e.Probability, harness.FormatTally(harness.Tally(rs)))
		}
	}
	return ""
}

// holds asks explain about a connection from o to dst over proto, checks
// the answer against want, and waits until real traffic does what the
// answer says (see agree). It returns the answer.
func (c *tc) holds(o origin, dst, proto string, want shape, masqSrc string) *harness.Explanation {
	c.Helper()
	ex := c.explain(o.ip, dst, proto)
	c.checkShape(ex, want)
	n, timeout := 30, time.Second
	switch ex.Verdict {
	case proxier.OutcomeDrop:
		n, timeout = 2, 500*time.Millisecond
	case proxier.OutcomeReject:
		n, timeout = 3, 5*time.Second
	case proxier.OutcomeDNAT:
	default:
		// Nothing to hold traffic to; say what traffic did instead.
		rs := c.send(o, dst, proto, 5, time.Second)
		c.Fatalf("explain says %s (%s) for %s to %s/%s: no traffic prediction to hold it to; 5 attempts: %s",
			ex.Verdict, ex.Reason, o.name, dst, proto, harness.FormatTally(harness.Tally(rs)))
	}
	var rs []harness.Reply
	c.eventually(fmt.Sprintf("%s to %s/%s does what explain says", o.name, dst, proto), func() string {
		rs = c.send(o, dst, proto, n, timeout)
		return agree(ex, rs, o.ip, masqSrc)
	})
	c.Logf("RESULT explain %s to %s/%s: %s; traffic %s", o.name, dst, proto, summary(ex), harness.FormatTally(harness.Tally(rs)))
	c.eventually(fmt.Sprintf("the %d rule(s) explain names are in the kernel", len(ex.Rules)), func() string {
		missing, err := env.MissingRules(c.ctx, ex)
		switch {
		case err != nil:
			return err.Error()
		case len(missing) > 0:
			return fmt.Sprintf("%d of %d not found:\n\t%s", len(missing), len(ex.Rules), strings.Join(missing, "\n\t"))
		}
		return ""
	})
	return ex
}

func hostPort(ip string, port int32) string { return net.JoinHostPort(ip, strconv.Itoa(int(port))) }

// TestExplainClusterIP: a ClusterIP with three local endpoints. From a
// local pod explain says DNAT to any of the three, source kept; from the
// node, masqueraded. Traffic spreads over all three (no affinity), and the
// source each saw is the one explain said.
func TestExplainClusterIP(t *testing.T) {
	c := begin(t)
	svc := c.service("explain", "clusterip", []harness.Port{harness.TCP}, backends...)
	dst := target(svc, 80)
	for _, tt := range []struct {
		from origin
		kind proxier.SourceKind
		masq bool
	}{
		{fromPod(client), proxier.FromLocalPod, false},
		{fromNode(), proxier.FromNode, true},
	} {
		ex := c.holds(tt.from, dst, "tcp", shape{verdict: proxier.OutcomeDNAT, via: proxier.ViaClusterIP,
			kind: tt.kind, policy: "Cluster", eps: backends}, "")
		if ex.Masquerade != tt.masq {
			t.Errorf("from %s: explain says masquerade %v, want %v (%s)", tt.from.name, ex.Masquerade, tt.masq, ex.MasqueradeReason)
		}
		if ex.Affinity != nil {
			t.Errorf("from %s: explain shows affinity %+v on a Service without it", tt.from.name, ex.Affinity)
		}
	}
}

// TestExplainNodePortLocal: a NodePort under externalTrafficPolicy Local
// with one endpoint here and two on another node. From outside explain
// says the local endpoint only, source kept; from a pod the policy is
// short-circuited to all three, source kept; from the node too,
// masqueraded. Without a local endpoint, outside traffic is dropped.
func TestExplainNodePortLocal(t *testing.T) {
	c := begin(t)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService("explain-etp", v1.ServiceSpec{
		Type: v1.ServiceTypeNodePort, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	dst := nodePortTarget(svc)
	ex := c.holds(fromOutside(harness.ExtAllowedIP), dst, "tcp", shape{verdict: proxier.OutcomeDNAT,
		reason: proxier.ReasonLocalEndpoints, via: proxier.ViaNodePort, kind: proxier.FromOutside,
		policy: "Local", eps: []*harness.Pod{a}}, "")
	if ex.Masquerade {
		t.Errorf("outside to an externalTrafficPolicy Local NodePort: explain says masqueraded (%s)", ex.MasqueradeReason)
	}
	c.holds(fromPod(client), dst, "tcp", shape{verdict: proxier.OutcomeDNAT, reason: proxier.ReasonShortCircuitPod,
		via: proxier.ViaNodePort, kind: proxier.FromLocalPod, policy: "Local", short: true, eps: backends}, "")
	ex = c.holds(fromNode(), dst, "tcp", shape{verdict: proxier.OutcomeDNAT, reason: proxier.ReasonShortCircuitNode,
		via: proxier.ViaNodePort, kind: proxier.FromNode, policy: "Local", short: true, eps: backends}, "")
	if !ex.Masquerade {
		t.Errorf("node to an externalTrafficPolicy Local NodePort: explain says not masqueraded (%s)", ex.MasqueradeReason)
	}

	c.slice(svc, at(b, otherNode), at(cc, otherNode))
	c.holds(fromOutside(harness.ExtAllowedIP), dst, "tcp", shape{verdict: proxier.OutcomeDrop,
		reason: proxier.ReasonNoLocalEndpoints, via: proxier.ViaNodePort, kind: proxier.FromOutside, policy: "Local"}, "")
}

// TestExplainLoadBalancerSourceRanges: a load-balancer IP with
// loadBalancerSourceRanges. The allowed source is DNATed (masqueraded,
// externalTrafficPolicy Cluster) and reaches the endpoints; the blocked
// one is dropped and its connections time out. The allowed source goes
// first, so the rules are in place when the blocked one is tried.
func TestExplainLoadBalancerSourceRanges(t *testing.T) {
	c := begin(t)
	const lbIP = "10.99.0.120"
	c.routeToNode(lbIP)
	svc := c.createService("explain-lb", v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, LoadBalancerSourceRanges: []string{harness.ExtAllowedIP + "/32"}})
	svc = c.setIngress(svc, v1.LoadBalancerIngress{IP: lbIP})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], otherNode))
	dst := net.JoinHostPort(lbIP, "80")
	ex := c.holds(fromOutside(harness.ExtAllowedIP), dst, "tcp", shape{verdict: proxier.OutcomeDNAT,
		reason: proxier.ReasonClusterEndpoints, via: proxier.ViaLoadBalancerIP, kind: proxier.FromOutside,
		policy: "Cluster", eps: backends[:2]}, "")
	if !ex.Masquerade {
		t.Errorf("outside to an externalTrafficPolicy Cluster LB IP: explain says not masqueraded (%s)", ex.MasqueradeReason)
	}
	c.holds(fromOutside(harness.ExtBlockedIP), dst, "tcp", shape{verdict: proxier.OutcomeDrop,
		reason: proxier.ReasonSourceRange, via: proxier.ViaLoadBalancerIP, kind: proxier.FromOutside}, "")
}

// TestExplainInternalTrafficPolicyLocal: a ClusterIP under
// internalTrafficPolicy Local goes to the local endpoint only; without a
// local endpoint it is dropped (after traffic reached the local one, so
// the timeouts are the new rules').
func TestExplainInternalTrafficPolicyLocal(t *testing.T) {
	c := begin(t)
	svc, a, dropLocal := c.itpLocalService("explain-itp")
	dst := target(svc, 80)
	c.holds(fromPod(client), dst, "tcp", shape{verdict: proxier.OutcomeDNAT, reason: proxier.ReasonLocalEndpoints,
		via: proxier.ViaClusterIP, kind: proxier.FromLocalPod, policy: "Local", eps: []*harness.Pod{a}}, "")
	dropLocal()
	c.holds(fromPod(client), dst, "tcp", shape{verdict: proxier.OutcomeDrop, reason: proxier.ReasonNoLocalEndpoints,
		via: proxier.ViaClusterIP, kind: proxier.FromLocalPod, policy: "Local"}, "")
}

// TestExplainNoEndpoints: a Service without endpoints is rejected, TCP and
// UDP, and the connections really are refused.
func TestExplainNoEndpoints(t *testing.T) {
	c := begin(t)
	svc := c.service("explain", "no-endpoints", []harness.Port{harness.TCP, harness.UDP})
	c.endpoints(svc)
	for _, proto := range []string{"tcp", "udp"} {
		c.holds(fromPod(client), target(svc, 80), proto, shape{verdict: proxier.OutcomeReject,
			reason: proxier.ReasonNoEndpoints, via: proxier.ViaClusterIP, kind: proxier.FromLocalPod}, "")
	}
}

// TestExplainSessionAffinity: with ClientIP affinity explain shows it
// (with its timeout) beside all three candidates, and 30 connections all
// land on one of them.
func TestExplainSessionAffinity(t *testing.T) {
	c := begin(t)
	svc := c.createService("explain-affinity", affinity(300, v1.ServiceSpec{}))
	c.slice(svc, twoHereOneThere()...)
	ex := c.holds(fromPod(client), target(svc, 80), "tcp", shape{verdict: proxier.OutcomeDNAT,
		via: proxier.ViaClusterIP, kind: proxier.FromLocalPod, policy: "Cluster", eps: backends}, "")
	if ex.Affinity == nil || ex.Affinity.TimeoutSeconds != 300 {
		t.Errorf("explain's affinity %+v, want ClientIP with 300s", ex.Affinity)
	}
}

// TestExplainHairpin: a pod reaching its own Service, whose endpoints are
// itself and backend a. Explain says the packet is masqueraded (hairpin)
// when it goes to the pod itself and keeps its source to a; the pod sees
// the node's bridge address, a sees the pod's own.
func TestExplainHairpin(t *testing.T) {
	c := begin(t)
	svc := c.service("explain", "hairpin", []harness.Port{harness.TCP, harness.UDP}, client, backends[0])
	for _, proto := range []string{"tcp", "udp"} {
		ex := c.holds(fromPod(client), target(svc, 80), proto, shape{verdict: proxier.OutcomeDNAT,
			via: proxier.ViaClusterIP, kind: proxier.FromLocalPod, policy: "Cluster",
			eps: []*harness.Pod{client, backends[0]}}, harness.BridgeIP)
		self := endpointAt(client, false)
		for _, e := range ex.Endpoints {
			isSelf := e.Endpoint == self
			if e.Hairpin != isSelf || e.Masquerade != isSelf {
				t.Errorf("%s: endpoint %s: hairpin %v, masquerade %v; want both %v", proto, e.Endpoint, e.Hairpin, e.Masquerade, isSelf)
			}
		}
	}
}

// ipv6Service makes a single-stack IPv6 NodePort Service with the
// external IP extIP (routed to the node from outside) and the three
// backends at their IPv6 addresses.
func (c *tc) ipv6Service(name, extIP string) *v1.Service {
	c.Helper()
	mustRun(c, env.Ext, "ip", "-6", "route", "replace", extIP+"/128", "via", harness.NodeIP6)
	c.Cleanup(func() { env.Ext.Run(context.Background(), "ip", "-6", "route", "del", extIP+"/128") })
	return c.createIPv6Service(name, v1.ServiceSpec{
		Type:        v1.ServiceTypeNodePort,
		ExternalIPs: []string{extIP},
	})
}

// TestExplainIPv6: on the dual-stack node, an IPv6 Service explained and
// reached at its ClusterIP from a pod (source kept) and at an external IP
// from outside (masqueraded, externalTrafficPolicy Cluster).
func TestExplainIPv6(t *testing.T) {
	c := begin(t)
	const extIP = "fd00:99::50"
	svc := c.ipv6Service("explain-ipv6", extIP)
	for _, tt := range []struct {
		name string
		from origin
		dst  string
		via  proxier.Via
		kind proxier.SourceKind
		masq bool
	}{
		{"clusterip-from-pod", fromPod6(client), hostPort(svc.Spec.ClusterIP, 80), proxier.ViaClusterIP, proxier.FromLocalPod, false},
		{"external-ip-from-outside", fromOutside(harness.GatewayIP6), hostPort(extIP, 80), proxier.ViaExternalIP, proxier.FromOutside, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := begin(t)
			ex := c.holds(tt.from, tt.dst, "tcp", shape{verdict: proxier.OutcomeDNAT, via: tt.via, kind: tt.kind,
				policy: "Cluster", eps: backends, v6: true}, "")
			if ex.Masquerade != tt.masq {
				t.Errorf("explain says masquerade %v, want %v (%s)", ex.Masquerade, tt.masq, ex.MasqueradeReason)
			}
		})
	}
}

// TestExplainIPv6NodePort: the IPv6 NodePort at the node's IPv6 address,
// from outside. This node's Node object has an IPv4 InternalIP only, so
// the IPv6 proxier has no node IP and its NodePorts answer on every local
// address (as kube-proxy's do; TestIPv6 reaches this one): explain must
// say DNAT, masqueraded, as traffic shows.
func TestExplainIPv6NodePort(t *testing.T) {
	c := begin(t)
	svc := c.ipv6Service("explain-ipv6-np", "fd00:99::51")
	out, dst := fromOutside(harness.GatewayIP6), hostPort(harness.NodeIP6, svc.Spec.Ports[0].NodePort)
	// What the kernel does, before explain is asked.
	c.eventually("the IPv6 NodePort answers from outside", func() string {
		return exactly(c.send(out, dst, "tcp", 30, time.Second), backends, "", harness.GatewayIP6)
	})
	ex := c.holds(out, dst, "tcp",
		shape{verdict: proxier.OutcomeDNAT, via: proxier.ViaNodePort, kind: proxier.FromOutside, policy: "Cluster",
			eps: backends, v6: true}, "")
	if !ex.Masquerade {
		t.Errorf("explain says not masqueraded (%s); externalTrafficPolicy Cluster from outside is", ex.MasqueradeReason)
	}
}
