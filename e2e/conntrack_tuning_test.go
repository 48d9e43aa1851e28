package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
	"github.com/svcproxy/svcproxy/proxier/conntrack"
)

// Conntrack tuning as kube-proxy does it at start: the node namespace's
// conntrack sysctls from flags, from --config and with --init-only;
// nf_conntrack_max, which only the host's namespace may write, left as it
// is with a warning; and the CLOSE_WAIT timeout a Service connection gets.

// The per-namespace conntrack sysctls svcproxy tunes, under
// /proc/sys/net/netfilter.
const (
	ctEstablished = "nf_conntrack_tcp_timeout_established"
	ctCloseWait   = "nf_conntrack_tcp_timeout_close_wait"
	ctUDP         = "nf_conntrack_udp_timeout"
	ctUDPStream   = "nf_conntrack_udp_timeout_stream"
	ctBeLiberal   = "nf_conntrack_tcp_be_liberal"
)

var ctSysctlNames = []string{ctEstablished, ctCloseWait, ctUDP, ctUDPStream, ctBeLiberal}

// sysctls are values of ctSysctlNames.
type sysctls map[string]int

// nodeSysctls reads ctSysctlNames in the node namespace.
func (c *tc) nodeSysctls() sysctls {
	c.Helper()
	argv := []string{"cat"}
	for _, n := range ctSysctlNames {
		argv = append(argv, "/proc/sys/net/netfilter/"+n)
	}
	f := strings.Fields(mustRun(c, env.Node, argv...))
	if len(f) != len(ctSysctlNames) {
		c.Fatalf("read %v in the node namespace: got %q", ctSysctlNames, f)
	}
	s := sysctls{}
	for i, n := range ctSysctlNames {
		v, err := strconv.Atoi(f[i])
		if err != nil {
			c.Fatalf("%s: %v", n, err)
		}
		s[n] = v
	}
	return s
}

// setNodeSysctls writes s in the node namespace (never the host's).
func setNodeSysctls(ctx context.Context, s sysctls) error {
	var errs []error
	for n, v := range s {
		errs = append(errs, env.Node.Sysctl(ctx, "net.netfilter."+n, strconv.Itoa(v)))
	}
	return errors.Join(errs...)
}

// checkSysctls complains about each of want the node namespace does not hold.
func (c *tc) checkSysctls(what string, want sysctls) {
	c.Helper()
	got := c.nodeSysctls()
	for _, n := range ctSysctlNames {
		if w, ok := want[n]; ok && got[n] != w {
			c.Errorf("%s: %s is %d in the node namespace, want %d", what, n, got[n], w)
		}
	}
	c.Logf("%s: node namespace %v", what, got)
}

// ownSvcproxy is for a test that runs svcproxy its own way: when it ends,
// svcproxy is stopped, the node namespace's conntrack sysctls are put back
// as they are now (the node namespace serves the whole run), and svcproxy
// runs again with its usual flags.
func (c *tc) ownSvcproxy() {
	c.Helper()
	before := c.nodeSysctls()
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stopSvcproxy(c)
		if err := setNodeSysctls(ctx, before); err != nil {
			c.Errorf("restore the node namespace's conntrack sysctls: %v", err)
		}
		dropSharedFirewall(ctx)
		if err := env.StartSvcproxyAndWait(ctx, 30*time.Second); err != nil {
			svcproxyErr = err
			c.Errorf("restart svcproxy with its usual flags: %v", err)
		}
	})
}

// dropSharedFirewall removes the IPv4 KUBE-FIREWALL chain and its jumps,
// which --cleanup leaves (kubelet shares it): the restart then puts them
// back where a fresh node has them, first in INPUT and OUTPUT, and later
// tests (TestJumpOrder) see the node as svcproxy left it, not as this
// test's --cleanup did.
func dropSharedFirewall(ctx context.Context) {
	for _, chain := range []string{"INPUT", "OUTPUT"} {
		for i := 0; i < 4; i++ {
			if _, err := env.Node.Run(ctx, "iptables", "-t", "filter", "-D", chain, "-j", "KUBE-FIREWALL"); err != nil {
				break
			}
		}
	}
	env.Node.Run(ctx, "iptables", "-t", "filter", "-F", "KUBE-FIREWALL")
	env.Node.Run(ctx, "iptables", "-t", "filter", "-X", "KUBE-FIREWALL")
}

// svcproxyRun is a svcproxy a test started, and where its log starts.
type svcproxyRun struct {
	p   *harness.Process
	off int64
}

// log is what this svcproxy has logged so far.
func (r svcproxyRun) log(c *tc) string {
	c.Helper()
	b, err := os.ReadFile(r.p.LogPath)
	if err != nil {
		c.Fatal(err)
	}
	if r.off > int64(len(b)) {
		c.Fatalf("%s shrank", r.p.LogPath)
	}
	return string(b[r.off:])
}

// runSvcproxy stops svcproxy and starts it as l says, waiting for its
// first sync.
func (c *tc) runSvcproxy(l harness.Launch) svcproxyRun {
	c.Helper()
	stopSvcproxy(c)
	var off int64
	if st, err := os.Stat(filepath.Join(env.LogDir, "svcproxy.log")); err == nil {
		off = st.Size()
	}
	start := time.Now()
	p, err := env.StartSvcproxyAs(c.ctx, l)
	if err != nil {
		c.Fatal(err)
	}
	if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
		c.Fatalf("svcproxy %q: %v", l.Args, err)
	}
	c.since("svcproxy started and synced", start)
	return svcproxyRun{p: p, off: off}
}

// hostInt reads a number from a file of the host (reading only).
func hostInt(c *tc, path string) int {
	c.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		c.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		c.Fatalf("%s: %v", path, err)
	}
	return n
}

// closeWaitTimeout makes a connection from the client pod to target, an
// echo server that answers and closes: the client reads to the end and
// keeps its side open, so the connection is in CLOSE_WAIT. It returns the
// timeout of the connection's conntrack entry in the node namespace and
// the entry, as kube-proxy's e2e "should set TCP CLOSE_WAIT timeout" reads it.
func (c *tc) closeWaitTimeout(target string) (int, string) {
	c.Helper()
	conn, err := client.NS.DialContext(c.ctx, "tcp", target)
	if err != nil {
		c.Fatalf("connect to %s: %v", target, err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(conn); err != nil || len(b) == 0 {
		c.Fatalf("read from %s until it closes: %q, %v", target, b, err)
	}
	host, port, _ := net.SplitHostPort(target)
	sport := strconv.Itoa(conn.LocalAddr().(*net.TCPAddr).Port)
	var last []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		last = c.conntrackList("-p", "tcp", "--orig-src", client.IP, "--orig-port-src", sport, "--orig-dst", host, "--orig-port-dst", port)
		for _, l := range last {
			if f := strings.Fields(l); len(f) > 3 && f[3] == "CLOSE_WAIT" {
				t, err := strconv.Atoi(f[2])
				if err != nil {
					c.Fatalf("conntrack entry %q: %v", l, err)
				}
				return t, l
			}
		}
	}
	c.Fatalf("no CLOSE_WAIT conntrack entry from %s:%s to %s within 5s; entries: %q", client.IP, sport, target, last)
	return 0, ""
}

// TestConntrackTuning: svcproxy sets the node namespace's conntrack
// timeouts and tcp_be_liberal from --conntrack-* flags and from a --config
// conntrack section (every sysctl preset to another value first, so each
// read-back shows a write). nf_conntrack_max is read-only outside the
// host's namespace: a warning names it and the host's value and hash size
// stay. A connection through a Service that reaches CLOSE_WAIT gets the
// tuned timeout (at most 3600s, within 60s of it, as kube-proxy's e2e
// checks); a control run that leaves the kernel's 60s shows the check
// tells them apart. --init-only sets the sysctls and exits 0 without
// creating a rule, chain or table.
func TestConntrackTuning(t *testing.T) {
	c := begin(t)
	c.ownSvcproxy()
	svc := c.createService("ct-tuning", v1.ServiceSpec{})
	c.slice(svc, at(backends[0], harness.NodeName))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")

	const maxPath, hashPath = "/" + conntrack.MaxPath, "/" + conntrack.HashSizePath
	hostMax, hostHash := hostInt(c, maxPath), hostInt(c, hashPath)
	// A table size unlike the host's, so that svcproxy has to try writing it.
	ncpu := conntrack.NumCPU("/")
	perCore := 1000
	if perCore*ncpu == hostMax {
		perCore++
	}
	wantMax := perCore * ncpu
	maxWarning := fmt.Sprintf("Cannot set %s to %d, leaving it: read-only in this network namespace", maxPath, wantMax)
	tuningFlags := []string{"--conntrack-tcp-timeout-established=2h", "--conntrack-tcp-timeout-close-wait=1h",
		"--conntrack-udp-timeout=33s", "--conntrack-udp-timeout-stream=2m", "--conntrack-tcp-be-liberal",
		"--conntrack-max-per-core=" + strconv.Itoa(perCore), "--conntrack-min=0"}
	tuned := sysctls{ctEstablished: 7200, ctCloseWait: 3600, ctUDP: 33, ctUDPStream: 120, ctBeLiberal: 1}
	// 60s is the kernel's own CLOSE_WAIT timeout.
	preset := sysctls{ctEstablished: 1111, ctCloseWait: 60, ctUDP: 11, ctUDPStream: 22, ctBeLiberal: 0}

	config := filepath.Join(env.WorkDir, "conntrack-tuning.conf")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: %s
clusterCIDR: %s,%s
metricsBindAddress: %s
healthzBindAddress: %s
%s:
  minSyncPeriod: 100ms
conntrack:
  maxPerCore: %d
  min: 0
  tcpEstablishedTimeout: 2h0m0s
  tcpCloseWaitTimeout: 1h0m0s
  tcpBeLiberal: true
  udpTimeout: 33s
  udpStreamTimeout: 2m0s
`, env.Kubeconfig, env.ProxyMode, harness.ClusterCIDR, harness.ClusterCIDR6, harness.MetricsAddr, harness.HealthzAddr, env.ProxyMode, perCore)), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, cs := range []struct {
		name string
		args []string
		want sysctls
		// closeWait: the CLOSE_WAIT entry's timeout is at most this, and
		// within 60s of it.
		closeWait int
		maxWarn   bool
	}{
		{"flags", tuningFlags, tuned, 3600, true},
		{"config", []string{"--config", config}, tuned, 3600, true},
		// The control: nothing tunes CLOSE_WAIT, the kernel's 60s stays.
		{"untuned-close-wait", []string{"--conntrack-tcp-timeout-close-wait=0s"}, sysctls{ctEstablished: 86400, ctCloseWait: 60}, 60, false},
	} {
		t.Run(cs.name, func(t *testing.T) {
			c := &tc{T: t, ctx: c.ctx, start: time.Now()}
			if err := setNodeSysctls(c.ctx, preset); err != nil {
				t.Fatal(err)
			}
			run := c.runSvcproxy(harness.Launch{Args: env.SvcproxyArgs(cs.args...)})
			c.checkSysctls(cs.name, cs.want)

			if cs.maxWarn {
				mode := strings.TrimSpace(mustRun(c, env.Node, "stat", "-c", "%a", maxPath))
				if mode != "444" {
					t.Errorf("%s is mode %s in the node namespace, want 444 (read-only outside the host's)", maxPath, mode)
				}
				if log := run.log(c); !strings.Contains(log, maxWarning) {
					t.Errorf("svcproxy's log lacks %q", maxWarning)
				}
			}
			if got := hostInt(c, maxPath); got != hostMax {
				t.Errorf("the host's %s changed: %d, was %d", maxPath, got, hostMax)
			}
			if got := hostInt(c, hashPath); got != hostHash {
				t.Errorf("the host's %s changed: %d, was %d", hashPath, got, hostHash)
			}

			var timeout int
			var entry string
			c.eventually("the Service answers", func() string {
				return landed(c.connect(client, harness.ClientOptions{Target: target, Count: 1}), backends[:1], "", "")
			})
			timeout, entry = c.closeWaitTimeout(target)
			if timeout > cs.closeWait || timeout < cs.closeWait-60 {
				t.Errorf("CLOSE_WAIT entry's timeout is %ds, want %d-%ds: %s", timeout, cs.closeWait-60, cs.closeWait, entry)
			}
			t.Logf("RESULT %s: sysctls %v; CLOSE_WAIT entry timeout %ds (%s); host nf_conntrack_max %d and hashsize %d unchanged",
				cs.name, cs.want, timeout, entry, hostMax, hostHash)
		})
	}

	t.Run("init-only", func(t *testing.T) {
		c := &tc{T: t, ctx: c.ctx, start: time.Now()}
		stopSvcproxy(t)
		if out, err := env.Node.Command(c.ctx, env.Bins.Svcproxy, "--cleanup").CombinedOutput(); err != nil {
			t.Fatalf("svcproxy --cleanup: %v: %s", err, out)
		}
		before := kernelSnapshot(c)
		if left := ownedLines(before); left != "" {
			t.Fatalf("after --cleanup the node still has:\n%s", left)
		}
		if err := setNodeSysctls(c.ctx, preset); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		defer cancel()
		argv := append([]string{env.Bins.Svcproxy}, env.SvcproxyArgs(append([]string{"--init-only"}, tuningFlags...)...)...)
		out, err := env.Node.Command(ctx, argv...).CombinedOutput()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit):
			t.Fatalf("svcproxy --init-only exited %d:\n%s", exit.ExitCode(), out)
		case err != nil:
			t.Fatalf("svcproxy --init-only: %v:\n%s", err, out)
		}
		if !strings.Contains(string(out), "exiting (--init-only)") {
			t.Errorf("svcproxy --init-only's output lacks its exit line:\n%s", out)
		}
		c.checkSysctls("--init-only", tuned)
		after := kernelSnapshot(c)
		for k := range before {
			if after[k] != before[k] {
				t.Errorf("--init-only changed %s:\n%s", k, lineDiff(before[k], after[k]))
			}
		}
		if made := ownedLines(after); made != "" {
			t.Errorf("--init-only created:\n%s", made)
		}
		t.Logf("RESULT --init-only: exit 0, sysctls %v, no rule, chain or table made", tuned)
	})
}

// ownedTableRe matches the nftables tables of svcproxy and kube-proxy.
var ownedTableRe = regexp.MustCompile(`^table (ip|ip6|inet) (svcproxy|kube-proxy) `)

// ownedLines are the lines of a kernelSnapshot that belong to svcproxy or
// kube-proxy: KUBE-* chains and rules, their nftables tables.
// KUBE-FIREWALL, shared with kubelet, is left out, as --cleanup leaves it.
func ownedLines(snap map[string]string) string {
	var out []string
	for _, k := range []string{"iptables-save", "ip6tables-save", "nft list ruleset"} {
		for _, l := range strings.Split(snap[k], "\n") {
			if strings.Contains(l, "KUBE-FIREWALL") {
				continue
			}
			if strings.Contains(l, "KUBE-") || ownedTableRe.MatchString(l) {
				out = append(out, k+": "+l)
			}
		}
	}
	return strings.Join(out, "\n")
}
