package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestMetricsAndHealthz: after a sync triggered by an EndpointSlice change,
// /metrics (kube-proxy's names) has samples of
// kubeproxy_sync_proxy_rules_duration_seconds and
// kubeproxy_network_programming_duration_seconds, and /healthz and /livez
// answer 200.
func TestMetricsAndHealthz(t *testing.T) {
	c := begin(t, true)
	c.service("metrics", "web", []harness.Port{harness.TCP}, backends...)

	start := time.Now()
	var body string
	var sync, prog float64
	for {
		code, b, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/metrics")
		if err != nil || code != 200 {
			t.Fatalf("GET /metrics: %d %v", code, err)
		}
		body = b
		sync, _ = harness.MetricValue(body, "kubeproxy_sync_proxy_rules_duration_seconds_count")
		prog, _ = harness.MetricValue(body, "kubeproxy_network_programming_duration_seconds_count")
		if sync > 0 && prog > 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.since("metrics show the sync", start)
	c.Logf("kubeproxy_sync_proxy_rules_duration_seconds_count=%v kubeproxy_network_programming_duration_seconds_count=%v", sync, prog)
	for _, name := range []string{
		"kubeproxy_sync_proxy_rules_duration_seconds_bucket",
		"kubeproxy_sync_proxy_rules_duration_seconds_count",
		"kubeproxy_network_programming_duration_seconds_bucket",
		"kubeproxy_network_programming_duration_seconds_count",
	} {
		if _, ok := harness.MetricValue(body, name); !ok {
			c.Errorf("/metrics has no sample of %s", name)
		}
	}
	if sync == 0 {
		c.Errorf("kubeproxy_sync_proxy_rules_duration_seconds_count is 0 after a sync")
	}
	if prog == 0 {
		c.Errorf("kubeproxy_network_programming_duration_seconds_count is 0 after an EndpointSlice change with %s", "endpoints.kubernetes.io/last-change-trigger-time")
	}
	if c.Failed() {
		c.Logf("/metrics:\n%s", kubeproxyLines(body))
	}

	for _, path := range []string{"/healthz", "/livez"} {
		code, b, err := env.NodeHTTPGet(c.ctx, "http://"+harness.HealthzAddr+path)
		if err != nil {
			c.Errorf("GET %s: %v", path, err)
			continue
		}
		c.Logf("GET %s: %d %s", path, code, strings.TrimSpace(b))
		if code != 200 {
			c.Errorf("GET %s: status %d, want 200", path, code)
		}
	}
}

func kubeproxyLines(body string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, "kubeproxy_") || strings.Contains(l, "svcproxy_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
