package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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

// debugState is the part of /debug/state TestDebugState reads.
type debugState struct {
	Families []struct {
		IPFamily string `json:"ipFamily"`
		Synced   bool   `json:"synced"`
		State    struct {
			Services []struct {
				Name      debugName `json:"name"`
				ClusterIP string    `json:"clusterIP"`
				Endpoints []struct {
					IP   string `json:"ip"`
					Port int    `json:"port"`
				} `json:"endpoints"`
			} `json:"services"`
		} `json:"state"`
		Plan struct {
			Services []struct {
				Name             debugName `json:"name"`
				Internal         string    `json:"internal"`
				ClusterEndpoints []struct {
					IP   string `json:"ip"`
					Port int    `json:"port"`
				} `json:"clusterEndpoints"`
			} `json:"services"`
		} `json:"plan"`
	} `json:"families"`
}

type debugName struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Port      string `json:"port"`
}

// TestDebugState: /debug/state on the metrics address shows a Service the
// test created, with its ClusterIP and its endpoints, in the IPv4 State and
// as the cluster endpoints of its plan (forwarded); POST is refused; and
// svcproxy_sync_operations has observations of the IPv4 transactions.
func TestDebugState(t *testing.T) {
	c := begin(t)
	svc := c.service("debugstate", "web", []harness.Port{harness.TCP}, backends...)
	var want []string
	for _, p := range backends {
		want = append(want, p.IP+":"+strconv.Itoa(harness.EchoPort))
	}
	slices.Sort(want)

	// The rules are in place; the snapshot is stored once the sync's
	// after-sync steps are done, so it may come a little later.
	var r webInState
	start := time.Now()
	for {
		r = c.readDebugState("debugstate", "web")
		if slices.Equal(r.inPlan, want) || time.Since(start) > 10*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Logf("/debug/state (%d bytes): debugstate/web ClusterIP %s, endpoints in the State %v, in the plan %v (%s)",
		r.size, r.clusterIP, r.inState, r.inPlan, r.verdict)
	c.Logf("/debug/state: debugstate/web's plan: %s", r.plan)
	if !r.synced || r.clusterIP != svc.Spec.ClusterIP || !slices.Equal(r.inState, want) || !slices.Equal(r.inPlan, want) || r.verdict != "forward" {
		c.Errorf("/debug/state: IPv4 synced %v, debugstate/web ClusterIP %s, endpoints %v in the State, %v in the plan, verdict %q; want true, %s, %v, forward",
			r.synced, r.clusterIP, r.inState, r.inPlan, r.verdict, svc.Spec.ClusterIP, want)
	}

	// The sync that programmed it logged one line naming it.
	c.checkSyncLogLine("debugstate/web")

	if code, err := nodePost(c.ctx, "http://"+harness.MetricsAddr+"/debug/state"); err != nil || code != 405 {
		c.Errorf("POST /debug/state: %d %v, want 405", code, err)
	}

	_, metrics, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/metrics")
	if err != nil {
		c.Fatalf("GET /metrics: %v", err)
	}
	n, _ := metricWith(metrics, "svcproxy_sync_operations_count", `ip_family="IPv4"`)
	sum, _ := metricWith(metrics, "svcproxy_sync_operations_sum", `ip_family="IPv4"`)
	c.Logf("svcproxy_sync_operations{IPv4}: %v transactions, %v operations", n, sum)
	if n == 0 || sum < n {
		c.Errorf("svcproxy_sync_operations{IPv4}: count %v, sum %v; want transactions of at least one operation each", n, sum)
	}
}

// nodePost POSTs nothing to url from the node's namespace and returns the
// status.
func nodePost(ctx context.Context, url string) (int, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: env.Node.DialContext, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// webInState is what /debug/state says of one Service's IPv4 port.
type webInState struct {
	size            int
	synced          bool
	clusterIP       string
	verdict         string
	inState, inPlan []string // "ip:port", sorted
	plan            string   // the port's plan as served
}

// readDebugState reads /debug/state and what it says of Service ns/name.
func (c *tc) readDebugState(ns, name string) webInState {
	c.Helper()
	code, body, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/debug/state")
	if err != nil || code != 200 {
		c.Fatalf("GET /debug/state: %d %v", code, err)
	}
	var st debugState
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		c.Fatalf("/debug/state: %v", err)
	}
	var raw struct {
		Families []struct {
			Plan struct {
				Services []json.RawMessage `json:"services"`
			} `json:"plan"`
		} `json:"families"`
	}
	if err := json.Unmarshal([]byte(body), &raw); err != nil {
		c.Fatalf("/debug/state: %v", err)
	}
	r := webInState{size: len(body)}
	for i, f := range st.Families {
		if f.IPFamily != "IPv4" {
			continue
		}
		r.synced = f.Synced
		for _, s := range f.State.Services {
			if s.Name.Namespace == ns && s.Name.Name == name {
				r.clusterIP = s.ClusterIP
				for _, e := range s.Endpoints {
					r.inState = append(r.inState, e.IP+":"+strconv.Itoa(e.Port))
				}
			}
		}
		for j, s := range f.Plan.Services {
			if s.Name.Namespace == ns && s.Name.Name == name {
				r.verdict = s.Internal
				r.plan = string(raw.Families[i].Plan.Services[j])
				for _, e := range s.ClusterEndpoints {
					r.inPlan = append(r.inPlan, e.IP+":"+strconv.Itoa(e.Port))
				}
			}
		}
	}
	slices.Sort(r.inState)
	slices.Sort(r.inPlan)
	return r
}

// checkSyncLogLine checks that svcproxy's log has a "Synced" line of
// IPv4 that names the Service nn among the changed ones, with the keys of
// the per-sync line.
func (c *tc) checkSyncLogLine(nn string) {
	c.Helper()
	// The line follows the snapshot /debug/state showed: wait for it.
	found := ""
	for start := time.Now(); found == "" && time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(env.LogDir, "svcproxy.log"))
		if err != nil {
			c.Fatalf("svcproxy's log: %v", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"Synced"`) && strings.Contains(l, `ipFamily="IPv4"`) && strings.Contains(l, `"`+nn+`"`) {
				found = l
			}
		}
	}
	c.Logf("sync log line: %s", found)
	for _, key := range []string{"duration=", "servicePorts=", "endpoints=", "changedServices=", "changedServiceNames=[",
		"fullRebuild=", "operations=", `result="success"`} {
		if !strings.Contains(found, key) {
			c.Errorf("no Synced line naming %s with %s in svcproxy's log", nn, key)
		}
	}
}
