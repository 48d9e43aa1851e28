package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/syncer"
)

// options are the command-line flags, named and defaulted as kube-proxy's so
// an existing kube-proxy DaemonSet's arguments keep working.
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

	nodePortAddresses  []netip.Prefix
	nodePortPrimary    bool       // "primary" was given: add the node's own IPs
	bindAddress        netip.Addr // --bind-address; when specific, this node's IP of its family
	localhostNodePorts bool
	detectLocalMode    string
	bridgeInterface    string
	interfacePrefix    string
	ruleCheckInterval  time.Duration

	serviceCIDRs     []netip.Prefix // --service-cluster-ip-range
	cleanupKubeProxy bool

	// With --config: the flags the file overrode, and the file's fields
	// svcproxy accepted but does not use (each with why); both are logged.
	ignoredFlags  []string
	ignoredFields []string
	// lenientFields are the unknown or duplicate fields of --config that
	// strict decoding found (and that were dropped).
	lenientFields []string
}

// nftablesRuleCheckInterval is --rule-check-interval's default in nftables
// mode, where a check reads four netlink dumps: a damaged table is repaired
// well within a second.
const nftablesRuleCheckInterval = 200 * time.Millisecond

// rawFlags are the flag values parseFlags converts after parsing.
type rawFlags struct {
	config, cidrs, bind, npa, scidrs *string
}

// newFlagSet defines svcproxy's flags on a new flag set, bound to o.
func newFlagSet(o *options) (*flag.FlagSet, *rawFlags) {
	r := &rawFlags{}
	fs := flag.NewFlagSet("svcproxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	r.config = fs.String("config", "", "Path to a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1), as kube-proxy's --config. The flags the file covers are then ignored (and logged), as in kube-proxy; --hostname-override (which wins over the file's hostnameOverride), --master, --cleanup, --dry-run, the svcproxy-only flags and the logging flags still apply.")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file; empty means in-cluster configuration.")
	fs.StringVar(&o.master, "master", "", "Address of the Kubernetes API server (overrides the kubeconfig's).")
	fs.StringVar(&o.hostnameOverride, "hostname-override", "", "Name of this node, if not the hostname.")
	fs.StringVar(&o.proxyMode, "proxy-mode", "iptables", "Which proxy mode to use: iptables or nftables.")
	r.cidrs = fs.String("cluster-cidr", "", "Comma-separated pod CIDRs of the cluster; traffic to ClusterIPs from outside them is masqueraded.")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", false, "Masquerade all traffic sent to ClusterIPs.")
	fs.IntVar(&o.masqueradeBit, "iptables-masquerade-bit", 14, "The fwmark bit (0-31) flagging packets for SNAT.")
	fs.DurationVar(&o.minSyncPeriod, "iptables-min-sync-period", time.Second, "Minimum interval between rule syncs (e.g. 1s, 100ms).")
	fs.DurationVar(&o.syncPeriod, "iptables-sync-period", 30*time.Second, "Interval of periodic rule syncs and retry bound after a failure.")
	fs.DurationVar(&o.configSyncPeriod, "config-sync-period", 15*time.Minute, "How often informers resync from their caches.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "127.0.0.1:10249", "host:port for /metrics; empty disables it.")
	fs.StringVar(&o.healthzAddr, "healthz-bind-address", "0.0.0.0:10256", "host:port for /healthz and /livez; empty disables it.")
	fs.BoolVar(&o.dryRun, "dry-run", false, "Print the rules svcproxy would program, without touching the kernel, and exit.")
	fs.BoolVar(&o.cleanup, "cleanup", false, "Remove every rule and chain svcproxy (or kube-proxy) created, then exit.")
	r.bind = fs.String("bind-address", "0.0.0.0", "This node's IP (kube-proxy's --bind-address): when not 0.0.0.0 or ::, it overrides the Node object's address of its family.")
	r.npa = fs.String("nodeport-addresses", "", "Comma-separated CIDRs (or \"primary\") of node addresses NodePorts answer on; empty means all in iptables mode, primary in nftables mode.")
	fs.BoolVar(&o.localhostNodePorts, "iptables-localhost-nodeports", true, "Let NodePorts answer on 127.0.0.1 (IPv4; sets route_localnet).")
	fs.StringVar(&o.detectLocalMode, "detect-local-mode", "ClusterCIDR", "How to tell local pod traffic: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix.")
	fs.StringVar(&o.bridgeInterface, "pod-bridge-interface", "", "The pod bridge, for --detect-local-mode=BridgeInterface.")
	fs.StringVar(&o.interfacePrefix, "pod-interface-name-prefix", "", "The pod interface name prefix, for --detect-local-mode=InterfaceNamePrefix.")
	fs.DurationVar(&o.ruleCheckInterval, "rule-check-interval", time.Second, "How often to check that no one flushed or removed svcproxy's rules (0 disables; default 1s, 200ms in nftables mode).")
	r.scidrs = fs.String("service-cluster-ip-range", "", "Comma-separated Service CIDRs (one per family); in nftables mode, traffic to an unallocated ClusterIP in them is dropped.")
	fs.BoolVar(&o.cleanupKubeProxy, "cleanup-kube-proxy", false, "nftables mode: at start, remove kube-proxy's iptables chains and its nftables tables (a one-step migration from kube-proxy).")
	klog.InitFlags(fs)
	return fs, r
}

// usage is --help's text: a usage line, then every flag with its type,
// help text and default, svcproxy's own first, then klog's.
func usage() string {
	fs, _ := newFlagSet(&options{})
	klogFS := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFS)
	var b strings.Builder
	b.WriteString(`Usage: svcproxy [flags]

svcproxy is a drop-in replacement for kube-proxy: it watches Services and
EndpointSlices and programs this node's iptables or nftables. Its flags are
kube-proxy's where the meaning is the same, so a kube-proxy DaemonSet's
arguments keep working, including --config for a KubeProxyConfiguration file.

Flags:
`)
	var logging []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) {
		if klogFS.Lookup(f.Name) != nil {
			logging = append(logging, f)
			return
		}
		writeFlagUsage(&b, f)
	})
	b.WriteString("\nLogging flags (klog):\n")
	for _, f := range logging {
		writeFlagUsage(&b, f)
	}
	return b.String()
}

func writeFlagUsage(b *strings.Builder, f *flag.Flag) {
	typ, help := flag.UnquoteUsage(f)
	fmt.Fprintf(b, "  --%s", f.Name)
	if typ != "" {
		fmt.Fprintf(b, " %s", typ)
	}
	def := f.DefValue
	if typ == "string" || def == "" {
		def = strconv.Quote(def)
	}
	fmt.Fprintf(b, "\n      %s (default %s)\n", help, def)
}

// parseFlags parses args (without the program name), and the
// KubeProxyConfiguration file --config names, if any. Errors are one line
// naming the offending flag, or the file and field.
func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs, raw := newFlagSet(o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errors.New(strings.TrimSpace(strings.SplitN(err.Error(), "\n", 2)[0]))
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if h := o.hostnameOverride; h != "" && strings.TrimSpace(h) == "" {
		return nil, errors.New("--hostname-override: empty (only spaces) is invalid")
	}
	// fields maps the flags whose values came from the --config file to
	// the file's field names, for error messages.
	fields := map[string]string{}
	if *raw.config != "" {
		var err error
		if fields, err = applyConfigFile(o, fs, set, *raw.config); err != nil {
			return nil, err
		}
	}
	// at names the source of a flag's value in an error's prefix; ref
	// names it inside a message.
	at := func(name string) string {
		if f, ok := fields[name]; ok {
			return "--config " + *raw.config + ": " + f
		}
		return "--" + name
	}
	ref := func(name string) string {
		if f, ok := fields[name]; ok {
			return f
		}
		return "--" + name
	}

	switch o.proxyMode {
	case "", "iptables":
		o.proxyMode = "iptables"
	case "nftables":
		if !set["rule-check-interval"] {
			o.ruleCheckInterval = nftablesRuleCheckInterval
		}
	case "ipvs":
		return nil, fmt.Errorf("%s: ipvs mode is not supported by svcproxy (use iptables or nftables)", at("proxy-mode"))
	default:
		return nil, fmt.Errorf("%s: unknown mode %q (want iptables or nftables)", at("proxy-mode"), o.proxyMode)
	}
	if o.cleanup && o.dryRun {
		return nil, errors.New("--cleanup: cannot be combined with --dry-run (cleanup changes the kernel)")
	}
	if o.cleanupKubeProxy && o.proxyMode != "nftables" {
		want := "--proxy-mode=nftables"
		if _, ok := fields["proxy-mode"]; ok {
			want = "mode: nftables in " + *raw.config
		}
		return nil, fmt.Errorf("--cleanup-kube-proxy: only with %s (in iptables mode svcproxy adopts kube-proxy's chains)", want)
	}
	for _, s := range strings.Split(*raw.scidrs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--service-cluster-ip-range: %q is not a CIDR", s)
		}
		o.serviceCIDRs = append(o.serviceCIDRs, p.Masked())
	}
	for _, s := range strings.Split(*raw.cidrs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a CIDR", at("cluster-cidr"), s)
		}
		o.clusterCIDRs = append(o.clusterCIDRs, p.Masked())
	}
	seen := map[bool]bool{}
	for _, c := range o.clusterCIDRs {
		if seen[c.Addr().Is4()] {
			return nil, fmt.Errorf("%s: at most one CIDR per IP family, got %q", at("cluster-cidr"), *raw.cidrs)
		}
		seen[c.Addr().Is4()] = true
	}
	if b := strings.TrimSpace(*raw.bind); b != "" {
		ip, ok := syncer.ParseIP(b)
		if !ok {
			return nil, fmt.Errorf("%s: %q is not an IP address", at("bind-address"), *raw.bind)
		}
		if !ip.IsUnspecified() {
			o.bindAddress = ip
		}
	}
	for _, s := range strings.Split(*raw.npa, ",") {
		switch s = strings.TrimSpace(s); s {
		case "":
		case "primary":
			o.nodePortPrimary = true
		default:
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %q is neither a CIDR nor \"primary\"", at("nodeport-addresses"), s)
			}
			o.nodePortAddresses = append(o.nodePortAddresses, p.Masked())
		}
	}
	if o.proxyMode == "nftables" && !o.nodePortPrimary && len(o.nodePortAddresses) == 0 {
		// kube-proxy's nftables mode answers NodePorts on the node's
		// primary IPs unless told otherwise (iptables mode: on every
		// local address).
		o.nodePortPrimary = true
	}
	switch o.detectLocalMode {
	case "", "ClusterCIDR":
		o.detectLocalMode = "ClusterCIDR"
	case "NodeCIDR":
	case "BridgeInterface":
		if o.bridgeInterface == "" {
			return nil, fmt.Errorf("%s: required with %s=BridgeInterface", at("pod-bridge-interface"), ref("detect-local-mode"))
		}
	case "InterfaceNamePrefix":
		if o.interfacePrefix == "" {
			return nil, fmt.Errorf("%s: required with %s=InterfaceNamePrefix", at("pod-interface-name-prefix"), ref("detect-local-mode"))
		}
	default:
		return nil, fmt.Errorf("%s: unknown mode %q", at("detect-local-mode"), o.detectLocalMode)
	}
	if o.ruleCheckInterval < 0 {
		return nil, fmt.Errorf("--rule-check-interval: %v is negative", o.ruleCheckInterval)
	}
	if o.masqueradeBit < 0 || o.masqueradeBit > 31 {
		return nil, fmt.Errorf("%s: %d is not in 0..31", at("iptables-masquerade-bit"), o.masqueradeBit)
	}
	if o.minSyncPeriod < 0 {
		return nil, fmt.Errorf("%s: %v is negative", at("iptables-min-sync-period"), o.minSyncPeriod)
	}
	if o.syncPeriod <= 0 {
		return nil, fmt.Errorf("%s: %v must be positive", at("iptables-sync-period"), o.syncPeriod)
	}
	if o.minSyncPeriod > o.syncPeriod {
		return nil, fmt.Errorf("%s: %v is longer than %s %v", at("iptables-min-sync-period"), o.minSyncPeriod, ref("iptables-sync-period"), o.syncPeriod)
	}
	if o.configSyncPeriod < 0 {
		return nil, fmt.Errorf("%s: %v is negative", at("config-sync-period"), o.configSyncPeriod)
	}
	for _, a := range []struct{ flag, val string }{{"metrics-bind-address", o.metricsAddr}, {"healthz-bind-address", o.healthzAddr}} {
		if a.val == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a.val)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not host:port", at(a.flag), a.val)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return nil, fmt.Errorf("%s: invalid port in %q", at(a.flag), a.val)
		}
		if host != "" {
			if _, err := netip.ParseAddr(host); err != nil {
				return nil, fmt.Errorf("%s: %q is not an IP address", at(a.flag), host)
			}
		}
	}
	return o, nil
}
