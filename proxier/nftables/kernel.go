package nftables

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
)

// MinKernel is the oldest kernel the layout works on (kube-proxy's nftables
// mode asks for the same).
var MinKernel = [2]int{5, 13}

// CheckKernel returns an error when the running kernel is older than
// MinKernel. (knftables.New checks that nft is at least 1.0.1.)
func CheckKernel() error {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	v, ok := parseKernelVersion(release)
	if !ok {
		return fmt.Errorf("cannot parse the kernel version %q", release)
	}
	if v[0] < MinKernel[0] || v[0] == MinKernel[0] && v[1] < MinKernel[1] {
		return fmt.Errorf("nftables mode needs Linux %d.%d or later; this kernel is %s (use --proxy-mode=iptables)", MinKernel[0], MinKernel[1], release)
	}
	return nil
}

func parseKernelVersion(release string) ([2]int, bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor := parts[1]
	if i := strings.IndexFunc(minor, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minor = minor[:i]
	}
	min, err2 := strconv.Atoi(minor)
	return [2]int{major, min}, err1 == nil && err2 == nil
}

// NewKernel returns a Proxier that programs this network namespace's
// "svcproxy" table of cfg.Family, checking the kernel and nft first.
func NewKernel(cfg proxier.Config) (*Proxier, error) {
	return newKernel(cfg, 0)
}

// newKernel is NewKernel with its netlink sockets in the network namespace
// netns (an fd; 0: the current one). nft runs in the caller's.
func newKernel(cfg proxier.Config, netns int) (*Proxier, error) {
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	f := famOf(cfg.Family)
	nft, err := knftables.New(f.family, TableName)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	// One connection for the guard's checks and accounting, one for the
	// writer's batches and listings.
	checks, err := nfnl.Dial(netns)
	if err != nil {
		return nil, err
	}
	writes, err := nfnl.Dial(netns)
	if err != nil {
		checks.Close()
		return nil, err
	}
	p := New(cfg, nft)
	if lo := ignoredLoopback(p.cfg); len(lo) > 0 {
		klog.Warningf("nftables mode serves no NodePorts on loopback, as kube-proxy's: ignoring the loopback addresses of --nodeport-addresses %v for %v (connections to them are refused)", lo, cfg.Family)
	}
	nfFamily := newElemWriter(cfg.Family, nil).family
	p.guard = guard.New(guard.Config{Family: cfg.Family, Table: TableName, Traffic: isTrafficSet,
		Reader: guard.TableReader{Conn: checks, Family: nfFamily, Table: TableName},
		Events: &guard.Events{NetNS: netns, Sentinel: true}})
	p.w.guard = p.guard
	p.w.runText = execNFT
	p.w.batch = newElemWriter(cfg.Family, writes)
	p.w.shapes = guard.TableReader{Conn: writes, Family: nfFamily, Table: TableName}
	p.w.readAffinity = execReadAffinity
	return p, nil
}

// ignoredLoopback lists the --nodeport-addresses of cfg's family that
// hold loopback addresses, which the plan leaves out of the NodePort
// addresses in nftables mode; none when NodePorts answer on every local
// address (loopback is never among them then).
func ignoredLoopback(cfg proxier.Config) []netip.Prefix {
	np := proxier.NodePortsOf(cfg)
	if np.AllLocal || np.Localhost {
		return nil
	}
	var out []netip.Prefix
	for _, p := range cfg.NodePortAddresses {
		if p.Overlaps(np.Loopback) {
			out = append(out, p)
		}
	}
	return out
}

// nftVersion is nft's own account of its version, for logs.
func nftVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "nft", "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// deleteTables deletes the named table in the ip and ip6 families, where it
// exists.
func deleteTables(ctx context.Context, name string) error {
	for _, f := range []knftables.Family{knftables.IPv4Family, knftables.IPv6Family} {
		nft, err := knftables.New(f, name)
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		if _, err := nft.List(ctx, "chains"); knftables.IsNotFound(err) {
			continue
		}
		tx := nft.NewTransaction()
		tx.Delete(&knftables.Table{})
		if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
			return fmt.Errorf("delete table %s %s: %w", f, name, err)
		}
	}
	return nil
}

// Cleanup deletes svcproxy's tables (ip and ip6 "svcproxy").
func Cleanup(ctx context.Context) error { return deleteTables(ctx, TableName) }

// CleanupKubeProxy deletes the tables upstream kube-proxy's nftables mode
// leaves (ip and ip6 "kube-proxy"). Its iptables chains are removed by the
// iptables package's Cleanup.
func CleanupKubeProxy(ctx context.Context) error { return deleteTables(ctx, "kube-proxy") }

// execNFT runs `nft -f -`, streaming what write writes into it.
func execNFT(ctx context.Context, write func(io.Writer) error) error {
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("nft: %w", err)
	}
	werr := write(stdin)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("nft -f: %w: %s", err, firstLines(out.String(), 6))
	}
	return werr
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// IPv6Usable reports (as an error) why this namespace cannot hold an ip6
// table, or nil.
func IPv6Usable(ctx context.Context) error {
	_, err := knftables.New(knftables.IPv6Family, TableName)
	return err
}
