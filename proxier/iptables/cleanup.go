package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
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

// CleanupInput returns iptables-restore input removing from one saved table
// every jump rule into chains svcproxy or kube-proxy own, and those chains.
// It is empty when there is nothing to remove.
func CleanupInput(table string, saved []byte) []byte {
	t := parseSave(saved)
	owned := map[string]bool{}
	for _, c := range ownedChains[table] {
		owned[c] = true
	}
	var chains []string
	for name := range t.chains {
		if owned[name] || IsServiceChain(name) {
			chains = append(chains, name)
		}
	}
	if len(chains) == 0 {
		return nil
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
	return []byte(b.String())
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
	for _, table := range []string{NAT, Filter, Mangle} {
		saved, err := run.Save(ctx, table)
		if err != nil {
			return err
		}
		if in := CleanupInput(table, saved); len(in) > 0 {
			if err := run.Restore(ctx, in); err != nil {
				return fmt.Errorf("cleanup of %s: %w", table, err)
			}
		}
	}
	return nil
}
