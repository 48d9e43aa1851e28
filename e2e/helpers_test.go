package e2e

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// service creates a ClusterIP Service with an EndpointSlice of ready
// endpoints at the given pods (none: an empty slice; pods == nil and
// noSlice: no slice at all), and deletes both when the test ends.
func (c *tc) service(namespace, name string, ports []harness.Port, pods ...*harness.Pod) *v1.Service {
	c.Helper()
	svc, err := env.CreateService(c.ctx, namespace, name, ports...)
	if err != nil {
		c.Fatalf("create Service %s/%s: %v", namespace, name, err)
	}
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteService(ctx, namespace, name); err != nil {
			c.Errorf("delete Service %s/%s: %v", namespace, name, err)
		}
	})
	c.Logf("Service %s/%s has ClusterIP %s", namespace, name, svc.Spec.ClusterIP)
	return svc
}

// endpoints writes the Service's EndpointSlice with ready endpoints at
// pods.
func (c *tc) endpoints(svc *v1.Service, pods ...*harness.Pod) {
	c.Helper()
	if _, err := env.SetEndpoints(c.ctx, svc, ips(pods)...); err != nil {
		c.Fatalf("write EndpointSlice of %s/%s: %v", svc.Namespace, svc.Name, err)
	}
}

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

// connect runs `echo client` in from and fails the test on a harness error.
func (c *tc) connect(from *harness.Pod, opts harness.ClientOptions) []harness.Reply {
	c.Helper()
	start := time.Now()
	rs, err := from.Connect(c.ctx, opts)
	if err != nil {
		c.Fatalf("echo client in %s: %v", from.Name, err)
	}
	c.since(fmt.Sprintf("%d %s attempt(s) from %s to %s: %s", len(rs), protoName(opts.Proto), from.Name, opts.Target, harness.FormatTally(harness.Tally(rs))), start)
	return rs
}

func protoName(p string) string {
	if p == "" {
		return "tcp"
	}
	return p
}

func target(svc *v1.Service, port int32) string {
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(port)))
}

func ips(pods []*harness.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.IP
	}
	return out
}

func names(pods []*harness.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.Name
	}
	sort.Strings(out)
	return out
}

// checkSpread fails unless every reply succeeded, came from one of pods,
// every pod answered at least once, and (wantSource != "") every backend saw
// wantSource as the source IP. It reports at most a few attempts of each
// kind of failure.
func (c *tc) checkSpread(rs []harness.Reply, want int, pods []*harness.Pod, wantSource string) {
	c.Helper()
	if len(rs) != want {
		c.Errorf("got %d replies, want %d", len(rs), want)
	}
	allowed := map[string]bool{}
	for _, p := range pods {
		allowed[p.Name] = true
	}
	seen := map[string]int{}
	bad := map[string][]string{}
	var kinds []string
	report := func(kind, msg string) {
		if bad[kind] == nil {
			kinds = append(kinds, kind)
		}
		bad[kind] = append(bad[kind], msg)
	}
	for i, r := range rs {
		switch {
		case r.Err != "":
			report("failed", fmt.Sprintf("attempt %d: %s", i, r.Line))
		case !allowed[r.Backend]:
			report("reached another backend than "+strings.Join(names(pods), ","), fmt.Sprintf("attempt %d: %s", i, r.Line))
		case wantSource != "" && r.SourceIP() != wantSource:
			report("source was not "+wantSource, fmt.Sprintf("attempt %d: backend %s saw %s", i, r.Backend, r.Source))
		}
		seen[r.Backend]++
	}
	for _, kind := range kinds {
		msgs := bad[kind]
		more := ""
		if len(msgs) > 5 {
			more = fmt.Sprintf("\n\t... and %d more", len(msgs)-5)
			msgs = msgs[:5]
		}
		c.Errorf("%d of %d attempts %s:\n\t%s%s", len(bad[kind]), len(rs), kind, strings.Join(msgs, "\n\t"), more)
	}
	for _, p := range pods {
		if seen[p.Name] == 0 {
			c.Errorf("backend %s never answered (tally %s)", p.Name, harness.FormatTally(harness.Tally(rs)))
		}
	}
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
