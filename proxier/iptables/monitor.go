package iptables

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// Flush detection. kube-proxy watches an empty KUBE-PROXY-CANARY chain in
// mangle, which misses a flush of nat alone, or of one chain. Check instead
// compares the rule count of every chain the last sync left (top-level and
// per-service chains alike) with the kernel's, plus the jump rules in the
// built-in chains, so a flushed table, a flushed chain, a deleted chain or
// one deleted rule is noticed at the next tick.
//
// Reading every chain each tick would cost too much with many Services, so
// Check works in steps (see probe). Every tick it reads a stamp that moves
// whenever anyone changes the ruleset (the nf_tables generation for
// iptables-nft, the x_tables blob headers for iptables-legacy), at a cost
// that does not grow with the number of Services. Only when the stamp moved
// and our own restore does not explain it does it read rule counts: first
// the top-level chains and the jumps (iptables-nft: one netlink dump per
// chain, no decoding), then the per-service chains (iptables-nft: one dump
// per chain; iptables-legacy: one iptables-save that also serves the first
// step). Per-service reads are spaced by serviceReadShare× their cost. When
// all is in place the new stamp is remembered as good, so a foreign change
// is paid for once. Listing chains with iptables -S instead would make
// every iptables-legacy command parse the whole table.
//
// Without a probe (plain iptables whose backend was not detected), Check
// falls back to exec: the jump rules and the rule counts of the top-level
// chains (iptables -S CHAIN each); per-service chains are then not covered
// until the periodic full sync.

// appliedCounts returns the rule count of each chain the last sync left.
// Callers hold p.mu.
func (p *Proxier) appliedCounts() map[string]map[string]int {
	out := map[string]map[string]int{}
	for table, chains := range p.applied {
		m := make(map[string]int, len(chains))
		for c, rules := range chains {
			if rules != "" {
				m[c] = strings.Count(rules, "\n") + 1
			} else {
				m[c] = 0
			}
		}
		out[table] = m
	}
	return out
}

// Check reports what the last successful sync put in the kernel that is no
// longer there: a jump rule from a built-in chain, a chain, or rules of a
// chain. It returns "" when all is in place or no sync has succeeded yet.
// It holds the proxier's lock, so a sync never runs halfway through it.
func (p *Proxier) Check(ctx context.Context) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.applied == nil {
		return "", nil
	}
	if p.probe == nil {
		return p.checkByExec(ctx)
	}
	stamp, err := p.probe.stamp()
	if err != nil {
		return "", err
	}
	if stamp == p.goodStamp {
		p.checksIdle++
		return "", nil
	}
	p.checksDeep++
	missing, complete, err := p.checkDeep(ctx)
	if err == nil && missing == "" && complete {
		p.goodStamp = stamp
	}
	return missing, err
}

// serviceReadShare bounds the time spent reading per-service chains: after
// a read that took d, the next one waits serviceReadShare×d, so an agent
// that changes the ruleset every second costs at most a tenth of a core.
const serviceReadShare = 10

// checkDeep reads the rule count of every chain of our tables: the
// top-level chains and the jump rules first, so that the usual damage (a
// flushed table or top-level chain) is found without reading the
// per-service chains, the costly part with many Services.
//
// complete is false when the per-service chains were not read this time
// (see serviceReadShare); the stamp is then not remembered as good, so a
// later tick reads them.
func (p *Proxier) checkDeep(ctx context.Context) (missing string, complete bool, err error) {
	want := p.appliedCounts()
	reads := map[string]tableRead{}
	for _, table := range []string{Filter, NAT} {
		if want[table] == nil {
			continue
		}
		var top []string
		for c := range want[table] {
			if !IsServiceChain(c) {
				top = append(top, c)
			}
		}
		slices.Sort(top)
		r, ok, err := p.probe.read(table, top)
		if err != nil {
			return "", false, err
		}
		if !ok {
			return "table " + table, true, nil
		}
		if missing := compareCounts(table, top, want[table], r.counts); missing != "" {
			return missing, true, nil
		}
		reads[table] = r
	}
	if missing, err := p.checkJumps(ctx, func(table, chain string) ([]string, bool) {
		rules, ok := reads[table].rules[chain]
		return rules, ok || reads[table].rules != nil
	}); missing != "" || err != nil {
		return missing, true, err
	}
	if !p.serviceReadAt.IsZero() && p.now().Sub(p.serviceReadAt) < serviceReadShare*p.serviceReadCost {
		return "", false, nil
	}
	start := p.now()
	defer func() { p.serviceReadAt, p.serviceReadCost = p.now(), p.now().Sub(start) }()
	for _, table := range []string{Filter, NAT} {
		var names []string
		for c := range want[table] {
			if IsServiceChain(c) {
				names = append(names, c)
			}
		}
		if len(names) == 0 {
			continue
		}
		slices.Sort(names)
		r := reads[table]
		if !r.complete {
			var ok bool
			var err error
			if r, ok, err = p.probe.read(table, nil); err != nil {
				return "", false, err
			} else if !ok {
				return "table " + table, true, nil
			}
		}
		if missing := compareCounts(table, names, want[table], r.counts); missing != "" {
			return missing, true, nil
		}
	}
	return "", true, nil
}

// compareCounts returns what differs between the wanted and the read rule
// counts of the named chains, or "".
func compareCounts(table string, names []string, want, got map[string]int) string {
	for _, c := range names {
		n, ok := got[c]
		if !ok {
			return fmt.Sprintf("chain %s/%s", table, c)
		}
		if n != want[c] {
			return fmt.Sprintf("rules of %s/%s (%d of %d)", table, c, n, want[c])
		}
	}
	return ""
}

// checkJumps checks every jump rule from a built-in chain. rulesOf returns
// a chain's rules when they were already read (ok), else they are read with
// iptables -S.
func (p *Proxier) checkJumps(ctx context.Context, rulesOf func(table, chain string) ([]string, bool)) (string, error) {
	builtin := map[[2]string][]string{}
	for _, j := range JumpsFor(p.cfg) {
		key := [2]string{j.Table, j.From}
		rules, ok := builtin[key]
		if !ok {
			if rules, ok = rulesOf(j.Table, j.From); !ok {
				var err error
				if rules, _, err = p.run.Rules(ctx, j.Table, j.From); err != nil {
					return "", err
				}
			}
			builtin[key] = rules
		}
		found := false
		for _, r := range rules {
			found = found || j.matches(r)
		}
		if !found {
			return fmt.Sprintf("jump %s/%s -> %s", j.Table, j.From, j.To), nil
		}
	}
	return "", nil
}

// checkByExec checks the jump rules and the rule counts of the top-level
// chains with one iptables -S per chain.
func (p *Proxier) checkByExec(ctx context.Context) (string, error) {
	if missing, err := p.checkJumps(ctx, func(string, string) ([]string, bool) { return nil, false }); missing != "" || err != nil {
		return missing, err
	}
	want := p.appliedCounts()
	for _, table := range []string{Filter, NAT} {
		var names []string
		for c := range want[table] {
			if !IsServiceChain(c) {
				names = append(names, c)
			}
		}
		slices.Sort(names)
		for _, c := range names {
			rules, ok, err := p.run.Rules(ctx, table, c)
			if err != nil {
				return "", err
			}
			if !ok {
				return fmt.Sprintf("chain %s/%s", table, c), nil
			}
			if len(rules) != want[table][c] {
				return fmt.Sprintf("rules of %s/%s (%d of %d)", table, c, len(rules), want[table][c]), nil
			}
		}
	}
	return "", nil
}

// Watch starts the guard: every interval it checks that the rules are in
// place (see Check). The channel asks for a sync when they are not; that
// sync rewrites everything (see proxier.Monitor).
func (p *Proxier) Watch(ctx context.Context, interval time.Duration) <-chan struct{} {
	sig := proxier.NewSignal()
	go proxier.Monitor(ctx, p.cfg.Family, p, interval, sig)
	return sig
}
