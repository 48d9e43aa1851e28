package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Service features with real traffic. Endpoints marked as on "node-2" are
// pods on this node's bridge that the EndpointSlice places on another node:
// svcproxy decides locality from the slice alone, so they are remote to it
// while still answering.

const otherNode = "node-2"

// createService creates svc (a Service of the "features" namespace) and
// deletes it and its EndpointSlice when the test ends.
func (c *tc) createService(svc *v1.Service) *v1.Service {
	c.Helper()
	svc.Namespace = "features"
	if err := env.EnsureNamespace(c.ctx, svc.Namespace); err != nil {
		c.Fatal(err)
	}
	if len(svc.Spec.Ports) == 0 {
		svc.Spec.Ports = []v1.ServicePort{{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}}
	}
	created, err := env.Client.CoreV1().Services(svc.Namespace).Create(c.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		c.Fatalf("create Service %s: %v", svc.Name, err)
	}
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteService(ctx, svc.Namespace, svc.Name); err != nil {
			c.Errorf("delete Service %s: %v", svc.Name, err)
		}
	})
	c.Logf("Service %s/%s: ClusterIP %s, NodePort %d, health-check node port %d", created.Namespace, created.Name,
		created.Spec.ClusterIP, created.Spec.Ports[0].NodePort, created.Spec.HealthCheckNodePort)
	return created
}

// slice writes the Service's EndpointSlice.
func (c *tc) slice(svc *v1.Service, eps ...harness.Endpoint) {
	c.Helper()
	if _, err := env.SetEndpointSlice(c.ctx, svc, eps); err != nil {
		c.Fatalf("write EndpointSlice of %s: %v", svc.Name, err)
	}
}

func at(p *harness.Pod, node string) harness.Endpoint {
	return harness.Endpoint{IP: p.IP, NodeName: node}
}

// eventually retries f every 100ms for up to 20s, until it returns ""; then
// fails with f's last complaint.
func (c *tc) eventually(what string, f func() string) time.Duration {
	c.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < 20*time.Second {
		if last = f(); last == "" {
			return c.since(what, start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Fatalf("%s: not within 20s: %s", what, last)
	return 0
}

func (c *tc) external(src, target string, n int, timeout time.Duration) []harness.Reply {
	c.Helper()
	rs, err := env.ExternalConnect(c.ctx, harness.ClientOptions{Proto: "tcp", Target: target, Count: n, Timeout: timeout, SrcIP: src})
	if err != nil {
		c.Fatalf("external client from %s to %s: %v", src, target, err)
	}
	return rs
}

// landed complains unless every reply came from one of pods, seen from
// source (any source but notSource, when source is "").
func landed(rs []harness.Reply, pods []*harness.Pod, source, notSource string) string {
	ok := map[string]bool{}
	for _, p := range pods {
		ok[p.Name] = true
	}
	for _, r := range rs {
		switch {
		case r.Err != "":
			return "error " + r.Err + " (" + harness.FormatTally(harness.Tally(rs)) + ")"
		case !ok[r.Backend]:
			return "reached " + r.Backend + " (" + harness.FormatTally(harness.Tally(rs)) + ")"
		case source != "" && r.SourceIP() != source:
			return fmt.Sprintf("%s saw source %s, want %s", r.Backend, r.SourceIP(), source)
		case notSource != "" && r.SourceIP() == notSource:
			return fmt.Sprintf("%s saw source %s: not masqueraded", r.Backend, r.SourceIP())
		}
	}
	if len(rs) == 0 {
		return "no replies"
	}
	return ""
}

// allReached complains unless each of pods answered at least once.
func allReached(rs []harness.Reply, pods []*harness.Pod) string {
	t := harness.Tally(rs)
	for _, p := range pods {
		if t[p.Name] == 0 {
			return p.Name + " never answered (" + harness.FormatTally(t) + ")"
		}
	}
	return ""
}

func allTimedOut(rs []harness.Reply) string {
	for _, r := range rs {
		if r.Err != "timeout" {
			return "got " + r.Line + ", want a timeout (dropped)"
		}
	}
	return ""
}

func nodePortTarget(svc *v1.Service) string {
	return net.JoinHostPort(harness.NodeIP, strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
}

func TestNodePortFromOutside(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "nodeport"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	var rs []harness.Reply
	c.eventually("NodePort answers from outside", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 30, time.Second)
		if m := landed(rs, backends, "", harness.ExtAllowedIP); m != "" {
			return m
		}
		return allReached(rs, backends)
	})
	t.Logf("RESULT NodePort (externalTrafficPolicy Cluster) from %s: %s, sources seen %s (masqueraded)",
		harness.ExtAllowedIP, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

func TestExternalTrafficPolicyLocal(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	const lbIP = "10.99.0.100"
	if err := env.RouteToNode(c.ctx, lbIP); err != nil {
		t.Fatal(err)
	}
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "etp-local"}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal}})
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}}
	svc, err := env.Client.CoreV1().Services(svc.Namespace).UpdateStatus(c.ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	lbTarget := net.JoinHostPort(lbIP, "80")

	// External traffic: only the local endpoint, with the client's source.
	for _, target := range []string{nodePortTarget(svc), lbTarget} {
		var rs []harness.Reply
		c.eventually("externalTrafficPolicy Local via "+target, func() string {
			rs = c.external(harness.ExtAllowedIP, target, 20, time.Second)
			return landed(rs, []*harness.Pod{a}, harness.ExtAllowedIP, "")
		})
		t.Logf("RESULT ETP Local, external client to %s: %s, source seen %s (not masqueraded)", target, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
	}
	// Pod traffic to the load-balancer IP is short-circuited to all endpoints.
	rs := c.connect(client, harness.ClientOptions{Proto: "tcp", Target: lbTarget, Count: 30})
	if m := landed(rs, backends, client.IP, ""); m != "" {
		t.Errorf("pod to LB IP: %s", m)
	}
	if m := allReached(rs, backends); m != "" {
		t.Errorf("pod to LB IP: %s", m)
	}
	t.Logf("RESULT ETP Local, pod to the LB IP: %s (all endpoints), source %s", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	// Node-originated traffic to the LB IP goes to every endpoint,
	// masqueraded (the node's own address would not route back).
	rs = c.connectFrom(env.Node, lbTarget, 30, time.Second)
	if m := landed(rs, backends, "", harness.NodeIP); m != "" {
		t.Errorf("node to LB IP: %s", m)
	}
	if m := allReached(rs, backends); m != "" {
		t.Errorf("node to LB IP: %s", m)
	}
	t.Logf("RESULT ETP Local, node to the LB IP: %s, seen from %s (masqueraded)", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	// Health-check node port: 200 with one local endpoint.
	hc := fmt.Sprintf("http://%s:%d/", harness.NodeIP, svc.Spec.HealthCheckNodePort)
	c.eventually("health check reports 1 local endpoint", func() string {
		code, body, err := env.NodeHTTPGet(c.ctx, hc)
		if err != nil {
			return err.Error()
		}
		var got struct {
			Service             struct{ Namespace, Name string }
			LocalEndpoints      int  `json:"localEndpoints"`
			ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			return fmt.Sprintf("%d %q: %v", code, body, err)
		}
		if code != 200 || got.LocalEndpoints != 1 || !got.ServiceProxyHealthy || got.Service.Name != svc.Name || got.Service.Namespace != svc.Namespace {
			return fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
		}
		t.Logf("RESULT health check %s: %d %s", hc, code, strings.TrimSpace(body))
		return ""
	})

	// No local endpoint: external traffic is dropped, the health check 503.
	c.slice(svc, at(b, otherNode), at(cc, otherNode))
	c.eventually("health check reports no local endpoint", func() string {
		code, body, err := env.NodeHTTPGet(c.ctx, hc)
		if err != nil {
			return err.Error()
		}
		var got struct {
			LocalEndpoints *int `json:"localEndpoints"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil || code != 503 || got.LocalEndpoints == nil || *got.LocalEndpoints != 0 {
			return fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
		}
		t.Logf("RESULT health check without local endpoints: %d %s", code, strings.TrimSpace(body))
		return ""
	})
	c.eventually("external traffic dropped without local endpoints", func() string {
		return allTimedOut(c.external(harness.ExtAllowedIP, nodePortTarget(svc), 2, 500*time.Millisecond))
	})
	// Pods still reach the remote endpoints.
	rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: lbTarget, Count: 20})
	if m := landed(rs, []*harness.Pod{b, cc}, client.IP, ""); m != "" {
		t.Errorf("pod to LB IP without local endpoints: %s", m)
	}
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	const lbIP = "10.99.0.101"
	if err := env.RouteToNode(c.ctx, lbIP); err != nil {
		t.Fatal(err)
	}
	const proxyIP = "10.99.0.102" // ipMode Proxy: the load balancer proxies, svcproxy ignores it
	if err := env.RouteToNode(c.ctx, proxyIP); err != nil {
		t.Fatal(err)
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "source-ranges"}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, LoadBalancerSourceRanges: []string{"203.0.113.0/24", harness.NodeIP + "/32"}}})
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: lbIP}, {IP: proxyIP, IPMode: ptr.To(v1.LoadBalancerIPModeProxy)}}
	svc, err := env.Client.CoreV1().Services(svc.Namespace).UpdateStatus(c.ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], otherNode))
	lbTarget := net.JoinHostPort(lbIP, "80")
	var rs []harness.Reply
	c.eventually("allowed source reaches the LB IP", func() string {
		rs = c.external(harness.ExtAllowedIP, lbTarget, 10, time.Second)
		return landed(rs, backends[:2], "", "")
	})
	t.Logf("RESULT LB IP from allowed %s: %s", harness.ExtAllowedIP, harness.FormatTally(harness.Tally(rs)))
	rs = c.external(harness.ExtBlockedIP, lbTarget, 3, time.Second)
	if m := allTimedOut(rs); m != "" {
		t.Errorf("blocked source to the LB IP: %s", m)
	}
	t.Logf("RESULT LB IP from blocked %s: %s", harness.ExtBlockedIP, harness.FormatTally(harness.Tally(rs)))
	rs = c.external(harness.ExtBlockedIP, nodePortTarget(svc), 10, time.Second)
	if m := landed(rs, backends[:2], "", ""); m != "" {
		t.Errorf("blocked source to the NodePort (not subject to the ranges): %s", m)
	}
	t.Logf("RESULT NodePort of that Service from blocked %s: %s", harness.ExtBlockedIP, harness.FormatTally(harness.Tally(rs)))
	// The node's own IP is in the ranges: the node reaches the LB IP.
	rs = c.connectFrom(env.Node, lbTarget, 5, time.Second)
	if m := landed(rs, backends[:2], "", ""); m != "" {
		t.Errorf("node (its IP in the ranges) to the LB IP: %s", m)
	}
	t.Logf("RESULT node to the LB IP (node IP in the ranges): %s", harness.FormatTally(harness.Tally(rs)))
	// The node is let through by its node IP only (kube-proxy's nodeIPs),
	// not by any local address: with the pod bridge's address in the
	// ranges but not the node IP, the node is refused. Seen with the LB IP
	// on the node itself, as VIP-style load balancers do: the node then
	// reaches it from the LB IP, which only the node rule lets through.
	const localLBIP = "10.99.0.103"
	if out, err := env.Node.Run(c.ctx, "ip", "addr", "add", localLBIP+"/32", "dev", "lo"); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	t.Cleanup(func() { env.Node.Run(context.Background(), "ip", "addr", "del", localLBIP+"/32", "dev", "lo") })
	for _, tr := range []struct {
		name, rangeIP string
		allowed       bool
	}{{"bridge-range", harness.BridgeIP, false}, {"node-range", harness.NodeIP, true}} {
		s2 := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "source-ranges-" + tr.name}, Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, LoadBalancerSourceRanges: []string{"203.0.113.0/24", tr.rangeIP + "/32"}}})
		s2.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: localLBIP}}
		if s2, err = env.Client.CoreV1().Services(s2.Namespace).UpdateStatus(c.ctx, s2, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.slice(s2, at(backends[0], harness.NodeName))
		target := net.JoinHostPort(localLBIP, "80")
		if tr.allowed {
			c.eventually("node reaches its own LB IP (node IP in the ranges)", func() string {
				rs = c.connectFrom(env.Node, target, 3, time.Second)
				return landed(rs, backends[:1], "", "")
			})
		} else {
			// The Service is programmed (its ClusterIP answers) before the
			// LB IP is tried.
			c.eventually("ClusterIP of "+s2.Name+" works", func() string {
				return landed(c.connect(client, harness.ClientOptions{Target: net.JoinHostPort(s2.Spec.ClusterIP, "80"), Count: 2}), backends[:1], client.IP, "")
			})
			rs = c.connectFrom(env.Node, target, 3, time.Second)
			if m := allTimedOut(rs); m != "" {
				t.Errorf("node to its own LB IP with only the bridge address %s in the ranges (not a node IP): %s", harness.BridgeIP, m)
			}
		}
		t.Logf("RESULT node to its own LB IP, ranges hold %s (%s): %s", tr.rangeIP, tr.name, harness.FormatTally(harness.Tally(rs)))
		if err := env.Client.CoreV1().Services(s2.Namespace).Delete(c.ctx, s2.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// An ingress IP with ipMode Proxy is not programmed.
	rs = c.external(harness.ExtAllowedIP, net.JoinHostPort(proxyIP, "80"), 2, 500*time.Millisecond)
	for _, r := range rs {
		if r.Err == "" {
			t.Errorf("ipMode Proxy ingress IP %s was served: %s", proxyIP, r.Line)
		}
	}
	t.Logf("RESULT ipMode Proxy ingress IP from outside: %s (not programmed)", harness.FormatTally(harness.Tally(rs)))
}

func TestExternalIPs(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	const extIP = "10.99.0.50"
	if err := env.RouteToNode(c.ctx, extIP); err != nil {
		t.Fatal(err)
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "external-ip"}, Spec: v1.ServiceSpec{ExternalIPs: []string{extIP}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], otherNode), at(backends[2], otherNode))
	var rs []harness.Reply
	c.eventually("external IP answers from outside", func() string {
		rs = c.external(harness.ExtAllowedIP, net.JoinHostPort(extIP, "80"), 30, time.Second)
		if m := landed(rs, backends, "", harness.ExtAllowedIP); m != "" {
			return m
		}
		return allReached(rs, backends)
	})
	t.Logf("RESULT external IP from outside: %s, source %s (masqueraded)", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	c := begin(t, true)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "itp-local"}, Spec: v1.ServiceSpec{
		InternalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyLocal)}})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("internalTrafficPolicy Local: local endpoint only", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 20})
		return landed(rs, []*harness.Pod{a}, client.IP, "")
	})
	t.Logf("RESULT ITP Local: %s", harness.FormatTally(harness.Tally(rs)))
	c.slice(svc, at(b, otherNode), at(cc, otherNode))
	c.eventually("internalTrafficPolicy Local without local endpoints: dropped", func() string {
		return allTimedOut(c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 2, Timeout: 500 * time.Millisecond}))
	})
}

func TestSessionAffinity(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity"}, Spec: v1.ServiceSpec{
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], otherNode))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("ClientIP affinity: one endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		if m := landed(rs, backends, client.IP, ""); m != "" {
			return m
		}
		if len(harness.Tally(rs)) != 1 {
			return "spread over " + harness.FormatTally(harness.Tally(rs))
		}
		return ""
	})
	t.Logf("RESULT session affinity ClientIP: 30 connections, %s", harness.FormatTally(harness.Tally(rs)))
}

func TestTerminatingFallback(t *testing.T) {
	c := begin(t, true)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "terminating"}})
	c.slice(svc,
		harness.Endpoint{IP: a.IP, NotReady: true},
		harness.Endpoint{IP: b.IP, Terminating: true},
		harness.Endpoint{IP: cc.IP, Terminating: true})
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("serving terminating endpoints take the traffic", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		if m := landed(rs, []*harness.Pod{b, cc}, client.IP, ""); m != "" {
			return m
		}
		return allReached(rs, []*harness.Pod{b, cc})
	})
	t.Logf("RESULT no ready endpoint, b and c serving+terminating, a not serving: %s", harness.FormatTally(harness.Tally(rs)))
	// A ready endpoint takes over from the terminating ones.
	c.slice(svc, harness.Endpoint{IP: a.IP}, harness.Endpoint{IP: b.IP, Terminating: true})
	c.eventually("a ready endpoint is preferred", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 20})
		return landed(rs, []*harness.Pod{a}, client.IP, "")
	})
}

// TestConntrackUDP: a UDP client sending from a fixed source port is pinned
// to one endpoint by conntrack; when that endpoint leaves the EndpointSlice
// (its server still running), the stale entry is deleted and the next
// datagrams reach another endpoint.
func TestConntrackUDP(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "conntrack-udp"}, Spec: v1.ServiceSpec{
		Ports: []v1.ServicePort{{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: intstr.FromInt32(harness.EchoPort)}}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], harness.NodeName))
	c.waitDNATs(svc, "udp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	opts := harness.ClientOptions{Proto: "udp", Target: target, Count: 5, SrcPort: 40123, Interval: 20 * time.Millisecond}
	rs := c.connect(client, opts)
	if m := landed(rs, backends, client.IP, ""); m != "" {
		t.Fatalf("before: %s", m)
	}
	pinned := rs[0].Backend
	if len(harness.Tally(rs)) != 1 {
		t.Fatalf("datagrams from one source port spread over %s; conntrack should pin them", harness.FormatTally(harness.Tally(rs)))
	}
	before := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total")
	var rest []*harness.Pod
	var eps []harness.Endpoint
	for _, p := range backends {
		if p.Name != pinned {
			rest = append(rest, p)
			eps = append(eps, at(p, harness.NodeName))
		}
	}
	c.slice(svc, eps...)
	c.waitDNATs(svc, "udp", rest...)
	var after []harness.Reply
	c.eventually("datagrams leave the removed endpoint", func() string {
		after = c.connect(client, opts)
		return landed(after, rest, client.IP, "")
	})
	deleted := metricValue(c, "kubeproxy_conntrack_reconciler_deleted_entries_total") - before
	t.Logf("RESULT UDP from port %d pinned to %s; after %s left the slice: %s; conntrack entries deleted: %v",
		opts.SrcPort, pinned, pinned, harness.FormatTally(harness.Tally(after)), deleted)
	if deleted < 1 {
		t.Errorf("kubeproxy_conntrack_reconciler_deleted_entries_total grew by %v, want >= 1", deleted)
	}
}

func metricValue(c *tc, name string) float64 {
	c.Helper()
	_, body, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/metrics")
	if err != nil {
		c.Fatal(err)
	}
	v, _ := harness.MetricValue(body, name)
	return v
}
