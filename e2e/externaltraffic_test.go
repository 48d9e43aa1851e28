package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Traffic to external IPs and load-balancer IPs: source ranges,
// externalTrafficPolicy Local and its health check.

func TestExternalIPs(t *testing.T) {
	c := begin(t)
	const extIP = "10.99.0.50"
	c.routeToNode(extIP)
	svc := c.createService("external-ip", v1.ServiceSpec{ExternalIPs: []string{extIP}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], otherNode), at(backends[2], otherNode))
	var rs []harness.Reply
	c.eventually("external IP answers from outside", func() string {
		rs = c.external(harness.ExtAllowedIP, net.JoinHostPort(extIP, "80"), 30, time.Second)
		return exactly(rs, backends, "", harness.ExtAllowedIP)
	})
	t.Logf("RESULT external IP from outside: %s, source %s (masqueraded)", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	c := begin(t)
	const lbIP = "10.99.0.101"
	const proxyIP = "10.99.0.102" // ipMode Proxy: the load balancer proxies, svcproxy ignores it
	c.routeToNode(lbIP, proxyIP)
	svc := c.createService("source-ranges", v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, LoadBalancerSourceRanges: []string{"203.0.113.0/24", harness.NodeIP + "/32"}})
	svc = c.setIngress(svc, v1.LoadBalancerIngress{IP: lbIP}, v1.LoadBalancerIngress{IP: proxyIP, IPMode: ptr.To(v1.LoadBalancerIPModeProxy)})
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
	mustRun(c, env.Node, "ip", "addr", "add", localLBIP+"/32", "dev", "lo")
	t.Cleanup(func() { env.Node.Run(context.Background(), "ip", "addr", "del", localLBIP+"/32", "dev", "lo") })
	for _, tr := range []struct {
		name, rangeIP string
		allowed       bool
	}{{"bridge-range", harness.BridgeIP, false}, {"node-range", harness.NodeIP, true}} {
		s2 := c.createService("source-ranges-"+tr.name, v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, LoadBalancerSourceRanges: []string{"203.0.113.0/24", tr.rangeIP + "/32"}})
		s2 = c.setIngress(s2, v1.LoadBalancerIngress{IP: localLBIP})
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

func TestExternalTrafficPolicyLocal(t *testing.T) {
	c := begin(t)
	const lbIP = "10.99.0.100"
	c.routeToNode(lbIP)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService("etp-local", v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal})
	svc = c.setIngress(svc, v1.LoadBalancerIngress{IP: lbIP})
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
	if m := exactly(rs, backends, client.IP, ""); m != "" {
		t.Errorf("pod to LB IP: %s", m)
	}
	t.Logf("RESULT ETP Local, pod to the LB IP: %s (all endpoints), source %s", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	// Node-originated traffic to the LB IP goes to every endpoint,
	// masqueraded (the node's own address would not route back).
	rs = c.connectFrom(env.Node, lbTarget, 30, time.Second)
	if m := exactly(rs, backends, "", harness.NodeIP); m != "" {
		t.Errorf("node to LB IP: %s", m)
	}
	t.Logf("RESULT ETP Local, node to the LB IP: %s, seen from %s (masqueraded)", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	// Health-check node port: 200 with one local endpoint.
	c.waitHealthCheck("health check reports 1 local endpoint", svc, 200, 1)

	// No local endpoint: external traffic is dropped, the health check 503.
	c.slice(svc, at(b, otherNode), at(cc, otherNode))
	c.waitHealthCheck("health check reports no local endpoint", svc, 503, 0)
	c.eventually("external traffic dropped without local endpoints", func() string {
		return allTimedOut(c.external(harness.ExtAllowedIP, nodePortTarget(svc), 2, 500*time.Millisecond))
	})
	// Pods still reach the remote endpoints.
	rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: lbTarget, Count: 20})
	if m := landed(rs, []*harness.Pod{b, cc}, client.IP, ""); m != "" {
		t.Errorf("pod to LB IP without local endpoints: %s", m)
	}
}

// TestETPLocalTerminatingFallback: under externalTrafficPolicy Local the
// local set falls back to local serving-terminating endpoints separately
// from the cluster set (kube-proxy's CategorizeEndpoints). With the only
// local endpoint serving+terminating and the remote ones ready, external
// traffic still reaches the local terminating endpoint (source kept),
// while pod traffic to the ClusterIP goes to the ready remote endpoints
// only. The health check counts only local ready endpoints (503).
func TestETPLocalTerminatingFallback(t *testing.T) {
	c := begin(t)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService("etp-local-term", v1.ServiceSpec{
		Type: v1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal})
	c.slice(svc,
		harness.Endpoint{IP: a.IP, NodeName: harness.NodeName, Terminating: true},
		at(b, otherNode), at(cc, otherNode))
	var rs []harness.Reply
	c.eventually("external traffic reaches the local serving-terminating endpoint", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 20, time.Second)
		return landed(rs, []*harness.Pod{a}, harness.ExtAllowedIP, "")
	})
	t.Logf("RESULT ETP Local, only local endpoint serving+terminating, remote ready: external to NodePort %s, source %s (not masqueraded)",
		harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	// The cluster set has ready endpoints: the terminating one is not used.
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	rs = c.connect(client, harness.ClientOptions{Target: clusterIP, Count: 30})
	if m := exactly(rs, []*harness.Pod{b, cc}, client.IP, ""); m != "" {
		t.Errorf("pod to ClusterIP: want only the ready remote endpoints b and c: %s", m)
	}
	t.Logf("RESULT same Service, pod to ClusterIP: %s (ready endpoints only)", harness.FormatTally(harness.Tally(rs)))
	// Pods and the node itself reaching the NodePort are short-circuited to
	// the cluster set (kube-proxy's EXT chain: pod traffic and LOCAL
	// traffic go to KUBE-SVC), so not to the terminating endpoint either.
	rs = c.connect(client, harness.ClientOptions{Target: nodePortTarget(svc), Count: 30})
	if m := exactly(rs, []*harness.Pod{b, cc}, "", ""); m != "" {
		t.Errorf("pod to NodePort: want the cluster set b and c: %s", m)
	}
	rs2 := c.connectFrom(env.Node, nodePortTarget(svc), 30, time.Second)
	if m := exactly(rs2, []*harness.Pod{b, cc}, "", ""); m != "" {
		t.Errorf("node to NodePort: want the cluster set b and c: %s", m)
	}
	t.Logf("RESULT same Service, pod to NodePort: %s; node to NodePort: %s (short-circuited to the cluster set)",
		harness.FormatTally(harness.Tally(rs)), harness.FormatTally(harness.Tally(rs2)))

	// Health check: a terminating endpoint is not a local ready one.
	c.waitHealthCheck("health check counts no local ready endpoint", svc, 503, 0)

	// The fallback is to serving endpoints only: once the local one stops
	// serving, external traffic is dropped; pods still reach b and c.
	c.slice(svc,
		harness.Endpoint{IP: a.IP, NodeName: harness.NodeName, Terminating: true, NotReady: true},
		at(b, otherNode), at(cc, otherNode))
	c.eventually("external traffic dropped when the local endpoint stops serving", func() string {
		return allTimedOut(c.external(harness.ExtAllowedIP, nodePortTarget(svc), 2, 500*time.Millisecond))
	})
	rs = c.connect(client, harness.ClientOptions{Target: clusterIP, Count: 20})
	if m := exactly(rs, []*harness.Pod{b, cc}, client.IP, ""); m != "" {
		t.Errorf("pod to ClusterIP after the local endpoint stopped serving: %s", m)
	}
	t.Logf("RESULT local endpoint terminating and not serving: external traffic dropped, pods %s", harness.FormatTally(harness.Tally(rs)))
}
