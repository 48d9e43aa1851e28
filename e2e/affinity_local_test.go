package e2e

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestSessionAffinityExternalLocal: ClientIP affinity under
// externalTrafficPolicy Local sticks to a local endpoint, and an outside
// client pinned earlier (under policy Cluster) to an endpoint on the other
// node is not sent there once the policy is Local (kube-proxy checks only
// the local endpoints' recent lists in KUBE-SVL).
func TestSessionAffinityExternalLocal(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	remote, err := env.AddRemotePod(c.ctx, "remote-aff")
	if err != nil {
		t.Fatalf("remote pod: %v", err)
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity-ext-local"}, Spec: v1.ServiceSpec{
		Type:                  v1.ServiceTypeNodePort,
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}}})
	// Only the remote endpoint at first: the outside client is pinned to it.
	c.slice(svc, at(remote, harness.Node2Name))
	var rs []harness.Reply
	c.eventually("outside client pinned to the remote endpoint", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 5, time.Second)
		return landed(rs, []*harness.Pod{remote}, "", "")
	})
	locals := []*harness.Pod{backends[0], backends[1]}
	c.slice(svc, at(remote, harness.Node2Name), at(locals[0], harness.NodeName), at(locals[1], harness.NodeName))
	c.waitDNATs(svc, "tcp", remote, locals[0], locals[1])
	// Still pinned to the remote endpoint under policy Cluster.
	rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
	if m := landed(rs, []*harness.Pod{remote}, "", ""); m != "" {
		t.Fatalf("policy Cluster, endpoints added: %s (want still pinned to the remote endpoint)", m)
	}
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	if _, err := env.Client.CoreV1().Services(svc.Namespace).Update(c.ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.eventually("policy Local: a local endpoint, the client's source kept, and pinned", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
		if m := landed(rs, locals, harness.ExtAllowedIP, ""); m != "" {
			return m
		}
		if only(rs) == "" {
			return "spread over " + harness.FormatTally(harness.Tally(rs))
		}
		return ""
	})
	t.Logf("RESULT affinity, outside client through the NodePort: pinned to %s under policy Cluster; under Local pinned to %s", remote.Name, harness.FormatTally(harness.Tally(rs)))
}
