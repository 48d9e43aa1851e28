package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// The host's files NewKernel reads and writes; variables so that tests can
// point them elsewhere.
var (
	// tcpBeLiberalPath holds 1 when conntrack accepts out-of-window TCP
	// packets.
	tcpBeLiberalPath = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
	// routeLocalnetPath lets packets to 127.0.0.0/8 be routed, which
	// localhost NodePorts need.
	routeLocalnetPath = "/proc/sys/net/ipv4/conf/all/route_localnet"
)

// NewKernel returns a Proxier that programs this network namespace's
// iptables of cfg.Family, with the tools and options this host calls for:
// the iptables backend the host already uses (Detect), --random-fully when
// the tools have it, INVALID packets dropped unless conntrack is liberal,
// kube-proxy's nfacct counters where the kernel has them, and
// route_localnet set when NodePorts answer on localhost.
func NewKernel(ctx context.Context, cfg proxier.Config) (*Proxier, error) {
	if cfg.Family != proxier.IPv4 && cfg.Family != proxier.IPv6 {
		return nil, fmt.Errorf("iptables: invalid family %d", int(cfg.Family))
	}
	bin := Detect(ctx, cfg.Family)
	opt := Options{RandomFully: hasRandomFully(bin), DropInvalid: !tcpBeLiberal(), NFAcct: nfacctUsable(ctx, cfg.Family)}
	klog.InfoS("Using iptables", "family", cfg.Family, "backend", bin.Mode, "restore", bin.Restore, "randomFully", opt.RandomFully,
		"nfacct", opt.NFAcct, "nodePortAddresses", cfg.NodePortAddresses, "localDetector", cfg.LocalDetector.Mode)
	if LocalhostNodePorts(cfg) {
		// NodePorts on 127.0.0.1 need routing of localnet packets; the
		// KUBE-FIREWALL rule keeps outside packets to 127/8 out. Never set
		// it when --nodeport-addresses leaves loopback out: there would be
		// no guard (CVE-2020-8558).
		// An init container may have set it already, where this one
		// cannot write /proc/sys.
		if b, err := os.ReadFile(routeLocalnetPath); err != nil || strings.TrimSpace(string(b)) != "1" {
			if err := os.WriteFile(routeLocalnetPath, []byte("1"), 0o644); err != nil {
				klog.ErrorS(err, "Cannot enable route_localnet; NodePorts on localhost will not work")
			}
		}
	}
	return New(cfg, opt, NewExecRunner(bin)), nil
}

// DryRunOptions are the Options for --dry-run: what NewKernel would pick on
// this host, without running any iptables tool or creating anything
// (--random-fully assumed; the nfacct counters a proxier that ran here
// created).
func DryRunOptions(ctx context.Context) Options {
	return Options{RandomFully: true, DropInvalid: !tcpBeLiberal(), NFAcct: nfacctReadable(ctx)}
}

// FileOptions are the Options for rules rendered from files alone
// (--dry-run --manifests): nothing of this host is read.
func FileOptions() Options { return Options{RandomFully: true, DropInvalid: true} }

// IPv6Usable reports (as an error) why this namespace cannot hold IPv6
// rules: no ip6tables nat table, or no ip6tables at all; nil when it can.
func IPv6Usable(ctx context.Context) error {
	_, ok, err := NewExecRunner(Detect(ctx, proxier.IPv6)).Rules(ctx, NAT, "PREROUTING")
	if err == nil && !ok {
		err = errors.New("no ip6tables nat table")
	}
	return err
}

// CleanupAll removes the KUBE-* chains and jumps (svcproxy's and
// kube-proxy's) in both families, with the tools this host has; a family
// without them is skipped.
func CleanupAll(ctx context.Context) error {
	var errs []error
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		bin := Detect(ctx, f)
		if _, err := exec.LookPath(bin.Restore); err != nil {
			continue
		}
		if err := Cleanup(ctx, NewExecRunner(bin)); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", f, err))
		}
	}
	return errors.Join(errs...)
}

func hasRandomFully(bin Binaries) bool {
	ipt, err := goipt.New(goipt.Path(bin.Command))
	if err != nil {
		return false
	}
	return ipt.HasRandomFully()
}

// tcpBeLiberal reports whether conntrack accepts out-of-window TCP packets,
// in which case INVALID packets need not be dropped.
func tcpBeLiberal() bool {
	b, err := os.ReadFile(tcpBeLiberalPath)
	return err == nil && strings.TrimSpace(string(b)) != "0"
}
