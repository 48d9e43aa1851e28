package iptables

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// A probe reads, cheaply and whatever the size of the ruleset, a stamp that
// changes whenever anyone changes the tables we use, and, when it changed,
// the number of rules of every chain of a table.
//
//   - iptables-nft: the stamp is the nf_tables ruleset generation of the
//     network namespace (one NFT_MSG_GETGEN netlink request, see
//     proxier/nfnl). The kernel bumps it on every committed transaction,
//     by anyone. The rule counts come from NFT_MSG_GETRULE dumps: the
//     kernel sends one message per rule and we count them by chain without
//     decoding a single expression (iptables-nft -S decodes every rule
//     back into iptables syntax, which takes long for a chain as large as
//     KUBE-SERVICES at scale).
//   - iptables-legacy: the stamp is, for each table, the number of entries
//     and the size of the table's blob (IPT_SO_GET_INFO, one getsockopt;
//     every rule and chain is an entry). Any iptables-legacy command reads
//     and parses the whole blob instead, whatever the chain it is asked
//     about. Rule counts come from iptables-legacy-save, which is only
//     paid after a change.
type probe interface {
	stamp() (string, error)
	// read returns the rule count of the chains named in only (every
	// chain of table when only is nil; a chain that does not exist is left
	// out) and, where it has them for free, the rules; ok is false when
	// the table does not exist. A read may return more than asked for;
	// complete says it holds every chain.
	read(table string, only []string) (tableRead, bool, error)
	// ours reports whether the stamp moving from before to after is
	// explained by our own restore of commits tables alone. The nft
	// generation moves by one per COMMIT; the legacy stamp cannot tell, and
	// we accept it (the window is the microseconds between the end of
	// iptables-restore and the getsockopt).
	ours(before, after string, commits int) bool
}

// tableRead is what a deep check reads of one table.
type tableRead struct {
	counts   map[string]int
	rules    map[string][]string // nil unless the probe read them anyway
	complete bool
}

// newProbe returns the probe for bin's backend in the network namespace
// named netns ("" for our own), or nil when the backend is unknown (plain
// iptables whose backend we did not detect).
func newProbe(bin Binaries, netns string, save func(table string) ([]byte, error)) probe {
	family := proxier.IPv4
	if strings.HasPrefix(bin.Command, "ip6") {
		family = proxier.IPv6
	}
	switch bin.Mode {
	case "nft":
		nf := nfnl.IPv4
		if family == proxier.IPv6 {
			nf = nfnl.IPv6
		}
		return &nftProbe{family: nf, netns: netns}
	case "legacy":
		return &legacyProbe{family: family, netns: netns, save: save}
	}
	return nil
}

// withNetns runs f on a thread in the named network namespace (our own
// when name is ""). Sockets f opens stay in that namespace.
func withNetns(name string, f func() error) error {
	if name == "" {
		return f()
	}
	target, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		return err
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with the goroutine, so a
		// failure to switch back cannot leak a thread in the wrong
		// namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// nftProbe reads the nf_tables ruleset over netlink (proxier/nfnl).
type nftProbe struct {
	family nfnl.Family
	netns  string
	mu     sync.Mutex
	conn   *nfnl.Conn
}

func (p *nftProbe) ours(before, after string, commits int) bool {
	b, err1 := strconv.ParseUint(before, 10, 32)
	a, err2 := strconv.ParseUint(after, 10, 32)
	return err1 == nil && err2 == nil && uint32(a)-uint32(b) == uint32(commits)
}

// dial returns the probe's connection, made on first use in its network
// namespace.
func (p *nftProbe) dial() (*nfnl.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		return p.conn, nil
	}
	fd := 0
	if p.netns != "" {
		ns, err := os.Open("/var/run/netns/" + p.netns)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		fd = int(ns.Fd())
	}
	c, err := nfnl.Dial(fd)
	if err != nil {
		return nil, err
	}
	p.conn = c
	return c, nil
}

func (p *nftProbe) stamp() (string, error) {
	c, err := p.dial()
	if err != nil {
		return "", fmt.Errorf("nf_tables generation: %w", err)
	}
	g, err := c.Generation(context.Background())
	if err != nil {
		return "", err
	}
	return strconv.FormatUint(uint64(g), 10), nil
}

func (p *nftProbe) read(table string, only []string) (tableRead, bool, error) {
	c, err := p.dial()
	if err != nil {
		return tableRead{}, false, err
	}
	ctx := context.Background()
	out := map[string]int{}
	if only != nil {
		for _, ch := range only {
			out[ch] = 0
		}
	} else {
		chains, err := c.Chains(ctx, p.family, table)
		if err != nil {
			return tableRead{}, false, err
		}
		if len(chains) == 0 {
			return tableRead{}, false, nil
		}
		for _, ch := range chains {
			out[ch] = 0
		}
	}
	// One dump per chain: a dump of the whole table restarts its walk
	// from the table's first rule for every message buffer it fills, which
	// grows with the square of the table's rules; a chain's dump walks
	// only that chain.
	for chain := range out {
		counts, err := c.RuleCounts(ctx, p.family, table, chain)
		if err != nil {
			return tableRead{}, false, err
		}
		if out[chain] = counts[chain]; out[chain] > 0 {
			continue
		}
		// The dump reads a missing chain as an empty one.
		if ok, err := c.HasChain(ctx, p.family, table, chain); err != nil {
			return tableRead{}, false, err
		} else if !ok {
			delete(out, chain)
		}
	}
	return tableRead{counts: out, complete: only == nil}, true, nil
}

// legacyProbe reads the x_tables blobs' headers with getsockopt.
type legacyProbe struct {
	family proxier.IPFamily
	netns  string
	save   func(table string) ([]byte, error)
	mu     sync.Mutex
	fd     int
	open   bool
}

func (p *legacyProbe) ours(before, after string, commits int) bool { return true }

// ipt_getinfo / ip6t_getinfo (linux/netfilter_ipv4/ip_tables.h): name[32],
// valid_hooks, hook_entry[5], underflow[5], num_entries, size.
const (
	soGetInfo     = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	getInfoLen    = 32 + 4 + 5*4 + 5*4 + 4 + 4
	getInfoNumOff = 32 + 4 + 5*4 + 5*4
)

func (p *legacyProbe) info(table string) (entries, size uint32, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	domain, level := unix.AF_INET, unix.IPPROTO_IP
	if p.family == proxier.IPv6 {
		domain, level = unix.AF_INET6, unix.IPPROTO_IPV6
	}
	if !p.open {
		err := withNetns(p.netns, func() error {
			fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
			p.fd = fd
			return err
		})
		if err != nil {
			return 0, 0, fmt.Errorf("raw socket: %w", err)
		}
		p.open = true
	}
	var buf [getInfoLen]byte
	copy(buf[:31], table)
	l := uint32(len(buf))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(p.fd), uintptr(level), soGetInfo,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return 0, 0, fmt.Errorf("getsockopt %s: %w", table, e)
	}
	return binary.NativeEndian.Uint32(buf[getInfoNumOff:]), binary.NativeEndian.Uint32(buf[getInfoNumOff+4:]), nil
}

func (p *legacyProbe) stamp() (string, error) {
	var b strings.Builder
	for _, t := range []string{Filter, NAT} {
		n, size, err := p.info(t)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s:%d/%d ", t, n, size)
	}
	return b.String(), nil
}

func (p *legacyProbe) read(table string, _ []string) (tableRead, bool, error) {
	data, err := p.save(table)
	if err != nil {
		return tableRead{}, false, err
	}
	t := parseSave(data)
	if len(t.chains) == 0 {
		return tableRead{}, false, nil
	}
	out := map[string]int{}
	for c := range t.chains {
		out[c] = len(t.rules[c])
	}
	return tableRead{counts: out, rules: t.rules, complete: true}, true, nil
}
