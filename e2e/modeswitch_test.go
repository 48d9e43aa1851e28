package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Switching --proxy-mode: a start in one mode removes the other mode's
// leftovers (svcproxy's and kube-proxy's), touches nothing else, and
// traffic keeps flowing through the switch.

// foreignRules are tables and chains someone else made on the node; no
// switch may touch them. The inet svcproxy table shares our name, not our
// families.
var foreignRules = [][]string{
	{"iptables", "-t", "nat", "-N", "SWITCH-KEEP"},
	{"iptables", "-t", "nat", "-A", "SWITCH-KEEP", "-j", "RETURN"},
	{"iptables", "-t", "nat", "-I", "PREROUTING", "-j", "SWITCH-KEEP"},
	{"iptables", "-t", "filter", "-N", "SWITCH-KEEP"},
	{"iptables", "-t", "filter", "-I", "INPUT", "-j", "SWITCH-KEEP"},
	{"ip6tables", "-t", "nat", "-N", "SWITCH-KEEP"},
	{"ip6tables", "-t", "nat", "-I", "PREROUTING", "-j", "SWITCH-KEEP"},
	{"nft", "add", "table", "ip", "switch-keep"},
	{"nft", "add", "chain", "ip", "switch-keep", "pre", "{ type filter hook prerouting priority 0 ; }"},
	{"nft", "add", "rule", "ip", "switch-keep", "pre", "counter"},
	{"nft", "add", "table", "inet", "svcproxy"},
	{"nft", "add", "chain", "inet", "svcproxy", "keep"},
}

// foreignKept are what foreignRules leave in each dump.
var foreignKept = map[string][]string{
	"iptables-save":   {"-A PREROUTING -j SWITCH-KEEP", "-A SWITCH-KEEP -j RETURN", "-A INPUT -j SWITCH-KEEP"},
	"ip6tables-save":  {"-A PREROUTING -j SWITCH-KEEP"},
	"nft list tables": {"table ip switch-keep", "table inet svcproxy"},
}

// TestModeSwitch: svcproxy restarted iptables → nftables → iptables while
// a pod connects to a ClusterIP and an outside client to a NodePort, each
// every 10ms. After each switch the other mode's rules are gone (including
// kube-proxy's, planted before the switch: legacy iptables chains, its
// nftables tables), ours are in, the foreign tables and chains are intact,
// and not one connection failed: the leftovers go only after our first
// sync.
func TestModeSwitch(t *testing.T) {
	c := begin(t)
	c.onlyIn("iptables", "TestModeSwitch switches modes itself (iptables → nftables → iptables) and covers both; it runs once, in the iptables run")
	svc := c.createService("modeswitch", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.endpoints(svc, backends...)
	c.waitDNATs(svc, "tcp", backends...)
	for _, argv := range foreignRules {
		mustRun(c, env.Node, argv...)
	}
	mode := "iptables"
	t.Cleanup(func() {
		env.Node.Run(c.ctx, "sh", "-c", modeSwitchTeardown)
		if mode != "iptables" {
			// Back to the suite's mode, which removes our nftables tables.
			if err := env.RestartSvcproxy(c.ctx, 30*time.Second); err != nil {
				svcproxyErr = err
				t.Errorf("restart svcproxy in iptables mode: %v", err)
			}
		}
	})

	_, legacyErr := exec.LookPath("iptables-legacy")
	for _, step := range []struct {
		mode  string
		extra []string
		plant [][]string // kube-proxy's leftovers of the other mode
	}{
		{"nftables", []string{"--proxy-mode", "nftables"}, legacyKubeProxyChains(legacyErr == nil)},
		{"iptables", nil, [][]string{
			{"nft", "add", "table", "ip", "kube-proxy"},
			{"nft", "add", "chain", "ip", "kube-proxy", "nat-prerouting", "{ type nat hook prerouting priority -100 ; }"},
			{"nft", "add", "table", "ip6", "kube-proxy"},
		}},
	} {
		t.Run("to-"+step.mode, func(t *testing.T) {
			c := &tc{T: t, ctx: c.ctx, start: time.Now()}
			for _, argv := range step.plant {
				mustRun(c, env.Node, argv...)
			}
			if left := otherModeLeftovers(c, step.mode); len(left) == 0 {
				t.Fatalf("before the switch to %s there is nothing of the other mode to remove", step.mode)
			}
			const d = 8 * time.Second
			cl, err := client.StartClient(harness.ClientOptions{Target: target(svc, 80), Duration: d, Interval: 10 * time.Millisecond, Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			ext := make(chan []harness.Reply, 1)
			go func() {
				rs, err := env.ExternalConnect(c.ctx, harness.ClientOptions{Target: nodePortTarget(svc), SrcIP: harness.ExtAllowedIP,
					Duration: d, Interval: 10 * time.Millisecond, Timeout: time.Second})
				if err != nil {
					t.Errorf("external client: %v", err)
				}
				ext <- rs
			}()
			clientsStart := time.Now()
			time.Sleep(700 * time.Millisecond)

			start := time.Now()
			stopSvcproxyCleanly(t)
			logBefore := removedLines()
			if err := env.StartSvcproxyAndWait(c.ctx, 30*time.Second, step.extra...); err != nil {
				svcproxyErr = err
				t.Fatalf("start svcproxy in %s mode: %v", step.mode, err)
			}
			mode = step.mode
			synced := c.since("svcproxy restarted in "+step.mode+" mode and synced", start)
			var left []string
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if left = otherModeLeftovers(c, step.mode); len(left) == 0 {
					break
				}
			}
			if len(left) > 0 {
				t.Errorf("20s after the start in %s mode the other mode's rules are still there: %q\n%s", step.mode, left, modeSwitchDump(c))
			}
			gone := c.since("the other mode's rules gone", start)
			if said := removedLines()[len(logBefore):]; len(said) == 0 {
				t.Errorf("svcproxy's log does not say what it removed")
			} else {
				c.Logf("svcproxy logged:\n%s", strings.Join(said, "\n"))
			}

			rs, err := cl.Wait(c.ctx)
			if err != nil {
				t.Fatal(err)
			}
			ers := <-ext
			if end := clientsStart.Add(d); start.Add(gone).After(end.Add(-300 * time.Millisecond)) {
				t.Errorf("the switch took %v; the %v clients did not cover it", gone, d)
			}
			c.Logf("ClusterIP: %d connections: %s", len(rs), harness.FormatTally(harness.Tally(rs)))
			c.Logf("NodePort from outside: %d connections: %s", len(ers), harness.FormatTally(harness.Tally(ers)))
			for what, n := range map[string]int{"ClusterIP": len(rs), "NodePort": len(ers)} {
				if n < 200 {
					t.Errorf("only %d %s connections in %v; the client was too slow to cover the switch", n, what, d)
				}
			}
			c.checkSpread(rs, len(rs), backends, client.IP)
			c.checkSpread(ers, len(ers), backends, "")
			c.checkOurs(svc, step.mode)
			for dump, kept := range foreignKept {
				out := mustRun(c, env.Node, strings.Fields(dump)...)
				for _, k := range kept {
					if !strings.Contains(out, k) {
						t.Errorf("the switch to %s removed someone else's %q; %s:\n%s", step.mode, k, dump, out)
					}
				}
			}
			t.Logf("RESULT switch to %s: synced %v, other mode's rules gone %v after the stop; ClusterIP %s; NodePort %s",
				step.mode, synced.Round(time.Millisecond), gone.Round(time.Millisecond), harness.FormatTally(harness.Tally(rs)), harness.FormatTally(harness.Tally(ers)))
		})
		if t.Failed() {
			return
		}
	}
}

// modeSwitchTeardown removes what TestModeSwitch planted, whatever is left.
const modeSwitchTeardown = `
for t in iptables ip6tables; do
	$t -t nat -D PREROUTING -j SWITCH-KEEP; $t -t nat -F SWITCH-KEEP; $t -t nat -X SWITCH-KEEP
done
iptables -t filter -D INPUT -j SWITCH-KEEP; iptables -t filter -X SWITCH-KEEP
nft delete table ip switch-keep; nft delete table inet svcproxy
nft delete table ip kube-proxy; nft delete table ip6 kube-proxy
if [ -n "$(cat /proc/net/ip_tables_names)" ]; then
	iptables-legacy -t nat -D OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
	iptables-legacy -t nat -F KUBE-SERVICES; iptables-legacy -t nat -X KUBE-SERVICES; iptables-legacy -t nat -X KUBE-SVC-MODESWITCH
fi
true`

// legacyKubeProxyChains are kube-proxy's iptables chains in the legacy
// backend (svcproxy here uses the nft one), for a switch to nftables to
// remove; none without iptables-legacy.
func legacyKubeProxyChains(have bool) [][]string {
	if !have {
		return nil
	}
	return [][]string{
		{"iptables-legacy", "-t", "nat", "-N", "KUBE-SERVICES"},
		{"iptables-legacy", "-t", "nat", "-N", "KUBE-SVC-MODESWITCH"},
		{"iptables-legacy", "-t", "nat", "-A", "KUBE-SERVICES", "-j", "KUBE-SVC-MODESWITCH"},
		{"iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
	}
}

// otherModeLeftovers lists what the mode that is not mode keeps on the
// node: for nftables mode every KUBE- line of each iptables backend's dump
// (but the KUBE-FIREWALL guard, shared with kubelet), for iptables mode the
// ip and ip6 svcproxy and kube-proxy nftables tables.
func otherModeLeftovers(c *tc, mode string) []string {
	var found []string
	if mode == "iptables" {
		for _, line := range strings.Split(mustRun(c, env.Node, "nft", "list", "tables"), "\n") {
			switch strings.TrimSpace(line) {
			case "table ip svcproxy", "table ip6 svcproxy", "table ip kube-proxy", "table ip6 kube-proxy":
				found = append(found, strings.TrimSpace(line))
			}
		}
		return found
	}
	for _, save := range []string{"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"} {
		if _, err := exec.LookPath(save); err != nil {
			continue
		}
		// Without -t, a save command creates no table.
		for _, line := range strings.Split(mustRun(c, env.Node, save), "\n") {
			if strings.Contains(line, "KUBE-") && !strings.Contains(line, "KUBE-FIREWALL") {
				found = append(found, save+": "+line)
			}
		}
	}
	return found
}

// checkOurs fails unless the Service's rules of mode are in place: its
// ClusterIP DNATs to every backend, and both families have our rules.
func (c *tc) checkOurs(svc *v1.Service, mode string) {
	c.Helper()
	var want []string
	for _, p := range backends {
		want = append(want, net.JoinHostPort(p.IP, fmt.Sprint(harness.EchoPort)))
	}
	var got []string
	if mode == "nftables" {
		got = harness.NFTServiceDNATs(mustRun(c, env.Node, "nft", "list", "map", "ip", "svcproxy", "endpoints-ip-tcp"), svc.Spec.ClusterIP, "80")
		mustRun(c, env.Node, "nft", "list", "table", "ip6", "svcproxy")
	} else {
		got = harness.ServiceDNATs(mustRun(c, env.Node, "iptables-save", "-t", "nat"), svc.Namespace, svc.Name, "tcp")
		if out := mustRun(c, env.Node, "ip6tables-save", "-t", "nat"); !strings.Contains(out, "-j KUBE-SERVICES") {
			c.Errorf("ip6tables nat has no jump to KUBE-SERVICES:\n%s", out)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		c.Errorf("in %s mode the ClusterIP DNATs to %v, want %v", mode, got, want)
	}
}

// removedLines are svcproxy's log lines saying it removed the other mode's
// leftovers (the log spans restarts).
func removedLines() []string {
	p := env.Svcproxy()
	if p == nil {
		return nil
	}
	b, _ := os.ReadFile(p.LogPath)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "Removed the other proxy mode's leftovers") {
			out = append(out, line)
		}
	}
	return out
}

// modeSwitchDump is the node's rules in both modes, for a failure.
func modeSwitchDump(c *tc) string {
	var b strings.Builder
	for _, argv := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "tables"}} {
		out, err := env.Node.Run(c.ctx, argv...)
		fmt.Fprintf(&b, "%s (%v):\n%s\n", strings.Join(argv, " "), err, out)
	}
	return b.String()
}
