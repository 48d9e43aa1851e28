package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestSelfRepair (nftables mode): someone else damages svcproxy's table —
// `nft flush ruleset`, `nft delete table ip svcproxy`, a flushed chain, a
// flushed map, one Service's element deleted — and svcproxy restores it
// without waiting for the periodic sync. It measures the time from the
// damage to the table being whole again (the same `nft list table` as
// before the damage: chains, rules and elements) and to traffic flowing
// again, and requires both within one second.
func TestSelfRepair(t *testing.T) {
	c := begin(t, true)
	if env.ProxyMode != "nftables" {
		t.Skip("nftables self-repair; iptables flush detection has its own cases")
	}
	// With kube-proxy's default min-sync-period: each case damages the
	// table within a second of the last repair, which must not wait it
	// out.
	c.restartSvcproxy("--iptables-min-sync-period", "1s")
	svc := c.service("self-repair", "web", []harness.Port{harness.TCP}, backends...)
	c.endpoints(svc, backends...)
	c.waitDNATs(svc, "tcp", backends...)
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
