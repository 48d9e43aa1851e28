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
	netutils "k8s.io/utils/net"
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
}

// nftablesRuleCheckInterval is --rule-check-interval's default in nftables
// mode, where a check reads four netlink dumps: a damaged table is repaired
// well within a second.
const nftablesRuleCheckInterval = 200 * time.Millisecond

// parseFlags parses args (without the program name). Errors are one line
// naming the offending flag.
func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("svcproxy", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig file; empty means in-cluster configuration.")
	fs.StringVar(&o.master, "master", "", "Address of the Kubernetes API server (overrides the kubeconfig's).")
	fs.StringVar(&o.hostnameOverride, "hostname-override", "", "Name of this node, if not the hostname.")
	fs.StringVar(&o.proxyMode, "proxy-mode", "iptables", "Which proxy mode to use: iptables or nftables.")
	cidrs := fs.String("cluster-cidr", "", "Comma-separated pod CIDRs of the cluster; traffic to ClusterIPs from outside them is masqueraded.")
	fs.BoolVar(&o.masqueradeAll, "masquerade-all", false, "Masquerade all traffic sent to ClusterIPs.")
	fs.IntVar(&o.masqueradeBit, "iptables-masquerade-bit", 14, "The fwmark bit (0-31) flagging packets for SNAT.")
	fs.DurationVar(&o.minSyncPeriod, "iptables-min-sync-period", time.Second, "Minimum interval between rule syncs (e.g. 1s, 100ms).")
	fs.DurationVar(&o.syncPeriod, "iptables-sync-period", 30*time.Second, "Interval of periodic rule syncs and retry bound after a failure.")
	fs.DurationVar(&o.configSyncPeriod, "config-sync-period", 15*time.Minute, "How often informers resync from their caches.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "127.0.0.1:10249", "host:port for /metrics; empty disables it.")
	fs.StringVar(&o.healthzAddr, "healthz-bind-address", "0.0.0.0:10256", "host:port for /healthz and /livez; empty disables it.")
	fs.BoolVar(&o.dryRun, "dry-run", false, "Print the rules svcproxy would program, without touching the kernel, and exit.")
	fs.BoolVar(&o.cleanup, "cleanup", false, "Remove every rule and chain svcproxy (or kube-proxy) created, then exit.")
	bind := fs.String("bind-address", "0.0.0.0", "This node's IP (kube-proxy's --bind-address): when not 0.0.0.0 or ::, it overrides the Node object's address of its family.")
	npa := fs.String("nodeport-addresses", "", "Comma-separated CIDRs (or \"primary\") of node addresses NodePorts answer on; empty means all.")
	fs.BoolVar(&o.localhostNodePorts, "iptables-localhost-nodeports", true, "Let NodePorts answer on 127.0.0.1 (IPv4; sets route_localnet).")
	fs.StringVar(&o.detectLocalMode, "detect-local-mode", "ClusterCIDR", "How to tell local pod traffic: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix.")
	fs.StringVar(&o.bridgeInterface, "pod-bridge-interface", "", "The pod bridge, for --detect-local-mode=BridgeInterface.")
	fs.StringVar(&o.interfacePrefix, "pod-interface-name-prefix", "", "The pod interface name prefix, for --detect-local-mode=InterfaceNamePrefix.")
	fs.DurationVar(&o.ruleCheckInterval, "rule-check-interval", time.Second, "How often to check that no one flushed or removed svcproxy's rules (0 disables; default 1s, 200ms in nftables mode).")
	scidrs := fs.String("service-cluster-ip-range", "", "Comma-separated Service CIDRs (one per family); in nftables mode, traffic to an unallocated ClusterIP in them is dropped.")
	fs.BoolVar(&o.cleanupKubeProxy, "cleanup-kube-proxy", false, "nftables mode: at start, remove kube-proxy's iptables chains and its nftables tables (a one-step migration from kube-proxy).")
	klog.InitFlags(fs)

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
	switch o.proxyMode {
	case "", "iptables":
		o.proxyMode = "iptables"
	case "nftables":
		if !set["rule-check-interval"] {
			o.ruleCheckInterval = nftablesRuleCheckInterval
		}
	default:
		return nil, fmt.Errorf("--proxy-mode: unknown mode %q (want iptables or nftables)", o.proxyMode)
	}
	if o.cleanup && o.dryRun {
		return nil, errors.New("--cleanup: cannot be combined with --dry-run (cleanup changes the kernel)")
	}
	if o.cleanupKubeProxy && o.proxyMode != "nftables" {
		return nil, errors.New("--cleanup-kube-proxy: only with --proxy-mode=nftables (in iptables mode svcproxy adopts kube-proxy's chains)")
	}
	for _, s := range strings.Split(*scidrs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--service-cluster-ip-range: %q is not a CIDR", s)
		}
		o.serviceCIDRs = append(o.serviceCIDRs, p.Masked())
	}
	for _, s := range strings.Split(*cidrs, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--cluster-cidr: %q is not a CIDR", s)
		}
		o.clusterCIDRs = append(o.clusterCIDRs, p.Masked())
	}
	seen := map[bool]bool{}
	for _, c := range o.clusterCIDRs {
		if seen[c.Addr().Is4()] {
			return nil, fmt.Errorf("--cluster-cidr: at most one CIDR per IP family, got %q", *cidrs)
		}
		seen[c.Addr().Is4()] = true
	}
	if b := strings.TrimSpace(*bind); b != "" {
		ip, ok := parseIPSloppy(b)
		if !ok {
			return nil, fmt.Errorf("--bind-address: %q is not an IP address", *bind)
		}
		if !ip.IsUnspecified() {
			o.bindAddress = ip
		}
	}
	for _, s := range strings.Split(*npa, ",") {
		switch s = strings.TrimSpace(s); s {
		case "":
		case "primary":
			o.nodePortPrimary = true
		default:
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("--nodeport-addresses: %q is neither a CIDR nor \"primary\"", s)
			}
			o.nodePortAddresses = append(o.nodePortAddresses, p.Masked())
		}
	}
	switch o.detectLocalMode {
	case "", "ClusterCIDR":
		o.detectLocalMode = "ClusterCIDR"
	case "NodeCIDR":
	case "BridgeInterface":
		if o.bridgeInterface == "" {
			return nil, errors.New("--pod-bridge-interface: required with --detect-local-mode=BridgeInterface")
		}
	case "InterfaceNamePrefix":
		if o.interfacePrefix == "" {
			return nil, errors.New("--pod-interface-name-prefix: required with --detect-local-mode=InterfaceNamePrefix")
		}
	default:
		return nil, fmt.Errorf("--detect-local-mode: unknown mode %q", o.detectLocalMode)
	}
	if o.ruleCheckInterval < 0 {
		return nil, fmt.Errorf("--rule-check-interval: %v is negative", o.ruleCheckInterval)
	}
	if o.masqueradeBit < 0 || o.masqueradeBit > 31 {
		return nil, fmt.Errorf("--iptables-masquerade-bit: %d is not in 0..31", o.masqueradeBit)
	}
	if o.minSyncPeriod < 0 {
		return nil, fmt.Errorf("--iptables-min-sync-period: %v is negative", o.minSyncPeriod)
	}
	if o.syncPeriod <= 0 {
		return nil, fmt.Errorf("--iptables-sync-period: %v must be positive", o.syncPeriod)
	}
	if o.minSyncPeriod > o.syncPeriod {
		return nil, fmt.Errorf("--iptables-min-sync-period: %v is longer than --iptables-sync-period %v", o.minSyncPeriod, o.syncPeriod)
	}
	if o.configSyncPeriod < 0 {
		return nil, fmt.Errorf("--config-sync-period: %v is negative", o.configSyncPeriod)
	}
	for _, a := range []struct{ flag, val string }{{"--metrics-bind-address", o.metricsAddr}, {"--healthz-bind-address", o.healthzAddr}} {
		if a.val == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a.val)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not host:port", a.flag, a.val)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return nil, fmt.Errorf("%s: invalid port in %q", a.flag, a.val)
		}
		if host != "" {
			if _, err := netip.ParseAddr(host); err != nil {
				return nil, fmt.Errorf("%s: %q is not an IP address", a.flag, host)
			}
		}
	}
	return o, nil
}

// parseIPSloppy parses an IP address as kube-proxy does (leading zeros in
// IPv4 octets accepted); IPv4-mapped IPv6 addresses become plain IPv4.
func parseIPSloppy(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}
