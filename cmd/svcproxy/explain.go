package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	"github.com/svcproxy/svcproxy/syncer"
)

// `svcproxy explain` says what the proxy does with the first packet of a
// connection, from its plan alone: it reads the cluster (read-only, or
// --manifests files) as the proxy would, traces the packet through the
// plan of the destination's family and names the rules that do each step
// in the chosen mode. Nothing in the kernel is read or changed.

// explainArgs are explain's own flags.
type explainArgs struct {
	from, to, output, fromKind string
	timeout                    time.Duration

	src  netip.Addr
	dst  netip.AddrPort
	prot proxier.Protocol
}

// sourceKinds are --from-kind's values.
var sourceKinds = []proxier.SourceKind{proxier.FromLocalPod, proxier.FromRemotePod, proxier.FromNode, proxier.FromOutside}

// explainFlagsNotApplicable are the proxy's flags that make no sense with
// explain: each runs something else instead of the proxy. The proxy's
// start-time actions (--cleanup-kube-proxy) are accepted and not done, so
// a DaemonSet's arguments can be reused as they are.
var explainFlagsNotApplicable = []string{"dry-run", "diff", "cleanup", "init-only", "write-config-to"}

// parseExplain parses explain's command line: its own flags and every flag
// of the proxy, through the same flag set.
func parseExplain(args []string) (*options, *explainArgs, error) {
	ea := &explainArgs{}
	o, err := parseCommand(args, &subcommand{
		add: func(fs *pflag.FlagSet) { addExplainFlags(fs, ea) },
		check: func(set map[string]bool) error {
			for _, name := range explainFlagsNotApplicable {
				if set[name] {
					return fmt.Errorf("--%s does not apply to explain (it changes nothing)", name)
				}
			}
			return nil
		},
	})
	if err != nil {
		return nil, nil, err
	}
	return o, ea, ea.check()
}

func addExplainFlags(fs *pflag.FlagSet, ea *explainArgs) {
	fs.StringVar(&ea.from, "from", "", "explain: the source address of the connection (required).")
	fs.StringVar(&ea.to, "to", "", "explain: the destination, IP:PORT/PROTO ([IPv6]:PORT/PROTO); PROTO is tcp, udp or sctp, tcp when left out (required).")
	fs.StringVarP(&ea.output, "output", "o", "text", "explain: the output format, text or json.")
	fs.StringVar(&ea.fromKind, "from-kind", "", "explain: what sent the packet (local-pod, remote-pod, node or outside) instead of inferring it from --from.")
	fs.DurationVar(&ea.timeout, "timeout", 30*time.Second, "explain: how long to wait for the API server.")
}

// check validates and converts explain's flags.
func (ea *explainArgs) check() error {
	if ea.from == "" || ea.to == "" {
		return errors.New("--from and --to are required")
	}
	var err error
	if ea.src, err = netip.ParseAddr(strings.TrimSpace(ea.from)); err != nil {
		return fmt.Errorf("--from: %q is not an IP address", ea.from)
	}
	ea.src = ea.src.Unmap()
	if ea.dst, ea.prot, err = parseDestination(ea.to); err != nil {
		return err
	}
	if ea.src.Is4() != ea.dst.Addr().Is4() {
		return fmt.Errorf("--from %s and --to %s: not the same IP family", ea.src, ea.dst.Addr())
	}
	switch ea.output {
	case "text", "json":
	default:
		return fmt.Errorf("--output: %q is neither text nor json", ea.output)
	}
	if ea.fromKind != "" && !slices.Contains(sourceKinds, proxier.SourceKind(ea.fromKind)) {
		return fmt.Errorf("--from-kind: %q is not one of local-pod, remote-pod, node, outside", ea.fromKind)
	}
	if ea.timeout <= 0 {
		return fmt.Errorf("--timeout: %v must be positive", ea.timeout)
	}
	return nil
}

// parseDestination parses IP:PORT/PROTO.
func parseDestination(s string) (netip.AddrPort, proxier.Protocol, error) {
	addr, proto := strings.TrimSpace(s), "tcp"
	if i := strings.LastIndex(addr, "/"); i >= 0 {
		addr, proto = addr[:i], strings.ToLower(addr[i+1:])
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, "", fmt.Errorf("--to: %q is not IP:PORT/PROTO (IPv6 as [IP]:PORT/PROTO)", s)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	for _, p := range []proxier.Protocol{proxier.TCP, proxier.UDP, proxier.SCTP} {
		if proto == p.Lower() {
			return ap, p, nil
		}
	}
	return netip.AddrPort{}, "", fmt.Errorf("--to: unknown protocol %q (want tcp, udp or sctp)", proto)
}

// explainMain runs `svcproxy explain args...` and returns the exit code:
// 0 when the connection was explained, whatever the verdict; 2 for bad
// arguments; 1 when the cluster could not be read.
func explainMain(args []string) int {
	o, ea, err := parseExplain(args)
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Print(explainUsage())
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy explain:", err)
		return 2
	}
	if err := applyLogging(o); err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy explain: logging:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), ea.timeout)
	defer cancel()
	err = runExplain(ctx, os.Stdout, o, ea)
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy explain:", err)
		return 1
	}
	return 0
}

// explainUsage is explain's --help.
func explainUsage() string {
	fs := pflag.NewFlagSet("explain", pflag.ContinueOnError)
	addExplainFlags(fs, &explainArgs{})
	var b strings.Builder
	b.WriteString(`Usage: svcproxy explain --from SRC_IP --to DST_IP:PORT/PROTO [-o text|json] [--manifests DIR] [proxy flags]

explain says what svcproxy does with the first packet of a new connection
from SRC_IP to DST_IP:PORT: the Service port it meets and how, the traffic
policy in force, the candidate endpoints, masquerading, or why it is
rejected or dropped, and the rules or map elements that do it in the
chosen --proxy-mode. It reads the cluster as the proxy does (read-only,
the same connection flags), or --manifests files, and takes every flag of
the proxy (see svcproxy --help) that changes the answer.

Flags:
`)
	fs.VisitAll(func(f *pflag.Flag) { writeFlagUsage(&b, f) })
	return b.String()
}

// explanation is explain's answer: the tracer's fields, with what sent
// the packet and the rules that do each step.
type explanation struct {
	proxier.Trace
	SourceKind proxier.SourceKind `json:"sourceKind"`
	// SourceKindWhy says how the kind was decided: inferred from the
	// source address, or given by --from-kind.
	SourceKindWhy string             `json:"sourceKindWhy"`
	Mode          string             `json:"mode"`
	Family        string             `json:"family"`
	Node          string             `json:"node"`
	Rules         []proxier.Location `json:"rules"`
}

// runExplain reads the cluster and writes the explanation of ea's packet.
func runExplain(ctx context.Context, w io.Writer, o *options, ea *explainArgs) error {
	if o.manifests == "" {
		// Fail fast and clearly when the API server cannot be reached:
		// reading the Node and the informers would wait for it.
		client, err := newClient(o)
		if err != nil {
			return err
		}
		if err := client.Discovery().RESTClient().Get().AbsPath("/version").Do(ctx).Error(); err != nil {
			return fmt.Errorf("API server: %w", err)
		}
	}
	n, err := readNode(ctx, o)
	if err != nil {
		return err
	}
	family := proxier.IPv4
	if ea.dst.Addr().Is6() {
		family = proxier.IPv6
	}
	fc, err := familyConfigOf(o, n, family)
	if err != nil {
		return err
	}
	states, err := syncer.Snapshot(ctx, n.client, n.name, family)
	if err != nil {
		return err
	}
	e := explain(o, renderOptions(ctx, o), n, fc, states[family], ea)
	if ea.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	}
	_, err = io.WriteString(w, e.text())
	return err
}

// familyConfigOf is n's configuration of family f. explain, like
// --dry-run, probes nothing, so the options may not name a family that
// the proxy would find usable: it is then configured as the proxy would.
func familyConfigOf(o *options, n *node, f proxier.IPFamily) (proxier.Config, error) {
	for _, fc := range n.cfgs {
		if fc.Family == f {
			return fc.Config, nil
		}
	}
	h := host{Name: n.name, Node: n.info, Families: []proxier.IPFamily{f}}
	if o.manifests == "" {
		h.Local = localAddrs()
	}
	cfgs, err := proxyConfigs(o, h)
	if err != nil {
		return proxier.Config{}, err
	}
	return cfgs[0].Config, nil
}

// explain traces ea's packet through the plan of st under cfg, in o's
// mode, and names the rules.
func explain(o *options, opt iptables.Options, n *node, cfg proxier.Config, st *proxier.State, ea *explainArgs) explanation {
	kind, why := proxier.SourceKind(ea.fromKind), "given by --from-kind"
	if kind == "" {
		kind, why = inferSourceKind(ea.src, cfg, n.info, o.clusterCIDRs, st)
		why = "inferred: " + why
	}
	if o.proxyMode == "nftables" {
		cfg.Mode = proxier.NFTablesMode
	} else {
		cfg.Mode = proxier.IPTablesMode
	}
	plan := proxier.MakePlan(cfg, st)
	t := plan.Trace(proxier.Packet{Source: ea.src, Kind: kind, Dest: ea.dst, Protocol: ea.prot})
	e := explanation{Trace: t, SourceKind: kind, SourceKindWhy: why, Mode: o.proxyMode, Family: cfg.Family.String(), Node: n.name, Rules: []proxier.Location{}}
	if o.proxyMode == "nftables" {
		e.Rules = append(e.Rules, nftables.Explain(plan, t)...)
	} else {
		e.Rules = append(e.Rules, iptables.Explain(plan, opt, t)...)
	}
	return e
}

// inferSourceKind says what sent a packet from src, as this node sees it:
// the node itself (one of its addresses), a pod of this node (an endpoint
// on it, an address of its pod CIDRs, or of the CIDRs local detection
// counts as its pods when the Node has none), a pod of another node (an
// endpoint there, or an address of the cluster CIDRs), else a client
// outside the cluster.
func inferSourceKind(src netip.Addr, cfg proxier.Config, info syncer.NodeInfo, clusterCIDRs []netip.Prefix, st *proxier.State) (proxier.SourceKind, string) {
	if src.IsLoopback() || slices.Contains(cfg.NodeIPs, src) || slices.Contains(cfg.LocalAddrs, src) || slices.Contains(info.InternalIPs, src) {
		return proxier.FromNode, "one of this node's addresses"
	}
	for _, svc := range st.Services {
		for _, e := range svc.Endpoints {
			switch {
			case e.IP != src:
			case e.IsLocal:
				return proxier.FromLocalPod, fmt.Sprintf("an endpoint of %s on this node", svc.Name)
			case e.NodeName != "":
				return proxier.FromRemotePod, fmt.Sprintf("an endpoint of %s on node %s", svc.Name, e.NodeName)
			}
		}
	}
	in := func(ps []netip.Prefix) (netip.Prefix, bool) {
		for _, p := range ps {
			if p.Contains(src) {
				return p, true
			}
		}
		return netip.Prefix{}, false
	}
	podCIDRs := familyPrefixes(cfg.Family, info.PodCIDRs)
	if p, ok := in(podCIDRs); ok {
		return proxier.FromLocalPod, fmt.Sprintf("in this node's pod CIDR %s", p)
	}
	d := cfg.LocalDetector
	if len(podCIDRs) == 0 && (d.Mode == proxier.LocalClusterCIDR || d.Mode == proxier.LocalNodeCIDR) {
		if p, ok := in(d.CIDRs); ok {
			return proxier.FromLocalPod, fmt.Sprintf("in %s, which --detect-local-mode=%s counts as this node's pods (the Node has no pod CIDR)", p, d.Mode)
		}
	}
	if p, ok := in(clusterCIDRs); ok {
		return proxier.FromRemotePod, fmt.Sprintf("in the cluster CIDR %s, outside this node's pod CIDRs", p)
	}
	return proxier.FromOutside, "neither this node's address nor in a pod CIDR"
}
