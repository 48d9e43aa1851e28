package e2e

import (
	"net"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestTwoNodes: a Service with one endpoint on this node and one on the
// second node (a routed pod subnet). From a pod, both are reached with the
// pod's own source; from outside through the NodePort both are reached,
// masqueraded; with externalTrafficPolicy Local only the local one is, with
// the client's source.
func TestTwoNodes(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	remote, err := env.AddRemotePod(c.ctx, "remote")
	if err != nil {
		t.Fatalf("remote pod: %v", err)
	}
	local := backends[0]
	both := []*harness.Pod{local, remote}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "two-nodes"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	c.slice(svc, at(local, harness.NodeName), at(remote, harness.Node2Name))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("pod reaches the local and the remote endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 30})
		if m := landed(rs, both, client.IP, ""); m != "" {
			return m
		}
		return allReached(rs, both)
	})
	t.Logf("RESULT pod %s to ClusterIP, endpoints on node-1 and node-2: %s, source kept", client.IP, harness.FormatTally(harness.Tally(rs)))
	c.eventually("outside client reaches both through the NodePort", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 30, time.Second)
		if m := landed(rs, both, "", harness.ExtAllowedIP); m != "" {
			return m
		}
		return allReached(rs, both)
	})
	sources := map[string]bool{}
	for _, r := range rs {
		sources[r.Backend+" saw "+r.SourceIP()] = true
	}
	t.Logf("RESULT outside %s to NodePort: %s, masqueraded (%v)", harness.ExtAllowedIP, harness.FormatTally(harness.Tally(rs)), sources)

	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	if _, err := env.Client.CoreV1().Services(svc.Namespace).Update(c.ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.eventually("externalTrafficPolicy Local: only the local endpoint", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 20, time.Second)
		return landed(rs, []*harness.Pod{local}, harness.ExtAllowedIP, "")
	})
	t.Logf("RESULT ETP Local, outside to NodePort: %s, source %s", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}
