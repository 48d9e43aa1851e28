// Package harness runs svcproxy against real components: a kube-apiserver
// and etcd built from e2e/tools, and a "node" network namespace with pods
// (network namespaces on a bridge) that run an echo server.
//
// Everything lives in network namespaces named with a per-run prefix
// ("svp" and 6 random hex digits), created by the harness and deleted on
// Close. Nothing is changed in the host's namespace: veths are created
// inside the node namespace with their peer placed directly in the pod's,
// sysctls are set with `ip netns exec`, and the test process reaches the
// API server and svcproxy's HTTP endpoints through sockets it creates inside
// the node namespace (setns on a locked thread), never through a host port.
// A small reaper process, started first, deletes the run's namespaces if the
// process using the harness dies without calling Close (panic, test
// timeout, SIGKILL).
//
// Layout (inside <prefix>-node):
//
//	lo            127.0.0.1: etcd :2379, kube-apiserver :6443,
//	              svcproxy metrics :10249 and healthz :10256
//	eth0          192.0.2.10/24 (TEST-NET-1), the node's NIC, with the
//	              default route via 192.0.2.1 in <prefix>-ext
//	br0           10.244.1.1/24, the node's pod bridge (cluster CIDR 10.244.0.0/16)
//	v-<pod>       bridge port (hairpin on) whose peer is eth0 in <prefix>-<pod>
//
// Each pod has 10.244.1.N/24 on eth0 and a default route via 10.244.1.1.
//
// <prefix>-ext is the network outside the node: 192.0.2.1/24 on its eth0
// (the node's gateway), forwarding off, so whatever the node routes there
// is dropped and nothing leaves the run's namespaces. A real node has a
// default route; without one, a packet to a ClusterIP that no rule DNATs
// would fail routing before the filter table's REJECT rules could see it.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The addresses of the simulated cluster.
const (
	NodeName    = "node-1"
	NodeIP      = "192.0.2.10" // eth0 in the node namespace: the Node's InternalIP
	GatewayIP   = "192.0.2.1"  // eth0 in the ext namespace
	BridgeIP    = "10.244.1.1" // br0 in the node namespace: the pods' gateway
	PodCIDR     = "10.244.1.0/24"
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/16"

	// IPv6: the node, pods and the ext namespace are dual-stack.
	NodeIP6       = "fd00:192:0:2::10"
	GatewayIP6    = "fd00:192:0:2::1"
	BridgeIP6     = "fd00:10:244:1::1"
	ClusterCIDR6  = "fd00:10:244::/48"
	ServiceCIDR6  = "fd00:10:96::/112"
	EchoPort      = 8080
	APIServerAddr = "127.0.0.1:6443"
	EtcdAddr      = "127.0.0.1:2379"
	MetricsAddr   = "127.0.0.1:10249"
	HealthzAddr   = "127.0.0.1:10256"
)

// Options configure New.
type Options struct {
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
	// Prefix of every namespace; default "svp" and 6 random hex digits.
	Prefix string
	// WorkDir holds logs, certificates and etcd's data; default a new
	// temporary directory, removed by Close unless KeepWorkDir was called.
	WorkDir string
	// SkipSvcproxy skips building svcproxy (for working on the harness
	// while cmd/svcproxy does not build).
	SkipSvcproxy bool
	// ProxyMode is svcproxy's --proxy-mode: "iptables" (the default) or
	// "nftables".
	ProxyMode string
	// SvcproxyArgs are appended to svcproxy's flags (see SvcproxyArgs),
	// e.g. to try another mode.
	SvcproxyArgs []string
}

// Env is one run: binaries, namespaces, control plane, pods and svcproxy.
type Env struct {
	Prefix    string
	WorkDir   string
	ProxyMode string // iptables or nftables
	LogDir    string
	Root      string // the main module's directory
	Bins      Binaries

	Node      *Netns // the node: control plane, svcproxy, pod bridge
	Ext       *Netns // the network beyond the node's eth0 (its default gateway)
	node2     *Netns // see Node2
	node2Once sync.Once

	// Kubeconfig is the file svcproxy uses; RestConfig and Client reach
	// the same API server from the host's namespace.
	Kubeconfig string
	Token      string
	RestConfig *rest.Config
	Client     kubernetes.Interface

	logf     func(string, ...any)
	extra    []string
	mu       sync.Mutex
	pods     []*Pod
	procs    []*Process
	netns    []*Netns
	svcproxy *Process
	nextIP   int
	keep     bool
	closed   bool
	reaper   *exec.Cmd
	reaperW  *os.File
}

// New builds what is missing and starts a node namespace with the control
// plane in it. On error everything already made is torn down.
func New(ctx context.Context, opts Options) (e *Env, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the e2e harness needs root (network namespaces, iptables)")
	}
	for _, c := range []string{"ip", "bridge", "sysctl", "iptables-save", "iptables-restore", "go"} {
		if _, err := exec.LookPath(c); err != nil {
			return nil, fmt.Errorf("%s not found in PATH (run `make deps` as root)", c)
		}
	}
	e = &Env{Prefix: opts.Prefix, WorkDir: opts.WorkDir, ProxyMode: opts.ProxyMode, logf: opts.Logf, extra: opts.SvcproxyArgs, nextIP: 10}
	if e.ProxyMode == "" {
		e.ProxyMode = "iptables"
	}
	if e.logf == nil {
		e.logf = func(string, ...any) {}
	}
	if e.Prefix == "" {
		b := make([]byte, 3)
		rand.Read(b)
		e.Prefix = "svp" + hex.EncodeToString(b)
	}
	if e.WorkDir == "" {
		if e.WorkDir, err = os.MkdirTemp("", "svcproxy-e2e-"+e.Prefix+"-"); err != nil {
			return nil, err
		}
	}
	e.LogDir = filepath.Join(e.WorkDir, "logs")
	if err := os.MkdirAll(e.LogDir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.keep = true
			if cerr := e.Close(); cerr != nil {
				err = fmt.Errorf("%w (teardown: %v)", err, cerr)
			}
			err = fmt.Errorf("%w\n(logs kept in %s)", err, e.LogDir)
			e = nil
		}
	}()
	if err := e.startReaper(); err != nil {
		return e, err
	}
	if e.Root, err = ModuleRoot(); err != nil {
		return e, err
	}

	start := time.Now()
	binDir := filepath.Join(e.WorkDir, "bin")
	e.Bins.Echo = filepath.Join(binDir, "echo")
	if err := goBuild(ctx, e.Root, e.Bins.Echo, "./e2e/cmd/echo"); err != nil {
		return e, err
	}
	if !opts.SkipSvcproxy {
		e.Bins.Svcproxy = filepath.Join(binDir, "svcproxy")
		if err := goBuild(ctx, e.Root, e.Bins.Svcproxy, "./cmd/svcproxy"); err != nil {
			return e, err
		}
	}
	if e.Bins.APIServer, e.Bins.Etcd, err = BuildTools(ctx, e.Root, e.logf); err != nil {
		return e, err
	}
	e.logf("binaries ready in %v (kube-apiserver and etcd from %s)", time.Since(start).Round(time.Millisecond), filepath.Dir(e.Bins.APIServer))

	start = time.Now()
	if err := e.setupNode(ctx); err != nil {
		return e, err
	}
	e.logf("node namespace %s ready in %v", e.Node.Name, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := e.startControlPlane(ctx); err != nil {
		return e, err
	}
	e.logf("etcd and kube-apiserver ready in %v", time.Since(start).Round(time.Millisecond))
	return e, nil
}

// Logf logs through Options.Logf.
func (e *Env) Logf(format string, args ...any) { e.logf(format, args...) }

// KeepWorkDir keeps the work directory (logs) after Close, e.g. after a
// failure.
func (e *Env) KeepWorkDir() {
	e.mu.Lock()
	e.keep = true
	e.mu.Unlock()
}

// LogPaths lists the log files of every process started so far.
func (e *Env) LogPaths() []string {
	m, _ := filepath.Glob(filepath.Join(e.LogDir, "*.log"))
	sort.Strings(m)
	return m
}

// newNetns creates <prefix>-<suffix> and remembers it for Close.
func (e *Env) newNetns(ctx context.Context, suffix string) (*Netns, error) {
	n := &Netns{Name: e.Prefix + "-" + suffix}
	if _, err := runCmd(exec.CommandContext(ctx, "ip", "netns", "add", n.Name)); err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.netns = append(e.netns, n)
	e.mu.Unlock()
	return n, n.runAll(ctx, []string{"ip", "link", "set", "lo", "up"})
}

func (e *Env) setupNode(ctx context.Context) error {
	node, err := e.newNetns(ctx, "node")
	if err != nil {
		return err
	}
	e.Node = node
	ext, err := e.newNetns(ctx, "ext")
	if err != nil {
		return err
	}
	e.Ext = ext
	if err := node.runAll(ctx,
		[]string{"ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ext.Name},
		[]string{"ip", "addr", "add", NodeIP + "/24", "dev", "eth0"},
		[]string{"ip", "link", "set", "eth0", "up"},
	); err != nil {
		return err
	}
	if err := ext.runAll(ctx,
		[]string{"ip", "addr", "add", GatewayIP + "/24", "dev", "eth0"},
		[]string{"ip", "link", "set", "eth0", "up"},
	); err != nil {
		return err
	}
	if err := node.runAll(ctx,
		[]string{"ip", "route", "add", "default", "via", GatewayIP, "dev", "eth0"},
		[]string{"ip", "link", "add", "br0", "type", "bridge"},
		[]string{"ip", "addr", "add", BridgeIP + "/24", "dev", "br0"},
		[]string{"ip", "link", "set", "br0", "up"},
	); err != nil {
		return err
	}
	if err := node.Sysctl(ctx, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	// IPv6 (nodad: usable at once, no duplicate address detection wait).
	if err := node.Sysctl(ctx, "net.ipv6.conf.all.forwarding", "1"); err != nil {
		return err
	}
	if err := node.runAll(ctx,
		[]string{"ip", "-6", "addr", "add", NodeIP6 + "/64", "dev", "eth0", "nodad"},
		[]string{"ip", "-6", "addr", "add", BridgeIP6 + "/64", "dev", "br0", "nodad"},
		[]string{"ip", "-6", "route", "add", "default", "via", GatewayIP6, "dev", "eth0"},
	); err != nil {
		return err
	}
	if err := ext.runAll(ctx,
		[]string{"ip", "-6", "addr", "add", GatewayIP6 + "/64", "dev", "eth0", "nodad"},
	); err != nil {
		return err
	}
	if err := node.Sysctl(ctx, "net.bridge.bridge-nf-call-ip6tables", "1"); err != nil {
		e.logf("bridge-nf-call-ip6tables: %v", err)
	}
	// REJECT answers with ICMP errors, which the kernel rate-limits per
	// destination (a burst of 6, then one per second): a test that makes a
	// few refused connections in a row would see timeouts instead.
	if err := node.Sysctl(ctx, "net.ipv4.icmp_ratelimit", "0"); err != nil {
		return err
	}
	// br_netfilter: bridged pod-to-pod frames go through iptables, so the
	// replies of DNATed connections are un-NATed. Per namespace.
	if err := node.Sysctl(ctx, "net.bridge.bridge-nf-call-iptables", "1"); err != nil {
		return fmt.Errorf("%w (is the br_netfilter module available?)", err)
	}
	return nil
}

// StartProcess starts a long-running program inside ns, with stdout and
// stderr appended to <LogDir>/<name>.log, and tracks it: Close stops it.
func (e *Env) StartProcess(ns *Netns, name string, argv ...string) (*Process, error) {
	p, err := startProcess(ns, name, filepath.Join(e.LogDir, name+".log"), nil, argv...)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

// Close stops every process (svcproxy first, then pods' programs, the API
// server and etcd), deletes every namespace of this run, and removes the
// work directory unless KeepWorkDir was called. It is safe to call on a
// partly set up Env and more than once.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	procs := append([]*Process(nil), e.procs...)
	nss := append([]*Netns(nil), e.netns...)
	keep := e.keep
	e.mu.Unlock()

	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(syscall.SIGTERM, 5*time.Second)
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNetns(nss[i].Name); err != nil {
			errs = append(errs, err)
		}
	}
	// Anything of this run's prefix that is still there (e.g. made by a
	// half-finished step).
	if names, err := ListNetns(); err == nil {
		for _, n := range names {
			if strings.HasPrefix(n, e.Prefix+"-") {
				if err := deleteNetns(n); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if left := e.leftovers(); len(left) > 0 {
			errs = append(errs, fmt.Errorf("namespaces left behind: %v", left))
		}
	} else {
		errs = append(errs, err)
	}
	e.stopReaper()
	if !keep && e.WorkDir != "" {
		os.RemoveAll(e.WorkDir)
	}
	return errors.Join(errs...)
}

// leftovers are this run's namespaces that still exist.
func (e *Env) leftovers() []string {
	names, _ := ListNetns()
	var left []string
	for _, n := range names {
		if strings.HasPrefix(n, e.Prefix+"-") {
			left = append(left, n)
		}
	}
	return left
}

// reaperScript deletes the run's namespaces (and kills what runs in them)
// once its stdin reaches EOF, i.e. when the harness process has gone.
const reaperScript = `trap '' INT TERM HUP
read -r _ || true
for ns in $(ip netns list | awk '{print $1}'); do
	case "$ns" in
	"$1"-*)
		for p in $(ip netns pids "$ns"); do kill -9 "$p"; done
		ip netns delete "$ns"
		;;
	esac
done
`

func (e *Env) startReaper() error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd := exec.Command("sh", "-c", reaperScript, "svcproxy-e2e-reaper", e.Prefix)
	cmd.Stdin = r
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("start reaper: %w", err)
	}
	r.Close()
	e.reaper, e.reaperW = cmd, w
	return nil
}

func (e *Env) stopReaper() {
	if e.reaper == nil {
		return
	}
	e.reaperW.Close() // EOF: it sweeps (nothing is left) and exits
	done := make(chan struct{})
	go func() { e.reaper.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		e.reaper.Process.Kill()
	}
	e.reaper = nil
}
