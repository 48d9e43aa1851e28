package main

import (
	goflag "flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier/conntrack"

	// The json log format, for --logging-format=json as in kube-proxy.
	_ "k8s.io/component-base/logs/json/register"
)

// options are the command-line flags: kube-proxy's (v1.36, every one of
// them, parsed as kube-proxy parses them) and svcproxy's own, so an existing
// kube-proxy DaemonSet's arguments keep working.
type options struct {
	kubeconfig       string
	master           string
	hostnameOverride string
	proxyMode        string
	clusterCIDRs     []netip.Prefix
	masqueradeAll    bool
	masqueradeBit    int
	minSyncPeriod    time.Duration
	syncPeriod       time.Duration
	configSyncPeriod time.Duration
	metricsAddr      string
	healthzAddr      string
	dryRun           bool
	cleanup          bool
	// manifests: read the cluster's objects from this directory's files
	// instead of the API server (--dry-run, explain); diff: --dry-run
	// prints only the difference from the kernel's rules.
	manifests string
	diff      bool

	nodePortAddresses  []netip.Prefix
	nodePortPrimary    bool       // "primary" was given: add the node's own IPs
	bindAddress        netip.Addr // --bind-address; when specific, this node's IP of its family
	bindAddressFlag    string     // --bind-address as given (0.0.0.0 or :: too)
	localhostNodePorts bool
	detectLocalMode    string
	bridgeInterface    string
	interfacePrefix    string
	ruleCheckInterval  time.Duration

	serviceCIDRs     []netip.Prefix // --service-cluster-ip-range
	cleanupKubeProxy bool

	// kube-proxy's settings beyond the rules: the API client, the node's
	// conntrack table and OOM score, what runs and what is served.
	kubeAPI       apiClient
	conntrack     conntrackFlags
	oomScoreAdj   int32
	profiling     bool
	initOnly      bool
	writeConfigTo string
	version       string                                  // --version's value; "" when not given
	featureGates  map[string]bool                         // --feature-gates
	gates         featuregate.MutableVersionedFeatureGate // svcproxy's, set from featureGates
	logging       logsapi.LoggingConfiguration
	healthzPort   int32 // deprecated --healthz-port; 0 disables /healthz
	metricsPort   int32 // deprecated --metrics-port; 0 disables /metrics
	// klogFlags are the klog flags given that only klog's own output
	// honours (--log-file, ...); see applyLogging.
	klogFlags []string

	// With --config: the file, the flags it gave a value (each with its
	// field, for messages), the flags the file overrode, and the file's
	// fields svcproxy accepted but does not use (each with why); the last
	// two are logged.
	configFile    string
	fromFile      map[string]string
	ignoredFlags  []string
	ignoredFields []string
	// lenientFields are the unknown or duplicate fields of --config that
	// strict decoding found (and that were dropped).
	lenientFields []string
	// inapplicable are kube-proxy's flags given on the command line that
	// cannot apply to svcproxy, and deprecated the deprecation notices of
	// the flags given: both are logged at start.
	inapplicable []string
	deprecated   []string
}

// apiClient is how svcproxy talks to the API server (kube-proxy's
// clientConnection).
type apiClient struct {
	contentType string
	accept      string // only from --config (no flag)
	qps         float32
	burst       int32
}

// conntrackFlags are --conntrack-*, as conntrack.Tuning takes them.
type conntrackFlags struct {
	maxPerCore, min              int32
	tcpEstablished, tcpCloseWait time.Duration
	tcpBeLiberal                 bool
	udpTimeout, udpStreamTimeout time.Duration
}

// nftablesRuleCheckInterval is --rule-check-interval's default in nftables
// mode, where a check reads four netlink dumps: a damaged table is repaired
// well within a second.
const nftablesRuleCheckInterval = 200 * time.Millisecond

// rawFlags are the flag values parseFlags converts after parsing.
type rawFlags struct {
	cidrs, bind, scidrs string
	npa                 []string
	help                bool
}

// newFlagSet defines svcproxy's flags on a new flag set, bound to o, with
// kube-proxy's parsing: --flag value and --flag=value, "_" read as "-",
// string lists that append when repeated.
func newFlagSet(o *options) (*pflag.FlagSet, *rawFlags) {
	r := &rawFlags{}
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SetNormalizeFunc(cliflag.WordSepNormalizeFunc)
	fs.SortFlags = false
	fs.StringVar(&o.configFile, "config", "", "Path to a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1), as kube-proxy's --config. The flags the file covers are then ignored (and logged), as in kube-proxy; --hostname-override (which wins over the file's hostnameOverride), --master, --cleanup, --init-only, --dry-run, the svcproxy-only flags and the logging flags still apply.")
	fs.StringVar(&o.writeConfigTo, "write-config-to", "", "Write the configuration these flags (or --config) give, as a KubeProxyConfiguration file, to this path and exit.")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file; empty means in-cluster configuration.")
	fs.StringVar(&o.master, "master", "", "Address of the Kubernetes API server (overrides the kubeconfig's).")
	o.kubeAPI.accept = clientAccept
	fs.StringVar(&o.kubeAPI.contentType, "kube-api-content-type", clientContentType, "Content type of requests to the API server.")
	fs.Float32Var(&o.kubeAPI.qps, "kube-api-qps", clientQPS, "Queries per second to the API server.")
	fs.Int32Var(&o.kubeAPI.burst, "kube-api-burst", clientBurst, "Burst of queries to the API server.")
	fs.StringVar(&o.hostnameOverride, "hostname-override", "", "Name of this node, if not the hostname.")
	fs.StringVar(&o.proxyMode, "proxy-mode", "iptables", "Which proxy mode to use: iptables or nftables (ipvs is refused).")
	fs.StringVar(&r.cidrs, "cluster-cidr", "", "Comma-separated pod CIDRs of the cluster (one per family); traffic to ClusterIPs from outside them is masqueraded.")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", false, "Masquerade all traffic sent to ClusterIPs.")
	fs.IntVar(&o.masqueradeBit, "iptables-masquerade-bit", defaultMasqueradeBit, "The fwmark bit (0-31) flagging packets for SNAT.")
	fs.DurationVar(&o.minSyncPeriod, "iptables-min-sync-period", defaultMinSyncPeriod, "Minimum interval between rule syncs (e.g. 1s, 100ms), in either mode.")
	fs.DurationVar(&o.syncPeriod, "iptables-sync-period", defaultSyncPeriod, "Interval of periodic rule syncs and retry bound after a failure, in either mode.")
	fs.DurationVar(&o.configSyncPeriod, "config-sync-period", defaultConfigSyncPeriod, "How often informers resync from their caches.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "127.0.0.1:10249", "IP:port (or IP, with --metrics-port) for /metrics; empty disables it.")
	fs.StringVar(&o.healthzAddr, "healthz-bind-address", "0.0.0.0:10256", "IP:port (or IP, with --healthz-port) for /healthz and /livez; empty disables it.")
	fs.Int32Var(&o.metricsPort, "metrics-port", metricsPort, "Deprecated: the port of --metrics-bind-address when it is a bare IP; 0 disables /metrics.")
	fs.Int32Var(&o.healthzPort, "healthz-port", healthzPort, "Deprecated: the port of --healthz-bind-address when it is a bare IP; 0 disables /healthz.")
	fs.BoolVar(&o.profiling, "profiling", false, "Serve Go profiling (/debug/pprof/) and a verbosity setter (/debug/flags/v) on the metrics address.")
	fs.BoolVar(&o.dryRun, "dry-run", false, "Print the rules svcproxy would program, without touching the kernel, and exit.")
	fs.StringVar(&o.manifests, "manifests", "", "With --dry-run or explain: read Services, EndpointSlices and optionally the Node and ServiceCIDRs from this directory's YAML and JSON files instead of the API server.")
	fs.BoolVar(&o.diff, "diff", false, "With --dry-run: print only the difference between the rules svcproxy would program and those in the kernel now; exit 0 when equal, 1 when they differ.")
	fs.BoolVar(&o.cleanup, "cleanup", false, "Remove every rule and chain svcproxy (or kube-proxy) created, then exit.")
	fs.BoolVar(&o.initOnly, "init-only", false, "Do the setup that needs full privilege (conntrack sysctls; route_localnet for localhost NodePorts in iptables mode), then exit: the proxy itself can then run with NET_ADMIN and NET_RAW only.")
	fs.StringVar(&r.bind, "bind-address", "0.0.0.0", "This node's IP (kube-proxy's --bind-address): when not 0.0.0.0 or ::, it overrides the Node object's address of its family.")
	fs.StringSliceVar(&r.npa, "nodeport-addresses", nil, "CIDRs (comma-separated or repeated), or \"primary\", of node addresses NodePorts answer on; empty means all in iptables mode, primary in nftables mode.")
	fs.BoolVar(&o.localhostNodePorts, "iptables-localhost-nodeports", true, "Let NodePorts answer on 127.0.0.1 (iptables mode, IPv4; sets route_localnet).")
	fs.StringVar(&o.detectLocalMode, "detect-local-mode", "ClusterCIDR", "How to tell local pod traffic: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix.")
	fs.StringVar(&o.bridgeInterface, "pod-bridge-interface", "", "The pod bridge, for --detect-local-mode=BridgeInterface.")
	fs.StringVar(&o.interfacePrefix, "pod-interface-name-prefix", "", "The pod interface name prefix, for --detect-local-mode=InterfaceNamePrefix.")
	fs.Int32Var(&o.oomScoreAdj, "oom-score-adj", defaultOOMScoreAdj, "The OOM score adjustment of the svcproxy process, in [-1000, 1000].")
	ct := &o.conntrack
	fs.Int32Var(&ct.maxPerCore, "conntrack-max-per-core", int32(conntrack.DefaultTuning.MaxPerCore), "Conntrack entries per CPU: nf_conntrack_max is this times the CPUs, at least --conntrack-min (0 leaves nf_conntrack_max and ignores --conntrack-min).")
	fs.Int32Var(&ct.min, "conntrack-min", int32(conntrack.DefaultTuning.Min), "The least nf_conntrack_max --conntrack-max-per-core may give.")
	fs.DurationVar(&ct.tcpEstablished, "conntrack-tcp-timeout-established", conntrack.DefaultTuning.TCPEstablishedTimeout, "Idle timeout of established TCP connections (0 leaves it).")
	fs.DurationVar(&ct.tcpCloseWait, "conntrack-tcp-timeout-close-wait", conntrack.DefaultTuning.TCPCloseWaitTimeout, "Timeout of TCP connections in CLOSE_WAIT (0 leaves it).")
	fs.BoolVar(&ct.tcpBeLiberal, "conntrack-tcp-be-liberal", false, "Set nf_conntrack_tcp_be_liberal to 1 (out-of-window TCP packets are then not INVALID, and not dropped).")
	fs.DurationVar(&ct.udpTimeout, "conntrack-udp-timeout", 0, "Idle timeout of unreplied UDP flows (0 leaves it).")
	fs.DurationVar(&ct.udpStreamTimeout, "conntrack-udp-timeout-stream", 0, "Idle timeout of assured UDP flows (0 leaves it).")
	fs.Var(newGatesValue(&o.featureGates), "feature-gates", "key=true|false pairs (comma-separated or repeated). Of kube-proxy's gates, the logging ones apply (LoggingAlphaOptions, LoggingBetaOptions, ContextualLogging); the others are accepted and named in a warning.")
	fs.DurationVar(&o.ruleCheckInterval, "rule-check-interval", time.Second, "How often to check that no one flushed or removed svcproxy's rules (0 disables; default 1s, 200ms in nftables mode).")
	fs.StringVar(&r.scidrs, "service-cluster-ip-range", "", "Comma-separated Service CIDRs (one per family); in nftables mode, traffic to an unallocated ClusterIP in them is dropped.")
	fs.BoolVar(&o.cleanupKubeProxy, "cleanup-kube-proxy", false, "nftables mode: at start, remove kube-proxy's iptables chains and its nftables tables (a one-step migration from kube-proxy).")
	addInapplicable(fs)
	fs.VarPF(&versionValue{v: &o.version}, "version", "", "--version (or =true) prints svcproxy's version and exits, --version=raw prints its build details; --version=vX.Y.Z sets the version it reports.").NoOptDefVal = "true"
	fs.BoolVarP(&r.help, "help", "h", false, "Print this help and exit.")

	o.logging = *logsapi.NewLoggingConfiguration()
	logsapi.AddFlags(&o.logging, fs)
	addKlogFlags(fs)
	return fs, r
}

// addKlogFlags adds klog's own flags (--log-file, --logtostderr, ...), which
// svcproxy has always accepted; -v and --vmodule are the logging API's.
func addKlogFlags(fs *pflag.FlagSet) {
	kfs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(kfs)
	kfs.VisitAll(func(f *goflag.Flag) {
		if f.Name != "v" && f.Name != "vmodule" {
			fs.AddGoFlag(f)
		}
	})
}

// isKlogFlag reports whether name is one of addKlogFlags' flags.
func isKlogFlag(name string) bool {
	kfs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
	klog.InitFlags(kfs)
	found := false
	kfs.VisitAll(func(f *goflag.Flag) {
		found = found || (name != "v" && name != "vmodule" && cliflag.WordSepNormalizeFunc(nil, f.Name) == pflag.NormalizedName(name))
	})
	return found
}

// isLoggingFlag reports whether name is a flag of the logging API
// (kube-proxy's logging flags; on the command line they win over --config).
func isLoggingFlag(name string) bool {
	var lfs pflag.FlagSet
	logsapi.AddFlags(logsapi.NewLoggingConfiguration(), &lfs)
	return lfs.Lookup(name) != nil
}

// usage is --help's text: a usage line, then every flag with its type,
// help text and default: svcproxy's and kube-proxy's, the logging flags,
// and kube-proxy's that have no effect here.
func usage() string {
	fs, _ := newFlagSet(&options{})
	var b strings.Builder
	b.WriteString(`Usage: svcproxy [flags]
       svcproxy explain --from SRC_IP --to DST_IP:PORT/PROTO [-o json] [flags]

svcproxy is a drop-in replacement for kube-proxy: it watches Services and
EndpointSlices and programs this node's iptables or nftables. It accepts
every flag of kube-proxy v1.36, parsed as kube-proxy parses them, so a
kube-proxy DaemonSet's arguments keep working, including --config for a
KubeProxyConfiguration file.

svcproxy explain says, from the plan alone, what svcproxy does with a new
connection and which rules do it (svcproxy explain --help).

Flags:
`)
	var logging, ignored []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		switch {
		case inapplicableFlags[f.Name] != "":
			ignored = append(ignored, f)
		case isLoggingFlag(f.Name) || isKlogFlag(f.Name):
			logging = append(logging, f)
		default:
			writeFlagUsage(&b, f)
		}
	})
	b.WriteString("\nLogging flags (klog's own, from --add-dir-header on, only with --logging-format=text):\n")
	for _, f := range logging {
		writeFlagUsage(&b, f)
	}
	b.WriteString("\nkube-proxy flags accepted without effect (named in a warning at start):\n")
	for _, f := range ignored {
		writeFlagUsage(&b, f)
	}
	return b.String()
}

func writeFlagUsage(b *strings.Builder, f *pflag.Flag) {
	typ, help := pflag.UnquoteUsage(f)
	b.WriteString("  ")
	if f.Shorthand != "" {
		fmt.Fprintf(b, "-%s, ", f.Shorthand)
	}
	fmt.Fprintf(b, "--%s", f.Name)
	if typ != "" {
		fmt.Fprintf(b, " %s", typ)
	}
	def := f.DefValue
	if typ == "string" || def == "" || def == "[]" {
		def = fmt.Sprintf("%q", strings.Trim(def, "[]"))
	}
	fmt.Fprintf(b, "\n      %s (default %s)\n", help, def)
}
