package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SvcproxyArgs are the flags svcproxy runs with in the node namespace,
// followed by Options.SvcproxyArgs and extra.
func (e *Env) SvcproxyArgs(extra ...string) []string {
	args := []string{
		"--kubeconfig", e.Kubeconfig,
		"--hostname-override", NodeName,
		"--proxy-mode", e.ProxyMode,
		"--cluster-cidr", ClusterCIDR + "," + ClusterCIDR6,
		"--service-cluster-ip-range", ServiceCIDR + "," + ServiceCIDR6,
		"--iptables-min-sync-period", "100ms",
		"--metrics-bind-address", MetricsAddr,
		"--healthz-bind-address", HealthzAddr,
		"-v=2",
	}
	args = append(args, e.extra...)
	return append(args, extra...)
}

// StartSvcproxy starts svcproxy in the node namespace (logging to
// svcproxy.log; restarts append to it). Only one runs at a time.
func (e *Env) StartSvcproxy(ctx context.Context, extra ...string) (*Process, error) {
	if e.Bins.Svcproxy == "" {
		return nil, errors.New("svcproxy was not built (Options.SkipSvcproxy)")
	}
	e.mu.Lock()
	running := e.svcproxy
	e.mu.Unlock()
	if running != nil {
		if exited, _ := running.Exited(); !exited {
			return nil, fmt.Errorf("svcproxy is already running (pid %d)", running.Pid())
		}
	}
	p, err := e.StartProcess(e.Node, "svcproxy", append([]string{e.Bins.Svcproxy}, e.SvcproxyArgs(extra...)...)...)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.svcproxy = p
	e.mu.Unlock()
	return p, nil
}

// Svcproxy is the svcproxy process last started, or nil.
func (e *Env) Svcproxy() *Process {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.svcproxy
}

// StopSvcproxy sends sig to svcproxy and waits up to 10s for it to exit
// (then kills it). It returns how svcproxy exited.
func (e *Env) StopSvcproxy(sig syscall.Signal) error {
	p := e.Svcproxy()
	if p == nil {
		return nil
	}
	return p.Stop(sig, 10*time.Second)
}

// WaitSvcproxySynced waits until the running svcproxy has completed at
// least one sync, as its kubeproxy_sync_proxy_rules_duration_seconds_count
// metric tells.
func (e *Env) WaitSvcproxySynced(ctx context.Context, timeout time.Duration) error {
	p := e.Svcproxy()
	if p == nil {
		return errors.New("svcproxy is not running")
	}
	var last string
	err := e.poll(ctx, timeout, p, "svcproxy's first sync", func() (bool, error) {
		_, body, err := e.NodeHTTPGet(ctx, "http://"+MetricsAddr+"/metrics")
		if err != nil {
			last = err.Error()
			return false, nil
		}
		n, ok := MetricValue(body, "kubeproxy_sync_proxy_rules_duration_seconds_count")
		last = fmt.Sprintf("kubeproxy_sync_proxy_rules_duration_seconds_count=%v (present=%v)", n, ok)
		return ok && n >= 1, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// StartSvcproxyAndWait starts svcproxy with extra flags and waits up to
// timeout for its first sync.
func (e *Env) StartSvcproxyAndWait(ctx context.Context, timeout time.Duration, extra ...string) error {
	if _, err := e.StartSvcproxy(ctx, extra...); err != nil {
		return err
	}
	return e.WaitSvcproxySynced(ctx, timeout)
}

// RestartSvcproxy stops svcproxy (SIGTERM), fails if it did not exit
// cleanly, and starts it again with extra flags, waiting up to timeout for
// its first sync.
func (e *Env) RestartSvcproxy(ctx context.Context, timeout time.Duration, extra ...string) error {
	if err := e.StopSvcproxy(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop svcproxy: %w", err)
	}
	return e.StartSvcproxyAndWait(ctx, timeout, extra...)
}

// DryRun runs `svcproxy --dry-run` (with the usual flags) in the node
// namespace and returns its stdout and stderr.
func (e *Env) DryRun(ctx context.Context, extra ...string) (stdout, stderr string, err error) {
	if e.Bins.Svcproxy == "" {
		return "", "", errors.New("svcproxy was not built (Options.SkipSvcproxy)")
	}
	cmd := e.Node.Command(ctx, append([]string{e.Bins.Svcproxy}, e.SvcproxyArgs(append([]string{"--dry-run"}, extra...)...)...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// IPTablesSave returns `iptables-save` of the node namespace, of one table
// or (table "") of all.
func (e *Env) IPTablesSave(ctx context.Context, table string) (string, error) {
	argv := []string{"iptables-save"}
	if table != "" {
		argv = append(argv, "-t", table)
	}
	return e.Node.Run(ctx, argv...)
}

// WaitForNAT polls `iptables-save -t nat` in the node namespace every 50ms
// until pred holds, and returns the dump that satisfied it. On timeout the
// error includes the last dump.
func (e *Env) WaitForNAT(ctx context.Context, timeout time.Duration, pred func(nat string) bool) (string, error) {
	var last string
	err := e.poll(ctx, timeout, nil, "iptables nat rules", func() (bool, error) {
		out, err := e.IPTablesSave(ctx, "nat")
		if err != nil {
			return false, err
		}
		last = out
		return pred(out), nil
	})
	if err != nil {
		if p := e.Svcproxy(); p != nil {
			if exited, _ := p.Exited(); exited {
				err = fmt.Errorf("%w; %v", err, p.errExited())
			}
		}
		return last, fmt.Errorf("%w; last iptables-save -t nat:\n%s", err, last)
	}
	return last, nil
}

var dnatRe = regexp.MustCompile(`--to-destination (\S+)`)

// ServiceDNATs returns the sorted DNAT destinations ("IP:port") of the
// rules whose comment names the Service port ns/name:port (port "" for an
// unnamed port), as kube-proxy's and svcproxy's rule comments do.
func ServiceDNATs(nat, namespace, name, port string) []string {
	key := namespace + "/" + name
	if port != "" {
		key += ":" + port
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(nat, "\n") {
		if !strings.Contains(line, `--comment "`+key+`"`) && !strings.Contains(line, `--comment `+key+` `) {
			continue
		}
		if m := dnatRe.FindStringSubmatch(line); m != nil {
			seen[m[1]] = true
		}
	}
	out := make([]string, 0, len(seen))
	for d := range seen {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// WaitForServiceDNATs waits until the nat table DNATs the Service port to
// exactly the given endpoints ("IP:port").
func (e *Env) WaitForServiceDNATs(ctx context.Context, timeout time.Duration, namespace, name, port string, want ...string) (string, error) {
	want = append([]string(nil), want...)
	sort.Strings(want)
	w := strings.Join(want, ",")
	if e.ProxyMode == "nftables" {
		return e.waitForNFTServiceDNATs(ctx, timeout, namespace, name, port, w)
	}
	return e.WaitForNAT(ctx, timeout, func(nat string) bool {
		return strings.Join(ServiceDNATs(nat, namespace, name, port), ",") == w
	})
}

// MetricValue sums every sample of the metric name (any labels) in a
// Prometheus text exposition; ok is false when there is none.
func MetricValue(exposition, name string) (v float64, ok bool) {
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if i := strings.LastIndex(rest, "}"); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		x, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		v += x
		ok = true
	}
	return v, ok
}

// Diagnostics describes the node for a failure report: svcproxy's last log
// lines, the nat table, and where all logs are.
func (e *Env) Diagnostics(ctx context.Context) string {
	var b strings.Builder
	if p := e.Svcproxy(); p != nil {
		exited, err := p.Exited()
		fmt.Fprintf(&b, "svcproxy (pid %d, exited=%v %v), last lines of %s:\n%s\n", p.Pid(), exited, err, p.LogPath, tailLog(p.LogPath, 30))
	}
	if e.ProxyMode == "nftables" {
		out, err := e.NFTList(ctx, "ruleset")
		fmt.Fprintf(&b, "nft list ruleset in %s (%v):\n%s\n", e.Node.Name, err, out)
	}
	for _, table := range []string{"filter", "nat"} {
		if e.ProxyMode == "nftables" {
			break
		}
		if out, err := e.IPTablesSave(ctx, table); err == nil {
			fmt.Fprintf(&b, "iptables-save -t %s in %s:\n%s\n", table, e.Node.Name, out)
		} else {
			fmt.Fprintf(&b, "iptables-save -t %s: %v\n", table, err)
		}
	}
	fmt.Fprintf(&b, "logs in %s: %s\n", e.LogDir, strings.Join(relNames(e.LogPaths()), " "))
	return b.String()
}

// tailLog is the last n lines of a klog log, without client-go's
// feature-gate chatter.
func tailLog(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if !strings.Contains(l, "Feature gate default state") {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func relNames(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = filepath.Base(p)
	}
	return out
}
