package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// ownedChains are the top-level chains svcproxy (and kube-proxy) create, per
// table. KUBE-FIREWALL is left alone: kubelet owns it too.
var ownedChains = map[string][]string{
	Filter: {chainServices, chainExternalServices, chainForward, chainNodePorts, chainProxyFirewall, "KUBE-PROXY-CANARY"},
	NAT:    {chainServices, chainNodePorts, chainPostrouting, chainMarkMasq, "KUBE-PROXY-CANARY"},
	Mangle: {"KUBE-PROXY-CANARY"},
}

// Mangle is where kube-proxy keeps its canary chain.
const Mangle = "mangle"

// cleanupTables are the tables a cleanup looks at.
var cleanupTables = []string{NAT, Filter, Mangle}

// owned reports whether chain of table is one svcproxy or kube-proxy own.
func owned(table, chain string) bool {
	return IsServiceChain(chain) || slices.Contains(ownedChains[table], chain)
}

// CleanupInput returns iptables-restore input removing from one saved table
// every jump rule into chains svcproxy or kube-proxy own, and those chains.
// It is empty when there is nothing to remove.
func CleanupInput(table string, saved []byte) []byte {
	in, _ := cleanupPlan(table, saved)
	return in
}

// cleanupPlan is CleanupInput and the chains it removes, sorted.
func cleanupPlan(table string, saved []byte) ([]byte, []string) {
	t := parseSave(saved)
	var chains []string
	for name := range t.chains {
		if owned(table, name) {
			chains = append(chains, name)
		}
	}
	if len(chains) == 0 {
		return nil, nil
	}
	slices.Sort(chains)
	del := map[string]bool{}
	for _, c := range chains {
		del[c] = true
	}
	var b strings.Builder
	b.WriteString("*" + table + "\n")
	for _, c := range chains {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	// Rules in chains we keep (built-in ones) that jump into ours.
	var from []string
	for chain := range t.rules {
		if !del[chain] {
			from = append(from, chain)
		}
	}
	slices.Sort(from)
	for _, chain := range from {
		for _, rule := range t.rules[chain] {
			if target := jumpTarget(rule); del[target] {
				fmt.Fprintf(&b, "-D %s %s\n", chain, rule)
			}
		}
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String()), chains
}

func jumpTarget(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

// Cleanup removes every rule and chain svcproxy or kube-proxy own in the
// nat, filter and mangle tables, one transaction per table.
func Cleanup(ctx context.Context, run Runner) error {
	for _, table := range cleanupTables {
		if _, err := cleanupTable(ctx, run, table); err != nil {
			return err
		}
	}
	return nil
}

// cleanupTable removes our chains and the jumps into them from one table,
// in one transaction, and returns the chains it removed.
func cleanupTable(ctx context.Context, run Runner, table string) ([]string, error) {
	saved, err := run.Save(ctx, table)
	if err != nil {
		return nil, err
	}
	in, chains := cleanupPlan(table, saved)
	if len(in) == 0 {
		return nil, nil
	}
	if err := run.Restore(ctx, in); err != nil {
		return nil, fmt.Errorf("cleanup of %s: %w", table, err)
	}
	return chains, nil
}

// Removed is what CleanupLeftovers took out of one table.
type Removed struct {
	Family  proxier.IPFamily
	Backend string // "nft", "legacy", or "" for unsuffixed (legacy) tools
	Table   string
	Chains  []string // sorted
}

// String names the table and its top-level chains; service chains are
// counted.
func (r Removed) String() string {
	var top []string
	for _, c := range r.Chains {
		if !IsServiceChain(c) {
			top = append(top, c)
		}
	}
	backend := r.Backend
	if backend == "" {
		backend = "iptables"
	}
	s := fmt.Sprintf("%v %s %s: %s", r.Family, backend, r.Table, strings.Join(top, " "))
	if n := len(r.Chains) - len(top); n > 0 {
		s += fmt.Sprintf(" +%d service chains", n)
	}
	return s
}

// legacyTablesFile lists a family's legacy x_tables tables in the reading
// thread's network namespace.
var legacyTablesFile = map[proxier.IPFamily]string{
	proxier.IPv4: "/proc/thread-self/net/ip_tables_names",
	proxier.IPv6: "/proc/thread-self/net/ip6_tables_names",
}

// leftovers is one iptables backend of one family, as CleanupLeftovers
// sees it.
type leftovers struct {
	family proxier.IPFamily
	bin    Binaries
	run    Runner
	netns  string // where run runs ("" for ours), to list legacy tables
}

// tables are the tables that may hold our chains, found without creating
// any: reading a legacy table that does not exist creates it, so only the
// tables the kernel lists are read; nft tables are read only when `nft list
// chains` shows one of our chains in them (or cannot tell).
func (l leftovers) tables(ctx context.Context) ([]string, error) {
	var out []string
	if l.bin.Mode != "nft" {
		var data []byte
		err := withNetns(l.netns, func() error {
			var err error
			data, err = os.ReadFile(legacyTablesFile[l.family])
			return err
		})
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // no x_tables in this kernel or family
		}
		if err != nil {
			return nil, err
		}
		names := strings.Fields(string(data))
		for _, t := range cleanupTables {
			if slices.Contains(names, t) {
				out = append(out, t)
			}
		}
		return out, nil
	}
	for _, t := range cleanupTables {
		chains, err := l.run.Chains(ctx, t)
		if err != nil || slices.ContainsFunc(chains, func(c string) bool { return owned(t, c) }) {
			out = append(out, t)
		}
	}
	return out, nil
}

// cleanup removes our chains from l's tables and returns what it removed.
func (l leftovers) cleanup(ctx context.Context) ([]Removed, error) {
	tables, err := l.tables(ctx)
	if err != nil {
		return nil, fmt.Errorf("%v %s: %w", l.family, l.bin.Command, err)
	}
	var out []Removed
	var errs []error
	for _, t := range tables {
		chains, err := cleanupTable(ctx, l.run, t)
		if err != nil {
			errs = append(errs, fmt.Errorf("%v %s: %w", l.family, l.bin.Command, err))
		}
		if len(chains) > 0 {
			out = append(out, Removed{Family: l.family, Backend: l.bin.Mode, Table: t, Chains: chains})
		}
	}
	return out, errors.Join(errs...)
}

// CleanupLeftovers removes svcproxy's and kube-proxy's chains, and the jumps
// into them, from every iptables backend this namespace has tools for (nft
// and legacy, IPv4 and IPv6), as a start in nftables mode needs: whichever
// backend an iptables-mode proxy used, its rules go. Unlike Cleanup it
// creates no table and writes only tables holding our chains. A backend or
// family without tools is skipped. It returns what it removed.
func CleanupLeftovers(ctx context.Context) ([]Removed, error) {
	var out []Removed
	var errs []error
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		for _, bin := range installedBackends(f) {
			r, err := leftovers{family: f, bin: bin, run: NewExecRunner(bin)}.cleanup(ctx)
			out = append(out, r...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return out, errors.Join(errs...)
}

// installedBackends are the iptables tools of family this host has: the
// nft and legacy ones, or else the unsuffixed ones.
func installedBackends(f proxier.IPFamily) []Binaries {
	base := "iptables"
	if f == proxier.IPv6 {
		base = "ip6tables"
	}
	var out []Binaries
	for _, mode := range []string{"nft", "legacy"} {
		b := Binaries{Mode: mode, Save: base + "-" + mode + "-save", Restore: base + "-" + mode + "-restore", Command: base + "-" + mode}
		if _, err := exec.LookPath(b.Restore); err == nil {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		if _, err := exec.LookPath(base + "-restore"); err == nil {
			out = append(out, Binaries{Save: base + "-save", Restore: base + "-restore", Command: base})
		}
	}
	return out
}
