package e2e

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestSessionAffinityFollowsEndpoints: a client pinned by ClientIP
// affinity to an endpoint that leaves the EndpointSlice (its server still
// running) is balanced to the remaining endpoints at once, not sent on to
// the removed one until the affinity times out; its new pin then survives a
// restart of svcproxy.
func TestSessionAffinityFollowsEndpoints(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "affinity-follows"}, Spec: v1.ServiceSpec{
		SessionAffinity:       v1.ServiceAffinityClientIP,
		SessionAffinityConfig: &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](900)}}}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName), at(backends[2], harness.NodeName))
	c.waitDNATs(svc, "tcp", backends...)
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	pinned := func(what string) string {
		var pod string
		c.eventually(what, func() string {
			rs := c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
			// Every attempt answered by a backend (a refusal is no pin).
			if m := landed(rs, backends, client.IP, ""); m != "" {
				return m
			}
			tally := harness.Tally(rs)
			if len(tally) != 1 || len(rs) != 10 {
				return "spread over " + harness.FormatTally(tally)
			}
			for p := range tally {
				pod = p
			}
			return ""
		})
		return pod
	}
	first := pinned("pinned to one endpoint")
	var rest []harness.Endpoint
	var restPods []*harness.Pod
	for _, p := range backends {
		if p.Name != first {
			rest = append(rest, at(p, harness.NodeName))
			restPods = append(restPods, p)
		}
	}
	c.slice(svc, rest...)
	var rs []harness.Reply
	took := c.eventually("the pin follows the endpoints", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
		if m := landed(rs, restPods, client.IP, ""); m != "" {
			return m
		}
		if len(harness.Tally(rs)) != 1 {
			return "spread over " + harness.FormatTally(harness.Tally(rs))
		}
		return ""
	})
	second := pinned("pinned again")
	t.Logf("RESULT affinity: pinned to %s; after %s left the slice, pinned to %s within %v of the API write", first, first, second, took.Round(time.Millisecond))

	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Fatalf("stop svcproxy: %v", err)
	}
	if _, err := env.StartSvcproxy(c.ctx); err != nil {
		t.Fatalf("start svcproxy: %v", err)
	}
	if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if env.ProxyMode == "nftables" {
		// The restart's full sync replaced the table: the entry must have
		// been carried over, not recreated by the next connection.
		out, err := env.Node.Run(c.ctx, "nft", "list", "map", "ip", "svcproxy", "affinity-tcp-900")
		if err != nil || !strings.Contains(out, client.IP+" . "+svc.Spec.ClusterIP+" . 80") {
			t.Fatalf("after the restart the affinity map has no entry for %s: %v\n%s", client.IP, err, out)
		}
	}
	rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
	if tally := harness.Tally(rs); len(rs) != 10 || tally[second] != 10 {
		t.Fatalf("after a restart of svcproxy: %s, want all 10 on %s", harness.FormatTally(tally), second)
	}
	t.Logf("RESULT affinity survives a restart of svcproxy: 10 of 10 still on %s", second)
}
