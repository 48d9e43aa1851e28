package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestMetricsAndHealthz: after a sync triggered by an EndpointSlice change,
// /metrics (kube-proxy's names) has samples of
// kubeproxy_sync_proxy_rules_duration_seconds and
// kubeproxy_network_programming_duration_seconds, and of the rest of
// kube-proxy's metrics of the mode (none of the other mode's), and
// /healthz and /livez answer 200 on both addresses. The metrics address
// also serves kube-proxy's /proxyMode, /configz and /flagz.
func TestMetricsAndHealthz(t *testing.T) {
	c := begin(t)
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
	c.checkModeMetrics(body)
	if c.Failed() {
		c.Logf("/metrics:\n%s", kubeproxyLines(body))
	}

	for _, url := range []string{harness.HealthzAddr + "/healthz", harness.HealthzAddr + "/livez",
		harness.MetricsAddr + "/healthz", harness.MetricsAddr + "/livez"} {
		code, b, err := env.NodeHTTPGet(c.ctx, "http://"+url)
		if err != nil {
			c.Errorf("GET %s: %v", url, err)
			continue
		}
		c.Logf("GET %s: %d %s", url, code, strings.TrimSpace(b))
		if code != 200 {
			c.Errorf("GET %s: status %d, want 200", url, code)
		}
	}
	c.checkMetricsURLs()
}

// checkModeMetrics checks that body has samples of kube-proxy's metrics
// of the mode and of client-go's, and none of the other mode's.
func (c *tc) checkModeMetrics(body string) {
	c.Helper()
	want := []string{
		"kubeproxy_sync_full_proxy_rules_duration_seconds_count",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds_count",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total",
		"kubeproxy_conntrack_reconciler_sync_duration_seconds_count",
		"kubeproxy_conntrack_reconciler_deleted_entries_total",
		"rest_client_requests_total",
		"rest_client_request_duration_seconds_count",
		"go_goroutines",
		"process_start_time_seconds",
	}
	iptables := []string{
		"kubeproxy_sync_proxy_rules_iptables_total",
		"kubeproxy_sync_proxy_rules_iptables_last",
		"kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
		"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
	}
	nftables := []string{
		"kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
		"svcproxy_nftables_elements",
	}
	other := nftables
	if env.ProxyMode == "nftables" {
		want, other = append(want, nftables...), iptables
	} else {
		want = append(want, iptables...)
	}
	for _, name := range want {
		if _, ok := harness.MetricValue(body, name); !ok {
			c.Errorf("%s mode: /metrics has no sample of %s", env.ProxyMode, name)
		}
	}
	for _, name := range other {
		if _, ok := harness.MetricValue(body, name); ok {
			c.Errorf("%s mode: /metrics has %s", env.ProxyMode, name)
		}
	}
	if env.ProxyMode == "iptables" {
		nat, _ := metricWith(body, "kubeproxy_sync_proxy_rules_iptables_total", `ip_family="IPv4",table="nat"`)
		c.Logf("kubeproxy_sync_proxy_rules_iptables_total{table=nat,IPv4}=%v", nat)
		if nat == 0 {
			c.Errorf("no IPv4 nat rules counted")
		}
	} else {
		elems, _ := harness.MetricValue(body, "svcproxy_nftables_elements")
		c.Logf("svcproxy_nftables_elements=%v", elems)
		if elems == 0 {
			c.Errorf("no nftables elements counted")
		}
	}
}

// metricWith is the value of name's sample with exactly labels (as
// written in the exposition).
func metricWith(body, name, labels string) (float64, bool) {
	return harness.MetricValue(body, name+"{"+labels+"}")
}

// checkMetricsURLs reads kube-proxy's other URLs on the metrics address.
func (c *tc) checkMetricsURLs() {
	c.Helper()
	get := func(path string) string {
		code, b, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+path)
		if err != nil || code != 200 {
			c.Errorf("GET %s: %d %v", path, code, err)
		}
		return b
	}
	if mode := get("/proxyMode"); mode != env.ProxyMode {
		c.Errorf("/proxyMode = %q, want %q", mode, env.ProxyMode)
	}
	var cz map[string]struct {
		Kind               string `json:"kind"`
		Mode               string `json:"mode"`
		HostnameOverride   string `json:"hostnameOverride"`
		MetricsBindAddress string `json:"metricsBindAddress"`
	}
	b := get("/configz")
	if err := json.Unmarshal([]byte(b), &cz); err != nil {
		c.Errorf("/configz: %v: %s", err, b)
	}
	cfg := cz["kubeproxy.config.k8s.io"]
	c.Logf("/configz: kind %s, mode %s, hostnameOverride %s, metricsBindAddress %s", cfg.Kind, cfg.Mode, cfg.HostnameOverride, cfg.MetricsBindAddress)
	if cfg.Kind != "KubeProxyConfiguration" || cfg.Mode != env.ProxyMode || cfg.HostnameOverride != harness.NodeName || cfg.MetricsBindAddress != harness.MetricsAddr {
		c.Errorf("/configz: %s", b)
	}
	flagz := get("/flagz")
	mode := ""
	for _, l := range strings.Split(flagz, "\n") {
		if v, ok := strings.CutPrefix(l, "proxy-mode"); ok {
			mode = strings.TrimLeft(v, ":= ")
		}
	}
	c.Logf("/flagz: proxy-mode %q", mode)
	if !strings.HasPrefix(flagz, "\nsvcproxy flagz\nWarning: ") || mode != env.ProxyMode {
		c.Errorf("/flagz:\n%s", flagz)
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
