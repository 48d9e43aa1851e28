// Package e2e runs svcproxy against a real kube-apiserver and etcd, in
// network namespaces with real traffic (see package harness). One cluster
// is shared by the whole package: a node namespace with the control plane
// and svcproxy, backend pods a, b and c and a pod "client", each running
// an echo server that names itself and the source address it saw. Every
// test uses its own Kubernetes namespace and Services.
//
// The tests need root and skip otherwise. The first run builds
// kube-apiserver and etcd (about 8-10 minutes on 2 cores) into a cache,
// see harness.CacheBase. SVCPROXY_E2E_ARGS adds flags to every svcproxy
// the tests run (e.g. "--masquerade-all" to see the source checks fail).
//
// The tests run one at a time, in file order, sharing the cluster; only
// TestScale calls t.Parallel, which makes it run after all the others.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

var (
	env         *harness.Env
	setupErr    error // the cluster could not be set up
	svcproxyErr error // svcproxy did not start or sync
	skipReason  string

	backends []*harness.Pod // a, b, c
	client   *harness.Pod   // also an echo server, for hairpin
)

var startTime = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[e2e %6.1fs] %s\n", time.Since(startTime).Seconds(), fmt.Sprintf(format, args...))
}

func TestMain(m *testing.M) {
	flag.Parse()
	switch {
	case os.Geteuid() != 0:
		skipReason = "e2e tests need root (network namespaces, iptables): skipping; run `sudo make e2e` or as root"
	case testing.Short():
		skipReason = "e2e tests skipped in -short mode"
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if skipReason == "" {
		// A cold build of kube-apiserver and etcd takes most of this.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		setupErr = setup(ctx)
		cancel()
		if setupErr != nil {
			logf("setup failed: %v", setupErr)
		}
	}
	code := m.Run()
	if env != nil {
		if code != 0 {
			env.KeepWorkDir()
			logf("FAILED; logs kept in %s: %s", env.LogDir, strings.Join(mainLogs(env.LogPaths()), " "))
		}
		start := time.Now()
		if err := env.Close(); err != nil {
			logf("teardown: %v", err)
			if code == 0 {
				code = 1
			}
		} else {
			logf("torn down in %v", time.Since(start).Round(time.Millisecond))
		}
	}
	return code
}

func setup(ctx context.Context) error {
	start := time.Now()
	var err error
	extra := strings.Fields(os.Getenv("SVCPROXY_E2E_ARGS"))
	if len(extra) > 0 {
		logf("extra svcproxy flags from SVCPROXY_E2E_ARGS: %q", extra)
	}
	mode := os.Getenv("SVCPROXY_E2E_PROXY_MODE")
	if mode == "" {
		mode = "iptables"
	}
	logf("proxy mode %s (SVCPROXY_E2E_PROXY_MODE)", mode)
	env, err = harness.New(ctx, harness.Options{Logf: logf, ProxyMode: mode, SvcproxyArgs: extra})
	if err != nil {
		return err
	}
	logf("run prefix %s, work dir %s", env.Prefix, env.WorkDir)
	pods, err := env.AddEchoPods(ctx, "a", "b", "c", "client")
	if err != nil {
		return err
	}
	backends, client = pods[:3], pods[3]
	// The outside client's addresses (harness.ExtAllowedIP and
	// ExtBlockedIP), for the tests that connect from beyond the node.
	if err := env.SetupExternalClients(ctx); err != nil {
		return err
	}
	logf("pods a, b, c, client up (%v since start)", time.Since(start).Round(time.Millisecond))
	t := time.Now()
	svcproxyErr = env.StartSvcproxyAndWait(ctx, 60*time.Second)
	if svcproxyErr != nil {
		logf("svcproxy: %v", svcproxyErr)
	} else {
		logf("svcproxy started and synced in %v; setup took %v", time.Since(t).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// tc is one test's context.
type tc struct {
	*testing.T
	ctx      context.Context
	start    time.Time
	diagOnce sync.Once
}

// begin skips or fails the test when the shared cluster or its svcproxy
// is not there, and on failure logs the node's state.
func begin(t *testing.T) *tc {
	t.Helper()
	c := beginWithoutSvcproxy(t)
	if svcproxyErr != nil {
		t.Fatalf("svcproxy is not running: %v", svcproxyErr)
	}
	return c
}

// beginWithoutSvcproxy starts a test that needs the cluster but not the
// shared svcproxy (it runs its own, or none).
func beginWithoutSvcproxy(t *testing.T) *tc {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if setupErr != nil {
		t.Fatalf("e2e cluster setup failed: %v", setupErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c := &tc{T: t, ctx: ctx, start: time.Now()}
	t.Cleanup(func() {
		c.diagnose()
		cancel()
		t.Logf("timing: test took %v", time.Since(c.start).Round(time.Millisecond))
	})
	return c
}

// stopSvcproxy stops the shared svcproxy with SIGTERM, as a test does
// before it starts one of its own; an unclean exit is logged, not failed.
func stopSvcproxy(t testing.TB) {
	t.Helper()
	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Logf("svcproxy stop: %v", err)
	}
}

// stopSvcproxyCleanly stops the shared svcproxy with SIGTERM and fails the
// test unless it exits cleanly.
func stopSvcproxyCleanly(t testing.TB) {
	t.Helper()
	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Errorf("svcproxy did not exit cleanly on SIGTERM: %v", err)
	}
}

// onlyIn skips the test, saying why, unless svcproxy runs in mode
// (iptables or nftables).
func (c *tc) onlyIn(mode, why string) {
	c.Helper()
	if env.ProxyMode != mode {
		c.Skip(why)
	}
}

// diagnose logs svcproxy's log tail and the nat table once, if the test
// failed. It runs before the test's Services are deleted.
func (c *tc) diagnose() {
	if !c.Failed() {
		return
	}
	c.diagOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Logf("diagnostics:\n%s", env.Diagnostics(ctx))
	})
}

// since logs a timing step.
func (c *tc) since(what string, t time.Time) time.Duration {
	c.Helper()
	d := time.Since(t)
	c.Logf("timing: %s: %v", what, d.Round(time.Millisecond))
	return d
}

// mainLogs leaves out the many echo client logs.
func mainLogs(paths []string) []string {
	var out []string
	for _, p := range paths {
		if !strings.Contains(filepath.Base(p), "client-") {
			out = append(out, filepath.Base(p))
		}
	}
	return out
}

// restartSvcproxy restarts svcproxy with extra flags; when the test ends it
// is restarted with the usual ones.
func (c *tc) restartSvcproxy(extra ...string) {
	c.Helper()
	start := func(extra ...string) error {
		stopSvcproxy(c)
		return env.StartSvcproxyAndWait(context.Background(), 30*time.Second, extra...)
	}
	if err := start(extra...); err != nil {
		c.Fatalf("restart svcproxy with %v: %v", extra, err)
	}
	c.Cleanup(func() {
		if err := start(); err != nil {
			c.Errorf("restart svcproxy with its usual flags: %v", err)
		}
	})
}

// mustRun runs argv in ns and returns its output, or fails the test.
func mustRun(c *tc, ns *harness.Netns, argv ...string) string {
	c.Helper()
	out, err := ns.Run(c.ctx, argv...)
	if err != nil {
		c.Fatalf("%s in %s: %v: %s", strings.Join(argv, " "), ns.Name, err, out)
	}
	return out
}
