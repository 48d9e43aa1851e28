package iptables

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// This file cuts svcproxy's part out of iptables-save output, in a
// canonical form that two namespaces holding the same rules print alike
// (--dry-run --diff compares the kernel's with the desired rules loaded
// into a scratch namespace, both saved by the same iptables-save).

// SaveTables is `iptables-save -t TABLE` of bin's family in this network
// namespace, of each of tables in turn.
func SaveTables(ctx context.Context, bin Binaries, tables []string) (string, error) {
	run := NewExecRunner(bin)
	var b strings.Builder
	for _, t := range tables {
		out, err := run.Save(ctx, t)
		if err != nil {
			return "", err
		}
		b.Write(out)
	}
	return b.String(), nil
}

// Tables are the tables an iptables-restore input writes, in its order.
func Tables(restore string) []string {
	var out []string
	for _, l := range strings.Split(restore, "\n") {
		if t, ok := strings.CutPrefix(l, "*"); ok && !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// Owned is the part of iptables-save output that svcproxy owns, per table
// (sorted): the chains ours says are ours, each declared without counters
// and sorted by name, then the rules of built-in chains that jump to one of
// them, sorted, then their own rules, chain by chain. Rules keep their
// order within our chains, which matters; chains are listed sorted because
// the kernel keeps them in the order they were made. The jumps are sorted
// because a sync makes each present once but never moves one that is
// (others' rules share those chains). Comment lines (with iptables-save's
// dates) and counters are left out.
func Owned(save string, ours func(chain string) bool) string {
	type table struct {
		chains  []string            // ours, declared
		builtin []string            // built-in chains, declared
		rules   map[string][]string // chain -> its rules, as saved
	}
	tables := map[string]*table{}
	var cur *table
	for _, l := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(l, "*"):
			name := l[1:]
			if cur = tables[name]; cur == nil {
				cur = &table{rules: map[string][]string{}}
				tables[name] = cur
			}
		case cur == nil, strings.HasPrefix(l, "#"), l == "COMMIT":
		case strings.HasPrefix(l, ":"):
			f := strings.Fields(l[1:])
			if len(f) < 2 {
				continue
			}
			if f[1] != "-" {
				cur.builtin = append(cur.builtin, f[0])
			} else if ours(f[0]) {
				cur.chains = append(cur.chains, f[0])
			}
		case strings.HasPrefix(l, "-A "):
			f := strings.Fields(l)
			if len(f) > 1 {
				cur.rules[f[1]] = append(cur.rules[f[1]], l)
			}
		}
	}
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(tables)) {
		t := tables[n]
		slices.Sort(t.chains)
		slices.Sort(t.builtin)
		fmt.Fprintf(&b, "*%s\n", n)
		for _, c := range t.chains {
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
		var jumps []string
		for _, c := range t.builtin {
			for _, r := range t.rules[c] {
				if target := jumpTarget(r); target != "" && ours(target) {
					jumps = append(jumps, r)
				}
			}
		}
		slices.Sort(jumps)
		for _, r := range jumps {
			b.WriteString(r + "\n")
		}
		for _, c := range t.chains {
			for _, r := range t.rules[c] {
				b.WriteString(r + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// DeclaredChains are the user-defined chains iptables-save output
// declares.
func DeclaredChains(save string) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(save, "\n") {
		if rest, ok := strings.CutPrefix(l, ":"); ok {
			if f := strings.Fields(rest); len(f) > 1 && f[1] == "-" {
				out[f[0]] = true
			}
		}
	}
	return out
}
