package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Someone else damages svcproxy's rules; svcproxy puts them back.

// TestSelfRepair (nftables mode): someone else damages svcproxy's table —
// `nft flush ruleset`, `nft delete table ip svcproxy`, a flushed chain, a
// flushed map, one Service's element deleted — and svcproxy restores it
// without waiting for the periodic sync. It measures the time from the
// damage to the table being whole again (the same `nft list table` as
// before the damage: chains, rules and elements) and to traffic flowing
// again, and requires both within one second.
func TestSelfRepair(t *testing.T) {
	c := begin(t)
	c.onlyIn("nftables", "nftables self-repair; iptables flush detection has its own cases")
	// With kube-proxy's default min-sync-period: each case damages the
	// table within a second of the last repair, which must not wait it
	// out.
	c.restartSvcproxy("--iptables-min-sync-period", "1s")
	svc := c.service("self-repair", "web", []harness.Port{harness.TCP}, backends...)
	healthy, err := env.NFTList(c.ctx, "table", "ip", "svcproxy")
	if err != nil {
		t.Fatal(err)
	}
	wantChains := strings.Count(healthy, "\tchain ")
	wantRules := ruleLines(healthy)
	if !strings.Contains(healthy, svc.Spec.ClusterIP+" . tcp . 80 : ") {
		t.Fatalf("no service-ips element for %s in:\n%s", svc.Spec.ClusterIP, healthy)
	}

	for _, damage := range []struct {
		name string
		argv []string
	}{
		{"nft flush ruleset", []string{"nft", "flush", "ruleset"}},
		{"nft delete table ip svcproxy", []string{"nft", "delete", "table", "ip", "svcproxy"}},
		{"nft flush chain ip svcproxy services", []string{"nft", "flush", "chain", "ip", "svcproxy", "services"}},
		{"nft flush chain ip svcproxy nat-prerouting", []string{"nft", "flush", "chain", "ip", "svcproxy", "nat-prerouting"}},
		// Element-level damage: the table's shape stays whole; the
		// nf_tables notifications show it.
		{"nft flush map ip svcproxy service-ips", []string{"nft", "flush", "map", "ip", "svcproxy", "service-ips"}},
		{"nft delete element ip svcproxy service-ips (one Service's)", []string{"nft", "delete", "element", "ip", "svcproxy", "service-ips",
			"{ " + svc.Spec.ClusterIP + " . tcp . 80 }"}},
		{"nft flush map ip svcproxy endpoints-ip-tcp", []string{"nft", "flush", "map", "ip", "svcproxy", "endpoints-ip-tcp"}},
	} {
		t.Run(strings.ReplaceAll(damage.name, " ", "_"), func(t *testing.T) {
			if out, err := env.Node.Run(c.ctx, damage.argv...); err != nil {
				t.Fatalf("%s: %v: %s", damage.name, err, out)
			}
			start := time.Now()
			// The table and the traffic are probed side by side, each as
			// often as it can (a connection attempt lasts up to 50ms).
			var tableBack, trafficBack time.Duration
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				for time.Since(start) < 10*time.Second {
					if out, err := env.NFTList(c.ctx, "table", "ip", "svcproxy"); err == nil &&
						strings.Count(out, "\tchain ") == wantChains && ruleLines(out) == wantRules && out == healthy {
						tableBack = time.Since(start)
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			}()
			go func() {
				defer wg.Done()
				for time.Since(start) < 10*time.Second {
					rs, err := client.Connect(c.ctx, harness.ClientOptions{Proto: "tcp", Target: target(svc, 80), Count: 1, Timeout: 50 * time.Millisecond})
					if err == nil && len(rs) == 1 && rs[0].Err == "" {
						trafficBack = time.Since(start)
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			}()
			wg.Wait()
			t.Logf("RESULT %s: table whole again after %v, traffic through the ClusterIP after %v",
				damage.name, tableBack.Round(time.Millisecond), trafficBack.Round(time.Millisecond))
			if tableBack == 0 || tableBack > time.Second {
				t.Errorf("%s: table not restored within 1s (%v)", damage.name, fmtDur(tableBack))
			}
			if trafficBack == 0 || trafficBack > time.Second {
				t.Errorf("%s: traffic not back within 1s (%v)", damage.name, fmtDur(trafficBack))
			}
			// Connections land on the backends again.
			rs := c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target(svc, 80), Count: 30, Timeout: 2 * time.Second})
			c.checkSpread(rs, 30, backends, client.IP)
		})
	}
	_, metrics, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := harness.MetricValue(metrics, "svcproxy_rules_repaired_total"); !ok || v < 7 {
		t.Errorf("svcproxy_rules_repaired_total = %v (present %v), want >= 7", v, ok)
	}
}

// TestFlushDetection (iptables mode): another agent flushes the tables
// svcproxy uses or removes its jump rules; svcproxy notices and rewrites
// them, and traffic flows again within a few seconds.
func TestFlushDetection(t *testing.T) {
	c := begin(t)
	c.onlyIn("iptables", "iptables flush detection; nftables mode has TestSelfRepair")
	svc := c.createService("flush", v1.ServiceSpec{})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	addr := target(svc, 80)
	c.eventually("service works", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: addr, Count: 3}), backends[:2], client.IP, "")
	})
	for _, damage := range [][]string{
		{"iptables", "-t", "nat", "-F"},
		{"iptables", "-t", "filter", "-F"},
		{"iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		{"nft", "flush", "ruleset"},
		// One top-level chain, and one service's own chain: neither
		// touches what kube-proxy's canary or the built-in jumps show.
		{"iptables", "-t", "nat", "-F", "KUBE-SERVICES"},
		{"iptables", "-t", "nat", "-F", "<KUBE-SVC chain of the Service>"},
	} {
		if damage[len(damage)-1] == "<KUBE-SVC chain of the Service>" {
			out, err := env.Node.Run(c.ctx, "iptables", "-t", "nat", "-S", "KUBE-SERVICES")
			if err != nil {
				t.Fatalf("iptables -S KUBE-SERVICES: %v: %s", err, out)
			}
			for _, line := range strings.Split(out, "\n") {
				if i := strings.Index(line, "-j KUBE-SVC-"); i >= 0 && strings.Contains(line, svc.Namespace+"/"+svc.Name) {
					damage[len(damage)-1] = strings.TrimSpace(line[i+3:])
				}
			}
			if strings.HasPrefix(damage[len(damage)-1], "<") {
				t.Fatalf("no KUBE-SVC chain for %s/%s in:\n%s", svc.Namespace, svc.Name, out)
			}
		}
		name := strings.Join(damage, " ")
		if out, err := env.Node.Run(c.ctx, damage...); err != nil {
			t.Errorf("%s: %v: %s", name, err, out)
			continue
		}
		start := time.Now()
		var back time.Duration
		for time.Since(start) < 10*time.Second {
			rs := c.connect(client, harness.ClientOptions{Target: addr, Count: 1, Timeout: 300 * time.Millisecond})
			if landed(rs, backends[:2], client.IP, "") == "" {
				back = time.Since(start)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("RESULT after `%s`: traffic back in %v", name, back.Round(time.Millisecond))
		if back == 0 || back > 3*time.Second {
			t.Errorf("after `%s`: traffic not back within 3s (%v)", name, back)
		}
	}
}

// ruleLines counts the rule lines of an `nft list table` output (lines in a
// chain that are not its header, base-chain type line or closing brace).
func ruleLines(out string) int {
	n, inChain := 0, false
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "chain "):
			inChain = true
		case l == "}":
			inChain = false
		case inChain && l != "" && !strings.HasPrefix(l, "type "):
			n++
		}
	}
	return n
}

func fmtDur(d time.Duration) string {
	if d == 0 {
		return "never, in 10s"
	}
	return fmt.Sprint(d.Round(time.Millisecond))
}
