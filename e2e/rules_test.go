package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Helpers that read what svcproxy put in the node: its iptables rules and
// nftables table, conntrack entries and metrics.

// waitDNATs waits until the nat table sends the Service port to exactly
// pods (at the echo port) and returns how long that took.
func (c *tc) waitDNATs(svc *v1.Service, port string, pods ...*harness.Pod) time.Duration {
	c.Helper()
	start := time.Now()
	want := make([]string, len(pods))
	for i, p := range pods {
		want[i] = net.JoinHostPort(p.IP, strconv.Itoa(harness.EchoPort))
	}
	if _, err := env.WaitForServiceDNATs(c.ctx, 20*time.Second, svc.Namespace, svc.Name, port, want...); err != nil {
		c.Fatalf("rules for %s/%s:%s never DNATed to exactly %v: %v", svc.Namespace, svc.Name, port, want, err)
	}
	return c.since(fmt.Sprintf("rules for %s/%s:%s converged to %d endpoint(s)", svc.Namespace, svc.Name, port, len(pods)), start)
}

// waitDNATsTo waits until the Service's "http" port goes to ips:8080.
func (c *tc) waitDNATsTo(svc *v1.Service, ips []string, timeout time.Duration) {
	c.Helper()
	want := make([]string, len(ips))
	for i, ip := range ips {
		want[i] = ip + ":8080"
	}
	if _, err := env.WaitForServiceDNATs(context.Background(), timeout, svc.Namespace, svc.Name, "http", want...); err != nil {
		c.Fatalf("%s/%s never went to %v: %v", svc.Namespace, svc.Name, ips, err)
	}
}

// waitRule waits until one line of `iptables-save -t table` contains
// all of parts.
func (c *tc) waitRule(table string, parts ...string) string {
	c.Helper()
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	for {
		out, err := env.IPTablesSave(c.ctx, table)
		if err != nil {
			c.Fatalf("iptables-save -t %s: %v", table, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if containsAll(line, parts) {
				c.since(fmt.Sprintf("%s table has rule %q", table, line), start)
				return line
			}
		}
		if time.Now().After(deadline) {
			c.Fatalf("after 20s no rule in the %s table has all of %q:\n%s", table, parts, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// waitNFT waits until `nft list <what...>` in the node namespace contains
// every one of parts.
func (c *tc) waitNFT(what []string, parts ...string) string {
	c.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := env.NFTList(c.ctx, what...)
		if err == nil && containsAll(out, parts) {
			return out
		}
		if time.Now().After(deadline) {
			c.Fatalf("nft list %v never showed %q (err %v):\n%s", what, parts, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// iptCounterRe matches `iptables-save -c` rule lines: "[pkts:bytes] -A ...".
var iptCounterRe = regexp.MustCompile(`^\[(\d+):(\d+)\] (-A .*)$`)

// ruleCounter returns the packet counter of the first rule in
// `iptables-save -c -t table` whose text contains every one of parts.
func (c *tc) ruleCounter(table string, parts ...string) (uint64, string, bool) {
	c.Helper()
	out, err := env.Node.Run(c.ctx, "iptables-save", "-c", "-t", table)
	if err != nil {
		c.Fatalf("iptables-save -c -t %s: %v", table, err)
	}
	for _, line := range strings.Split(out, "\n") {
		m := iptCounterRe.FindStringSubmatch(line)
		if m != nil && containsAll(m[3], parts) {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			return n, m[3], true
		}
	}
	return 0, out, false
}

// conntrackList runs `conntrack -L args...` in the node namespace and
// returns the entries (one a line).
func (c *tc) conntrackList(args ...string) []string {
	c.Helper()
	out, err := env.Node.Run(c.ctx, append([]string{"conntrack", "-L"}, args...)...)
	if err != nil {
		c.Fatalf("conntrack -L %v: %v", args, err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
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

// syncCount is kubeproxy_sync_proxy_rules_duration_seconds_count.
func syncCount(c *tc) float64 {
	return metricValue(c, "kubeproxy_sync_proxy_rules_duration_seconds_count")
}

// conntrackDeleted counts the conntrack entries svcproxy deleted.
const conntrackDeleted = "kubeproxy_conntrack_reconciler_deleted_entries_total"

// wantGrowth fails the test unless the metric name grew by at least n since
// it was before, and returns how much it grew.
func (c *tc) wantGrowth(name string, before, n float64) float64 {
	c.Helper()
	grown := metricValue(c, name) - before
	if grown < n {
		c.Errorf("%s grew by %v, want >= %v", name, grown, n)
	}
	return grown
}

// waitHealthCheck waits until svc's health-check node port answers code
// for svc with local endpoints and a healthy proxy, and logs the answer.
func (c *tc) waitHealthCheck(what string, svc *v1.Service, code, local int) {
	c.Helper()
	url := fmt.Sprintf("http://%s:%d/", harness.NodeIP, svc.Spec.HealthCheckNodePort)
	c.eventually(what, func() string {
		got, body, err := env.NodeHTTPGet(c.ctx, url)
		if err != nil {
			return err.Error()
		}
		body = strings.Join(strings.Fields(body), " ")
		var h struct {
			Service             struct{ Namespace, Name string }
			LocalEndpoints      *int `json:"localEndpoints"`
			ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
		}
		if err := json.Unmarshal([]byte(body), &h); err != nil {
			return fmt.Sprintf("%d %q: %v", got, body, err)
		}
		if got != code || h.LocalEndpoints == nil || *h.LocalEndpoints != local || !h.ServiceProxyHealthy ||
			h.Service.Name != svc.Name || h.Service.Namespace != svc.Namespace {
			return fmt.Sprintf("%d %s", got, body)
		}
		c.Logf("RESULT %s: health check %s: %d %s", what, url, got, body)
		return ""
	})
}
