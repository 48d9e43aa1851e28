package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Runner is the only way this package touches the kernel.
type Runner interface {
	// Save returns iptables-save output for one table.
	Save(ctx context.Context, table string) ([]byte, error)
	// Restore applies data in one iptables-restore --noflush transaction.
	Restore(ctx context.Context, data []byte) error
	// Chains returns the names of the chains in table. It must stay cheap
	// with a large ruleset: it does not read the rules.
	Chains(ctx context.Context, table string) ([]string, error)
	// Rules returns the rules of one chain (the text after "-A <chain> "),
	// reading only that chain; ok is false when the chain does not exist.
	Rules(ctx context.Context, table, chain string) (rules []string, ok bool, err error)
}

// Binaries names the iptables tools of one backend (nft or legacy) and family.
type Binaries struct {
	Mode    string // "nft", "legacy" or "" (whatever plain iptables is)
	Save    string
	Restore string
	Command string // iptables or ip6tables itself
}

// execRunner runs the iptables binaries, optionally behind a wrapper
// command (tests run them through "ip netns exec NAME").
type execRunner struct {
	bin  Binaries
	wrap []string
	// netns names the network namespace wrap enters, for the in-process
	// probes (see probe); "" is our own.
	netns string
}

// NewExecRunner returns a Runner that execs bin's tools.
func NewExecRunner(bin Binaries) Runner { return execRunner{bin: bin} }

func (r execRunner) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if len(r.wrap) > 0 {
		return exec.CommandContext(ctx, r.wrap[0], append(append(r.wrap[1:len(r.wrap):len(r.wrap)], name), args...)...)
	}
	return exec.CommandContext(ctx, name, args...)
}

func (r execRunner) Save(ctx context.Context, table string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := r.command(ctx, r.bin.Save, "-t", table)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s: %v: %s", r.bin.Save, table, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

func (r execRunner) Chains(ctx context.Context, table string) ([]string, error) {
	if r.bin.Mode != "nft" {
		// Legacy iptables-save reads one kernel blob; it is fast.
		out, err := r.Save(ctx, table)
		if err != nil {
			return nil, err
		}
		var names []string
		for name := range parseSave(out).chains {
			names = append(names, name)
		}
		return names, nil
	}
	// iptables-nft-save parses every rule back into iptables syntax, which
	// takes minutes with tens of thousands of chains; nft lists names only.
	family := "ip"
	if strings.HasPrefix(r.bin.Command, "ip6") {
		family = "ip6"
	}
	var out, errb bytes.Buffer
	cmd := r.command(ctx, "nft", "list", "chains", family)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nft list chains %s: %v: %s", family, err, strings.TrimSpace(errb.String()))
	}
	return parseNFTChains(out.String(), table), nil
}

// parseNFTChains returns the chain names of one table from "nft list chains"
// output.
func parseNFTChains(out, table string) []string {
	var names []string
	in := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "table":
			in = f[2] == table
		case in && len(f) >= 2 && f[0] == "chain":
			names = append(names, f[1])
		}
	}
	return names
}

func (r execRunner) Rules(ctx context.Context, table, chain string) ([]string, bool, error) {
	var out, errb bytes.Buffer
	cmd := r.command(ctx, r.bin.Command, "-w", "5", "-t", table, "-S", chain)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			return nil, false, nil // no such chain (or table)
		}
		return nil, false, fmt.Errorf("%s -t %s -S %s: %v: %s", r.bin.Command, table, chain, err, strings.TrimSpace(errb.String()))
	}
	var rules []string
	for _, line := range strings.Split(out.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "-A "+chain+" "); ok {
			rules = append(rules, rest)
		}
	}
	return rules, true, nil
}

func (r execRunner) Restore(ctx context.Context, data []byte) error {
	var errb bytes.Buffer
	cmd := r.command(ctx, r.bin.Restore, "--noflush", "-w", "5", "-W", "100000")
	cmd.Stdin = bytes.NewReader(data)
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v: %s", r.bin.Restore, err, strings.TrimSpace(errb.String()))
	}
	return nil
}

// Detect picks the iptables backend the host already uses, the way
// kube-proxy's image does: a kubelet hint chain in either backend decides;
// otherwise the backend holding more rules wins, nft on a tie.
func Detect(ctx context.Context, family proxier.IPFamily) Binaries {
	base := "iptables"
	if family == proxier.IPv6 {
		base = "ip6tables"
	}
	mk := func(mode string) Binaries {
		if mode == "" {
			return Binaries{Save: base + "-save", Restore: base + "-restore", Command: base}
		}
		return Binaries{Mode: mode, Save: base + "-" + mode + "-save", Restore: base + "-" + mode + "-restore", Command: base + "-" + mode}
	}
	nft, legacy := mk("nft"), mk("legacy")
	_, errN := exec.LookPath(nft.Restore)
	_, errL := exec.LookPath(legacy.Restore)
	switch {
	case errN != nil && errL != nil:
		return mk("")
	case errL != nil:
		return nft
	case errN != nil:
		return legacy
	}
	// Only *-save without -t: it lists the tables that exist, where
	// `iptables-legacy -t mangle ...` would create the legacy mangle table.
	save := func(b Binaries) string {
		var out []byte
		for _, bin := range []string{"iptables-" + b.Mode + "-save", "ip6tables-" + b.Mode + "-save"} {
			o, _ := exec.CommandContext(ctx, bin).Output()
			out = append(out, o...)
		}
		return string(out)
	}
	if pickBackend(save(nft), save(legacy)) == "legacy" {
		return legacy
	}
	return nft
}

// pickBackend decides between the nft and legacy backends from what their
// save commands print (IPv4 and IPv6 together): kubelet's hint chains
// decide; otherwise the one with more rules, nft on a tie.
func pickBackend(nftSave, legacySave string) string {
	hinted := func(save string) bool {
		for _, l := range strings.Split(save, "\n") {
			if strings.HasPrefix(l, ":KUBE-IPTABLES-HINT ") || strings.HasPrefix(l, ":KUBE-KUBELET-CANARY ") {
				return true
			}
		}
		return false
	}
	rules := func(save string) int {
		n := 0
		for _, l := range strings.Split(save, "\n") {
			if strings.HasPrefix(l, "-") {
				n++
			}
		}
		return n
	}
	switch {
	case hinted(nftSave):
		return "nft"
	case hinted(legacySave):
		return "legacy"
	case rules(legacySave) > rules(nftSave):
		return "legacy"
	}
	return "nft"
}

// savedTable is a parsed iptables-save table: chain names, and the rules of
// each chain (text after "-A <chain> ").
type savedTable struct {
	chains map[string]bool
	rules  map[string][]string
}

func parseSave(data []byte) savedTable {
	t := savedTable{chains: map[string]bool{}, rules: map[string][]string{}}
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			t.chains[name] = true
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			t.rules[chain] = append(t.rules[chain], rule)
		}
	}
	return t
}

// matches reports whether a saved rule is jump j.
func (j Jump) matches(rule string) bool {
	if j.Comment == "" {
		return strings.TrimSpace(rule) == j.Spec()
	}
	if !strings.HasSuffix(rule, "-j "+j.To) && !strings.Contains(rule, "-j "+j.To+" ") {
		return false
	}
	return strings.Contains(rule, `--comment "`+j.Comment+`"`) || strings.Contains(rule, "--comment "+j.Comment)
}
