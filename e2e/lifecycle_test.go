package e2e

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// svcproxy's life on a node: restarts that never disrupt traffic,
// --cleanup, and taking over from kube-proxy.

// TestRestart: svcproxy is stopped (SIGTERM, then SIGKILL) and started
// again while a client connects every 10ms; not one connection fails, as
// the rules stay in the kernel and a new svcproxy adopts them without a
// flush. Then a change made while svcproxy is down is applied after it
// comes back.
func TestRestart(t *testing.T) {
	c := begin(t)
	svc := c.service("restart", "web", []harness.Port{harness.TCP}, backends...)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			c := begin(t)
			cl, err := client.StartClient(harness.ClientOptions{
				Target: target(svc, 80), Duration: 4 * time.Second, Interval: 10 * time.Millisecond, Timeout: time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(700 * time.Millisecond)

			start := time.Now()
			old := env.Svcproxy()
			exitErr := env.StopSvcproxy(sig)
			c.since("svcproxy stopped with "+sig.String()+" (exit: "+exitDesc(exitErr)+")", start)
			if sig == syscall.SIGTERM && exitErr != nil {
				c.Errorf("svcproxy did not exit cleanly on SIGTERM: %v; log %s:\n%s", exitErr, old.LogPath, old.Tail(15))
			}
			time.Sleep(300 * time.Millisecond) // traffic with no svcproxy at all

			start = time.Now()
			if _, err := env.StartSvcproxy(c.ctx); err != nil {
				svcproxyErr = err
				t.Fatalf("restart svcproxy: %v", err)
			}
			if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
				svcproxyErr = err
				t.Fatalf("restarted svcproxy: %v", err)
			}
			c.since("svcproxy restarted and synced", start)

			rs, err := cl.Wait(c.ctx)
			if err != nil {
				t.Fatal(err)
			}
			c.Logf("%d connections during the restart: %s", len(rs), harness.FormatTally(harness.Tally(rs)))
			if len(rs) < 100 {
				c.Errorf("only %d connections in 4s; the client was too slow to cover the restart", len(rs))
			}
			c.checkSpread(rs, len(rs), backends, client.IP)
			c.waitDNATs(svc, "tcp", backends...)
		})
	}

	t.Run("changes-while-down", func(t *testing.T) {
		c := begin(t)
		stopSvcproxyCleanly(c)
		c.endpoints(svc, backends[0])
		start := time.Now()
		if _, err := env.StartSvcproxy(c.ctx); err != nil {
			svcproxyErr = err
			t.Fatalf("restart svcproxy: %v", err)
		}
		c.waitDNATs(svc, "tcp", backends[0])
		c.since("restarted svcproxy applied the change made while it was down", start)
		rs := c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 20})
		c.checkSpread(rs, 20, backends[:1], client.IP)
		if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
			svcproxyErr = err
			t.Fatal(err)
		}
	})
}

func exitDesc(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// TestCleanup: `svcproxy --cleanup` removes every rule, chain and table it
// (or kube-proxy) made, and exits 0; traffic to Services then stops, and a
// restarted svcproxy brings it back.
func TestCleanup(t *testing.T) {
	c := begin(t)
	svc := c.createService("cleanup", v1.ServiceSpec{})
	c.slice(svc, at(backends[0], harness.NodeName))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	c.eventually("service works", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: target, Count: 2}), backends[:1], client.IP, "")
	})
	stopSvcproxy(t)
	t.Cleanup(func() {
		if err := env.StartSvcproxyAndWait(context.Background(), 30*time.Second); err != nil {
			t.Errorf("restart svcproxy: %v", err)
		}
	})
	out, err := env.Node.Command(c.ctx, env.Bins.Svcproxy, "--cleanup").CombinedOutput()
	if err != nil {
		t.Fatalf("svcproxy --cleanup: %v: %s", err, out)
	}
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		got, err := env.Node.Run(c.ctx, cmd...)
		if err != nil {
			if _, lookErr := exec.LookPath(cmd[0]); lookErr != nil {
				continue
			}
			t.Errorf("%s: %v", cmd[0], err)
		}
		for _, line := range strings.Split(got, "\n") {
			// KUBE-FIREWALL (the localnet martian guard) is shared with
			// kubelet; like kube-proxy, --cleanup leaves it.
			if strings.Contains(line, "KUBE-FIREWALL") {
				continue
			}
			if strings.Contains(line, "KUBE-") || strings.Contains(line, "svcproxy") {
				t.Errorf("%s after --cleanup still has %q", cmd[0], line)
			}
		}
	}
	rs := c.connect(client, harness.ClientOptions{Target: target, Count: 2, Timeout: 500 * time.Millisecond})
	for _, r := range rs {
		if r.Err == "" {
			t.Errorf("ClusterIP still answered after --cleanup: %s", r.Line)
		}
	}
	t.Logf("RESULT --cleanup: exit 0, no KUBE-* chain or svcproxy table left but the shared KUBE-FIREWALL, ClusterIP %s", harness.FormatTally(harness.Tally(rs)))
	if _, err := env.StartSvcproxy(c.ctx); err != nil {
		t.Fatal(err)
	}
	c.eventually("a restarted svcproxy brings the Service back", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: target, Count: 2}), backends[:1], client.IP, "")
	})
	stopSvcproxy(t)
}

// TestMigrationFromKubeProxy (nftables mode): kube-proxy's nftables tables
// on a node (here with a stale firewall rule dropping a Service's ClusterIP
// before DNAT) stay when svcproxy starts without --cleanup-kube-proxy, and
// are gone, with traffic reaching the right endpoints, when it starts with
// it. Its iptables chains are the other mode's: they go at every start.
func TestMigrationFromKubeProxy(t *testing.T) {
	c := begin(t)
	c.onlyIn("nftables", "in iptables mode svcproxy's chains are kube-proxy's (same names): --cleanup-kube-proxy is for nftables mode")
	svc := c.createService("migration", v1.ServiceSpec{})
	right := backends[0]
	c.slice(svc, at(right, harness.NodeName))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	run := func(argv ...string) string { return mustRun(c, env.Node, argv...) }
	leftovers := func() string {
		var found []string
		if out := run("nft", "list", "tables"); strings.Contains(out, "kube-proxy") {
			found = append(found, "nftables: "+strings.Join(strings.Fields(out), " "))
		}
		if out := run("iptables-save", "-t", "nat"); strings.Contains(out, "KUBE-SERVICES") {
			found = append(found, "iptables nat has KUBE-SERVICES")
		}
		return strings.Join(found, "; ")
	}
	t.Cleanup(func() {
		// Whatever happened, the suite goes on with a plain svcproxy and no
		// leftovers.
		env.Node.Run(c.ctx, "sh", "-c", "iptables -t nat -D PREROUTING -j KUBE-SERVICES; iptables -t nat -F KUBE-SERVICES; iptables -t nat -X KUBE-SERVICES; nft delete table ip kube-proxy; nft delete table ip6 kube-proxy")
		if env.Svcproxy() != nil {
			if exited, _ := env.Svcproxy().Exited(); !exited {
				env.StopSvcproxy(syscall.SIGTERM)
			}
		}
		env.StartSvcproxyAndWait(c.ctx, 30*time.Second)
	})

	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Fatalf("stop svcproxy: %v", err)
	}
	run("nft", "add", "table", "ip", "kube-proxy")
	run("nft", "add", "chain", "ip", "kube-proxy", "filter-prerouting", "{ type filter hook prerouting priority -110 ; }")
	run("nft", "add", "rule", "ip", "kube-proxy", "filter-prerouting", "ip", "daddr", svc.Spec.ClusterIP, "drop")
	run("nft", "add", "table", "ip6", "kube-proxy")
	run("iptables", "-t", "nat", "-N", "KUBE-SERVICES")
	run("iptables", "-t", "nat", "-I", "PREROUTING", "-j", "KUBE-SERVICES")
	if err := env.StartSvcproxyAndWait(c.ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	c.eventually("without --cleanup-kube-proxy kube-proxy's nftables tables stay, its iptables chains go", func() string {
		if l := leftovers(); !strings.Contains(l, "nftables") || strings.Contains(l, "KUBE-SERVICES") {
			return "found: " + l
		}
		return ""
	})
	// The stale rule is live: the Service does not answer.
	rs := c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 1})
	for _, r := range rs {
		if r.Err != "timeout" {
			t.Fatalf("with kube-proxy's stale drop rule in place the Service answered: %s", harness.FormatTally(harness.Tally(rs)))
		}
	}

	if err := env.RestartSvcproxy(c.ctx, 30*time.Second, "--cleanup-kube-proxy"); err != nil {
		t.Fatal(err)
	}
	if l := leftovers(); l != "" {
		t.Fatalf("after a start with --cleanup-kube-proxy, left over: %s", l)
	}
	c.eventually("traffic reaches the Service's endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
		return landed(rs, []*harness.Pod{right}, client.IP, "")
	})
	t.Logf("RESULT --cleanup-kube-proxy: kube-proxy's ip/ip6 tables and iptables chains removed; %s", harness.FormatTally(harness.Tally(rs)))
}
