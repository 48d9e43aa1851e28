package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubeproxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// svcproxy in place of kube-proxy, run with the argument lists installers
// give kube-proxy.

// kubeadmConfig is the KubeProxyConfiguration kubeadm writes into its
// kube-proxy ConfigMap (config.conf), made as kubeadm makes it: the type
// with the kubeconfig, bind address and pod subnet set, marshalled whole,
// so every other field is spelled out with a zero value (kube-proxy's
// default). mode is the run's (kubeadm leaves it empty: iptables).
func kubeadmConfig(c *tc, mode string) []byte {
	c.Helper()
	cfg := kubeproxyv1alpha1.KubeProxyConfiguration{
		TypeMeta:    metav1.TypeMeta{APIVersion: "kubeproxy.config.k8s.io/v1alpha1", Kind: "KubeProxyConfiguration"},
		BindAddress: "0.0.0.0",
		ClusterCIDR: harness.ClusterCIDR + "," + harness.ClusterCIDR6,
		Mode:        kubeproxyv1alpha1.ProxyMode(mode),
	}
	cfg.ClientConnection.Kubeconfig = env.Kubeconfig
	b, err := yaml.Marshal(cfg)
	if err != nil {
		c.Fatal(err)
	}
	return b
}

// eksConfig is the KubeProxyConfiguration of EKS's kube-proxy-config
// ConfigMap: no cluster CIDR (VPC CNI pods), a mode (the run's here), and
// udpIdleTimeout, a field kube-proxy no longer has, so that strict
// decoding fails and the lenient one is used, as kube-proxy does.
const eksConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: %s
  qps: 5
clusterCIDR: ""
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
enableProfiling: false
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: ""
iptables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  syncPeriod: 30s
kind: KubeProxyConfiguration
metricsBindAddress: 0.0.0.0:10249
mode: "%s"
nodePortAddresses: null
oomScoreAdj: -998
portRange: ""
udpIdleTimeout: 250ms
`

// installerCase is one installer's argument list.
type installerCase struct {
	name string
	// mode is the only mode the list runs in ("" for either).
	mode   string
	launch harness.Launch
	// cidr is the IPv4 cluster CIDR the list gives ("" for none): pod
	// traffic to a ClusterIP from outside it is masqueraded.
	cidr string
	// oom is the OOM score adjustment svcproxy should run with.
	oom int
	// want are the node namespace's conntrack sysctls after start, from
	// installerPreset.
	want sysctls
	// logs are what svcproxy's log must say.
	logs []string
}

// nodeFlag names the e2e node, as installers name theirs.
const nodeFlag = "--hostname-override=" + harness.NodeName

// installerPreset are the conntrack sysctls set before each list runs, so
// that what the list sets, and what it leaves, shows.
var installerPreset = sysctls{ctEstablished: 1111, ctCloseWait: 111, ctBeLiberal: 0}

// installerCases are the argument lists: paths are the e2e's kubeconfig,
// node names the e2e node's, and a list that names a proxy mode has the
// run's (k3s's fixes iptables and runs only there). kops's and k3s's
// cluster CIDRs are kept as they are: they do not cover the e2e pods, so
// pod traffic is masqueraded, which shows --cluster-cidr taking effect.
func installerCases(c *tc) []installerCase {
	c.Helper()
	api := "https://" + harness.APIServerAddr
	// With --master, the kubeconfig's server is not used: this one's
	// refuses connections.
	deadServer, err := env.KubeconfigWithServer("kubeconfig-dead-server", "https://127.0.0.1:1")
	if err != nil {
		c.Fatal(err)
	}
	kubeadm := writeFile(c, "kubeadm-config.conf", kubeadmConfig(c, env.ProxyMode))
	eks := writeFile(c, "eks-config", []byte(fmt.Sprintf(eksConfig, env.Kubeconfig, env.ProxyMode)))
	defaults := sysctls{ctEstablished: 86400, ctCloseWait: 3600, ctBeLiberal: 0}

	// GCE's configure-helper.sh: no --hostname-override (the node's
	// hostname is its name), and per mode its own flags.
	gce := []string{"--master=" + api, "--kubeconfig=" + deadServer, "--cluster-cidr=" + harness.ClusterCIDR, "--oom-score-adj=-998", "--v=2"}
	gceWant := defaults
	if env.ProxyMode == "nftables" {
		gce = append(gce, "--proxy-mode=nftables", "--conntrack-tcp-be-liberal")
		gceWant = sysctls{ctEstablished: 86400, ctCloseWait: 3600, ctBeLiberal: 1}
	} else {
		gce = append(gce, "--proxy-mode=iptables", "--iptables-sync-period=1m", "--iptables-min-sync-period=10s")
	}
	return []installerCase{
		// kubeadm's DaemonSet (cmd/kubeadm/app/phases/addons/proxy).
		{name: "kubeadm", launch: harness.Launch{Args: []string{"--config=" + kubeadm, nodeFlag}},
			cidr: harness.ClusterCIDR, oom: -999, want: defaults},
		// kops's static pod (nodeup), without go-runner, which only logs.
		{name: "kops", launch: harness.Launch{Args: []string{"--cluster-cidr=100.96.0.0/11", "--conntrack-max-per-core=131072", nodeFlag,
			"--kubeconfig=" + deadServer, "--master=" + api, "--oom-score-adj=-998", "--v=2"}},
			cidr: "100.96.0.0/11", oom: -998, want: defaults},
		// k3s's embedded kube-proxy (pkg/daemons/agent): conntrack left
		// to the host.
		{name: "k3s", mode: "iptables", launch: harness.Launch{Args: []string{"--cluster-cidr=10.42.0.0/16", "--conntrack-max-per-core=0",
			"--conntrack-tcp-timeout-close-wait=0s", "--conntrack-tcp-timeout-established=0s", "--healthz-bind-address=127.0.0.1",
			nodeFlag, "--kubeconfig=" + env.Kubeconfig, "--proxy-mode=iptables", "--v=2", "--alsologtostderr=true"}},
			cidr: "10.42.0.0/16", oom: -999, want: installerPreset, logs: []string{"Leaving nf_conntrack_max as it is"}},
		{name: "gce-" + env.ProxyMode, launch: harness.Launch{Args: gce, Hostname: harness.NodeName},
			cidr: harness.ClusterCIDR, oom: -998, want: gceWant},
		// EKS's DaemonSet.
		{name: "eks", launch: harness.Launch{Args: []string{"--v=2", "--config=" + eks, nodeFlag}},
			oom: -998, want: defaults, logs: []string{"Using lenient decoding", "udpIdleTimeout"}},
	}
}

// TestInstallerArgs: svcproxy started with each installer's argument list
// for kube-proxy (installerCases) serves ClusterIP and NodePort traffic:
// each list gets a new Service, made while no svcproxy runs, so only that
// svcproxy can have programmed it. Pod traffic keeps its source when the
// list's cluster CIDR covers the pods (or there is none) and is
// masqueraded otherwise; NodePort traffic from outside is masqueraded.
// svcproxy stays up, names the node as the list does, runs with the
// list's OOM score, sets (or leaves) the conntrack sysctls as kube-proxy
// would and serves /healthz.
func TestInstallerArgs(t *testing.T) {
	c := begin(t)
	c.ownSvcproxy()
	a, b := backends[0], backends[1]
	clientIP := netip.MustParseAddr(client.IP)
	for _, cs := range installerCases(c) {
		t.Run(cs.name, func(t *testing.T) {
			c := &tc{T: t, ctx: c.ctx, start: time.Now()}
			if cs.mode != "" && cs.mode != env.ProxyMode {
				t.Skipf("the %s list fixes --proxy-mode=%s; this run is in %s mode", cs.name, cs.mode, env.ProxyMode)
			}
			stopSvcproxy(t)
			svc := c.createService("inst-"+cs.name, v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
			c.slice(svc, at(a, harness.NodeName), at(b, harness.NodeName))
			if err := setNodeSysctls(c.ctx, installerPreset); err != nil {
				t.Fatal(err)
			}
			run := c.runSvcproxy(cs.launch)

			source := client.IP
			if cs.cidr != "" && !netip.MustParsePrefix(cs.cidr).Contains(clientIP) {
				source = harness.BridgeIP
			}
			var pod, ext []harness.Reply
			c.eventually("ClusterIP from a pod", func() string {
				pod = c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 10})
				return exactly(pod, []*harness.Pod{a, b}, source, "")
			})
			c.eventually("NodePort from outside", func() string {
				ext = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
				return landed(ext, []*harness.Pod{a, b}, "", harness.ExtAllowedIP)
			})

			c.checkSysctls(cs.name, cs.want)
			oom := c.checkOOMScore(run, cs.oom)
			if code, _, err := env.NodeHTTPGet(c.ctx, "http://"+harness.HealthzAddr+"/healthz"); err != nil || code != 200 {
				t.Errorf("/healthz on %s: %d, %v", harness.HealthzAddr, code, err)
			}
			log := run.log(c)
			// The node's name, from --hostname-override or the hostname.
			for _, want := range append([]string{`"Starting svcproxy" node="` + harness.NodeName + `"`}, cs.logs...) {
				if !strings.Contains(log, want) {
					t.Errorf("svcproxy's log lacks %q", want)
				}
			}
			if strings.Contains(log, "accepted but without effect") {
				t.Errorf("svcproxy warned about flags of the %s list:\n%s", cs.name, grepLines(log, "accepted but without effect"))
			}
			if exited, err := run.p.Exited(); exited {
				t.Errorf("svcproxy exited: %v", err)
			}
			t.Logf("RESULT %s %q: ClusterIP %s from %s (source %s), NodePort %s from %s (source %s), %s",
				cs.name, cs.launch.Args, harness.FormatTally(harness.Tally(pod)), client.Name, pod[0].SourceIP(),
				harness.FormatTally(harness.Tally(ext)), harness.ExtAllowedIP, ext[0].SourceIP(), oom)
		})
	}

	// kube-proxy's flags that cannot apply: one warning line names them
	// all, and svcproxy runs.
	t.Run("inapplicable-flags", func(t *testing.T) {
		c := &tc{T: t, ctx: c.ctx, start: time.Now()}
		stopSvcproxy(t)
		svc := c.createService("inst-ipvs-flags", v1.ServiceSpec{})
		c.slice(svc, at(a, harness.NodeName))
		run := c.runSvcproxy(harness.Launch{Args: env.SvcproxyArgs("--ipvs-scheduler=rr", "--bind-address-hard-fail")})
		c.eventually("ClusterIP from a pod", func() string {
			return landed(c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 2}), []*harness.Pod{a}, client.IP, "")
		})
		lines := grepLines(run.log(c), "--ipvs-scheduler")
		if strings.HasPrefix(lines, "=== ") { // the harness's line with svcproxy's command
			_, lines, _ = strings.Cut(lines, "\n")
		}
		if n := strings.Count(lines, "\n") + 1; lines == "" || n != 1 {
			t.Fatalf("want one log line naming --ipvs-scheduler, got:\n%s", lines)
		}
		if !strings.HasPrefix(lines, "W") || !strings.Contains(lines, "--bind-address-hard-fail") {
			t.Errorf("want a warning naming both --ipvs-scheduler and --bind-address-hard-fail, got:\n%s", lines)
		}
		t.Logf("RESULT --ipvs-scheduler=rr --bind-address-hard-fail: %s", lines)
	})

	// --proxy-mode=ipvs, or mode: ipvs in --config, is an error at start.
	t.Run("ipvs-mode", func(t *testing.T) {
		c := &tc{T: t, ctx: c.ctx, start: time.Now()}
		ipvsConfig := writeFile(c, "kubeadm-ipvs.conf", kubeadmConfig(c, "ipvs"))
		for _, args := range [][]string{
			{"--proxy-mode=ipvs", nodeFlag, "--kubeconfig=" + env.Kubeconfig},
			{"--config=" + ipvsConfig, nodeFlag},
		} {
			ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
			out, err := env.Node.Command(ctx, append([]string{env.Bins.Svcproxy}, args...)...).CombinedOutput()
			cancel()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() == 0 {
				t.Fatalf("svcproxy %q: %v, want a non-zero exit:\n%s", args, err, out)
			}
			msg := strings.TrimSpace(string(out))
			if !strings.Contains(msg, "ipvs mode is not supported by svcproxy (use iptables or nftables)") {
				t.Errorf("svcproxy %q exited %d without naming ipvs: %s", args, exit.ExitCode(), msg)
			}
			if strings.HasPrefix(args[0], "--config") && !strings.Contains(msg, ipvsConfig) {
				t.Errorf("svcproxy %q: the message does not name the file: %s", args, msg)
			}
			t.Logf("RESULT %q: exit %d, %s", args, exit.ExitCode(), msg)
		}
	})
}

// checkOOMScore checks that svcproxy runs with the OOM score adjustment
// want, and says how. Lowering it needs CAP_SYS_RESOURCE, which svcproxy
// has when this test has it (some containers drop it): without, svcproxy's
// log must name want in its warning.
func (c *tc) checkOOMScore(run svcproxyRun, want int) string {
	c.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", run.p.Pid()))
	if err != nil {
		c.Fatal(err)
	}
	got := strings.TrimSpace(string(b))
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		c.Fatal(err)
	}
	var capEff uint64
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			capEff, _ = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	if capEff&(1<<unix.CAP_SYS_RESOURCE) != 0 {
		if got != strconv.Itoa(want) {
			c.Errorf("svcproxy's oom_score_adj is %s, want %d", got, want)
		}
		return "oom_score_adj " + got
	}
	warning := fmt.Sprintf("Cannot set the OOM score adjustment to %d", want)
	if !strings.Contains(run.log(c), warning) {
		c.Errorf("without CAP_SYS_RESOURCE, svcproxy's log lacks %q (oom_score_adj %s)", warning, got)
	}
	return fmt.Sprintf("oom_score_adj %s (no CAP_SYS_RESOURCE here: warned it cannot set %d)", got, want)
}

// writeFile writes b to name in the work directory and returns its path.
func writeFile(c *tc, name string, b []byte) string {
	c.Helper()
	path := filepath.Join(env.WorkDir, name)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		c.Fatal(err)
	}
	return path
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
