package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	netutils "k8s.io/utils/net"

	"github.com/svcproxy/svcproxy/syncer"
)

// parseFlags parses args (without the program name), and the
// KubeProxyConfiguration file --config names, if any. Errors are one line
// naming the offending flag, or the file and field; -h and --help give
// pflag.ErrHelp.
func parseFlags(args []string) (*options, error) { return parseCommand(args, nil) }

// subcommand is a subcommand's own flags (explain's), parsed with the
// proxy's: add registers them, check vets the flags given (set) before the
// proxy's checks. A subcommand reads like --dry-run: it changes nothing in
// the kernel and probes nothing.
type subcommand struct {
	add   func(*pflag.FlagSet)
	check func(set map[string]bool) error
}

// parseCommand is parseFlags for the proxy (sub nil) or a subcommand.
func parseCommand(args []string, sub *subcommand) (*options, error) {
	o := &options{fromFile: map[string]string{}}
	fs, raw := newFlagSet(o)
	if sub != nil {
		sub.add(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, errors.New(strings.TrimSpace(strings.SplitN(err.Error(), "\n", 2)[0]))
	}
	if raw.help {
		return nil, pflag.ErrHelp
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}

	set := map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { set[f.Name] = true })
	for name := range set {
		if d := deprecatedFlags[name]; d != "" {
			o.deprecated = append(o.deprecated, d)
		}
	}
	slices.Sort(o.deprecated)
	if sub != nil {
		if err := sub.check(set); err != nil {
			return nil, err
		}
		o.dryRun = true
	}
	if h := o.hostnameOverride; h != "" && strings.TrimSpace(h) == "" {
		return nil, errors.New("--hostname-override: empty (only spaces) is invalid")
	}
	switch {
	case o.configFile != "":
		if err := applyConfigFile(o, fs, set, raw); err != nil {
			return nil, err
		}
	case o.writeConfigTo == "":
		// kube-proxy's deprecated port flags: 0 turns a server off, and
		// a bare IP takes the port.
		o.healthzAddr = appendPort(o.healthzAddr, o.healthzPort)
		o.metricsAddr = appendPort(o.metricsAddr, o.metricsPort)
	}
	if err := o.checkMode(set); err != nil {
		return nil, err
	}
	if err := o.checkAddresses(raw); err != nil {
		return nil, err
	}
	if err := o.checkNumbers(); err != nil {
		return nil, err
	}
	unknownGates, err := o.checkLogging(set)
	if err != nil {
		return nil, err
	}
	o.inapplicable = inapplicableGiven(set, unknownGates)
	return o, nil
}

// at names the source of a flag's value in an error's prefix: the flag, or
// --config and the file's field.
func (o *options) at(name string) string {
	if f, ok := o.fromFile[name]; ok {
		return "--config " + o.configFile + ": " + f
	}
	return "--" + name
}

// ref names the source of a flag's value inside a message.
func (o *options) ref(name string) string {
	if f, ok := o.fromFile[name]; ok {
		return f
	}
	return "--" + name
}

// checkMode checks the proxy mode and what depends on it, and sets the
// mode's defaults for the flags not given (set: those given).
func (o *options) checkMode(set map[string]bool) error {
	switch o.proxyMode {
	case "", "iptables":
		o.proxyMode = "iptables"
	case "nftables":
		if !set["rule-check-interval"] {
			o.ruleCheckInterval = nftablesRuleCheckInterval
		}
	case "ipvs":
		return fmt.Errorf("%s: ipvs mode is not supported by svcproxy (use iptables or nftables)", o.at("proxy-mode"))
	default:
		return fmt.Errorf("%s: unknown mode %q (want iptables or nftables)", o.at("proxy-mode"), o.proxyMode)
	}
	if o.cleanup && o.dryRun {
		return errors.New("--cleanup: cannot be combined with --dry-run (cleanup changes the kernel)")
	}
	if o.diff && !o.dryRun {
		return errors.New("--diff: only with --dry-run")
	}
	if o.manifests != "" && !o.dryRun {
		return errors.New("--manifests: only with --dry-run or explain (the proxy itself reads the API server)")
	}
	if o.initOnly && o.dryRun {
		return errors.New("--init-only: cannot be combined with --dry-run (it sets sysctls)")
	}
	if o.cleanupKubeProxy && o.proxyMode != "nftables" {
		want := "--proxy-mode=nftables"
		if _, ok := o.fromFile["proxy-mode"]; ok {
			want = "mode: nftables in " + o.configFile
		}
		return fmt.Errorf("--cleanup-kube-proxy: only with %s (in iptables mode svcproxy adopts kube-proxy's chains)", want)
	}
	switch o.detectLocalMode {
	case "", "ClusterCIDR":
		o.detectLocalMode = "ClusterCIDR"
	case "NodeCIDR":
	case "BridgeInterface":
		if o.bridgeInterface == "" {
			return fmt.Errorf("%s: required with %s=BridgeInterface", o.at("pod-bridge-interface"), o.ref("detect-local-mode"))
		}
	case "InterfaceNamePrefix":
		if o.interfacePrefix == "" {
			return fmt.Errorf("%s: required with %s=InterfaceNamePrefix", o.at("pod-interface-name-prefix"), o.ref("detect-local-mode"))
		}
	default:
		return fmt.Errorf("%s: unknown mode %q", o.at("detect-local-mode"), o.detectLocalMode)
	}
	return nil
}

// checkAddresses converts and checks the CIDR and address flags.
func (o *options) checkAddresses(raw *rawFlags) error {
	var err error
	if o.serviceCIDRs, err = cidrList(raw.scidrs, "--service-cluster-ip-range"); err != nil {
		return err
	}
	if o.clusterCIDRs, err = cidrList(raw.cidrs, o.at("cluster-cidr")); err != nil {
		return err
	}
	seen := map[bool]bool{}
	for _, c := range o.clusterCIDRs {
		if seen[c.Addr().Is4()] {
			return fmt.Errorf("%s: at most one CIDR per IP family, got %q", o.at("cluster-cidr"), raw.cidrs)
		}
		seen[c.Addr().Is4()] = true
	}
	if b := strings.TrimSpace(raw.bind); b != "" {
		ip, ok := syncer.ParseIP(b)
		if !ok {
			return fmt.Errorf("%s: %q is not an IP address", o.at("bind-address"), raw.bind)
		}
		o.bindAddressFlag = b
		if !ip.IsUnspecified() {
			o.bindAddress = ip
		}
	}
	for _, s := range raw.npa {
		switch s = strings.TrimSpace(s); s {
		case "":
		case "primary":
			o.nodePortPrimary = true
		default:
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return fmt.Errorf("%s: %q is neither a CIDR nor \"primary\"", o.at("nodeport-addresses"), s)
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
	for _, a := range []struct{ flag, val string }{{"metrics-bind-address", o.metricsAddr}, {"healthz-bind-address", o.healthzAddr}} {
		if a.val == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a.val)
		if err != nil {
			return fmt.Errorf("%s: %q is not host:port", o.at(a.flag), a.val)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("%s: invalid port in %q", o.at(a.flag), a.val)
		}
		if host != "" {
			if _, err := netip.ParseAddr(host); err != nil {
				return fmt.Errorf("%s: %q is not an IP address", o.at(a.flag), host)
			}
		}
	}
	return nil
}

// cidrList parses comma-separated CIDRs; name prefixes errors.
func cidrList(s, name string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range strings.Split(s, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a CIDR", name, c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// checkNumbers checks the numeric flags against kube-proxy's bounds.
func (o *options) checkNumbers() error {
	if o.ruleCheckInterval < 0 {
		return fmt.Errorf("--rule-check-interval: %v is negative", o.ruleCheckInterval)
	}
	if o.masqueradeBit < 0 || o.masqueradeBit > 31 {
		return fmt.Errorf("%s: %d is not in 0..31", o.at("iptables-masquerade-bit"), o.masqueradeBit)
	}
	if o.minSyncPeriod < 0 {
		return fmt.Errorf("%s: %v is negative", o.at("iptables-min-sync-period"), o.minSyncPeriod)
	}
	if o.syncPeriod <= 0 {
		return fmt.Errorf("%s: %v must be positive", o.at("iptables-sync-period"), o.syncPeriod)
	}
	if o.minSyncPeriod > o.syncPeriod {
		return fmt.Errorf("%s: %v is longer than %s %v", o.at("iptables-min-sync-period"), o.minSyncPeriod, o.ref("iptables-sync-period"), o.syncPeriod)
	}
	if o.configSyncPeriod < 0 {
		return fmt.Errorf("%s: %v is negative", o.at("config-sync-period"), o.configSyncPeriod)
	}
	if o.oomScoreAdj < -1000 || o.oomScoreAdj > 1000 {
		return fmt.Errorf("%s: %d is not in -1000..1000", o.at("oom-score-adj"), o.oomScoreAdj)
	}
	if o.kubeAPI.burst < 0 {
		return fmt.Errorf("%s: %d is negative", o.at("kube-api-burst"), o.kubeAPI.burst)
	}
	ct := o.conntrack
	for _, n := range []struct {
		flag string
		neg  bool
		val  any
	}{
		{"conntrack-max-per-core", ct.maxPerCore < 0, ct.maxPerCore},
		{"conntrack-min", ct.min < 0, ct.min},
		{"conntrack-tcp-timeout-established", ct.tcpEstablished < 0, ct.tcpEstablished},
		{"conntrack-tcp-timeout-close-wait", ct.tcpCloseWait < 0, ct.tcpCloseWait},
		{"conntrack-udp-timeout", ct.udpTimeout < 0, ct.udpTimeout},
		{"conntrack-udp-timeout-stream", ct.udpStreamTimeout < 0, ct.udpStreamTimeout},
	} {
		if n.neg {
			return fmt.Errorf("%s: %v is negative", o.at(n.flag), n.val)
		}
	}
	return nil
}

// appendPort is a server address given kube-proxy's deprecated port flag:
// none when the port is 0, a bare IP with the port, else addr as it is.
func appendPort(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	if _, _, err := net.SplitHostPort(addr); err != nil && netutils.ParseIPSloppy(addr) != nil {
		return net.JoinHostPort(addr, strconv.Itoa(int(port)))
	}
	return addr
}
