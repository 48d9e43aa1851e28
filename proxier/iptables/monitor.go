package iptables

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// probeChains are chains whose content any flush of their table (iptables
// -F, a firewalld reload, nft flush ruleset) empties, and which are small, so
// reading them is cheap at any scale.
var probeChains = map[string][]string{
	NAT:    {chainPostrouting, chainMarkMasq},
	Filter: {chainForward},
}

// Check reports what the last successful sync put in the kernel that is no
// longer there: a jump rule from a built-in chain, or the rules of a probe
// chain. It reads only built-in and probe chains, so it stays cheap with
// tens of thousands of services. It returns "" when all is in place or no
// sync has succeeded yet.
func (p *Proxier) Check(ctx context.Context) (string, error) {
	p.mu.Lock()
	if p.applied == nil {
		p.mu.Unlock()
		return "", nil
	}
	want := map[string]map[string]string{}
	for table, chains := range probeChains {
		want[table] = map[string]string{}
		for _, c := range chains {
			want[table][c] = p.applied[table][c]
		}
	}
	jumps := JumpsFor(p.cfg)
	p.mu.Unlock()

	builtin := map[[2]string][]string{}
	for _, j := range jumps {
		key := [2]string{j.Table, j.From}
		rules, ok := builtin[key]
		if !ok {
			var err error
			if rules, _, err = p.run.Rules(ctx, j.Table, j.From); err != nil {
				return "", err
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
	for table, chains := range want {
		for chain, content := range chains {
			rules, ok, err := p.run.Rules(ctx, table, chain)
			if err != nil {
				return "", err
			}
			if !ok {
				return fmt.Sprintf("chain %s/%s", table, chain), nil
			}
			if wantN := len(strings.Split(content, "\n")); content != "" && len(rules) != wantN {
				return fmt.Sprintf("rules of %s/%s (%d of %d)", table, chain, len(rules), wantN), nil
			}
		}
	}
	return "", nil
}

// Monitor checks every interval that the rules are in place (see Check) and
// has them rewritten at once when they are not (see proxier.Monitor).
func (p *Proxier) Monitor(ctx context.Context, interval time.Duration, resync func()) {
	proxier.Monitor(ctx, p.cfg.Family, p, interval, resync)
}
