package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// svcproxy's rules in the built-in chains (iptables) and its base chains
// (nftables) sit where kube-proxy's do, each once.

// TestJumpOrder: the rules svcproxy puts into built-in chains sit in
// kube-proxy's order, each exactly once, after several syncs and after a
// restart. iptables mode: the jumps kube-proxy's iptablesJumpChains (and
// the kubelet's KUBE-FIREWALL) end up as on a fresh node. nftables mode:
// the base chains have kube-proxy's nftables hooks and priorities
// (filter at dstnat-10 before DNAT for the firewall, nat at dstnat and
// srcnat, filter at filter), and their rules are not duplicated.
func TestJumpOrder(t *testing.T) {
	c := begin(t)
	svc := c.createService("jump-order", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	check := func(when string) {
		t.Helper()
		if env.ProxyMode == "nftables" {
			c.checkNFTBaseChains(when)
		} else {
			c.checkIPTablesJumps(when)
		}
	}
	// Several syncs: endpoint changes, each waited for.
	start := syncCount(c)
	for i, pods := range [][]*harness.Pod{backends[:1], backends[:2], backends, backends[1:]} {
		var eps []harness.Endpoint
		for _, p := range pods {
			eps = append(eps, at(p, harness.NodeName))
		}
		c.slice(svc, eps...)
		c.waitDNATs(svc, "tcp", pods...)
		if i == 1 {
			check("after 2 endpoint changes")
		}
	}
	c.eventually("several syncs", func() string {
		if n := syncCount(c) - start; n < 4 {
			return fmt.Sprintf("%v syncs", n)
		}
		return ""
	})
	check(fmt.Sprintf("after %v syncs", syncCount(c)-start))
	c.restartSvcproxy()
	c.slice(svc, at(backends[0], harness.NodeName))
	c.waitDNATs(svc, "tcp", backends[0])
	check("after a restart and a sync")
	rs := c.connect(client, harness.ClientOptions{Target: net.JoinHostPort(svc.Spec.ClusterIP, "80"), Count: 3})
	if m := landed(rs, backends[:1], client.IP, ""); m != "" {
		t.Errorf("after the restart: %s", m)
	}
}

// kubeProxyJumps is where kube-proxy's iptables mode leaves its jumps on a
// fresh node (each inserted at the top, in reverse iptablesJumpChains
// order; KUBE-FIREWALL, the kubelet's, first in INPUT and OUTPUT when the
// localhost-NodePort guard is in use), with the extra match each carries.
var kubeProxyJumps = map[string]map[string][]string{
	"filter": {
		"INPUT":   {"KUBE-FIREWALL?", "KUBE-PROXY-FIREWALL NEW", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES NEW"},
		"FORWARD": {"KUBE-PROXY-FIREWALL NEW", "KUBE-FORWARD", "KUBE-SERVICES NEW", "KUBE-EXTERNAL-SERVICES NEW"},
		"OUTPUT":  {"KUBE-FIREWALL?", "KUBE-PROXY-FIREWALL NEW", "KUBE-SERVICES NEW"},
	},
	"nat": {
		"PREROUTING":  {"KUBE-SERVICES"},
		"OUTPUT":      {"KUBE-SERVICES"},
		"POSTROUTING": {"KUBE-POSTROUTING"},
	},
}

func (c *tc) checkIPTablesJumps(when string) {
	c.Helper()
	order := map[string]string{}
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		for _, table := range []string{"filter", "nat"} {
			out, err := env.Node.Run(c.ctx, save, "-t", table)
			if err != nil {
				c.Fatalf("%s -t %s: %v", save, table, err)
			}
			got := builtinJumps(out)
			for chain, want := range kubeProxyJumps[table] {
				var seen []string
				for _, rule := range got[chain] {
					s := jumpOf(rule)
					if strings.Contains(rule, "--ctstate NEW") {
						s += " NEW"
					}
					seen = append(seen, s)
				}
				// KUBE-FIREWALL: only where svcproxy guards localhost
				// NodePorts (IPv4); first when there.
				w := slices.Clone(want)
				if len(w) > 0 && w[0] == "KUBE-FIREWALL?" {
					if len(seen) > 0 && seen[0] == "KUBE-FIREWALL" {
						w[0] = "KUBE-FIREWALL"
					} else {
						w = w[1:]
					}
				}
				order[save+" "+table+" "+chain] = strings.Join(seen, ", ")
				if strings.Join(seen, ", ") != strings.Join(w, ", ") {
					c.Errorf("%s: %s -t %s %s jumps are [%s], want kube-proxy's [%s]:\n%s",
						when, save, table, chain, strings.Join(seen, ", "), strings.Join(w, ", "), strings.Join(got[chain], "\n"))
				}
			}
			for chain := range got {
				if kubeProxyJumps[table][chain] == nil {
					c.Errorf("%s: %s -t %s: unexpected jumps in %s: %v", when, save, table, chain, got[chain])
				}
			}
		}
	}
	keys := make([]string, 0, len(order))
	for k := range order {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n\t%s: %s", k, order[k])
	}
	c.Logf("RESULT %s: jumps into built-in chains in kube-proxy's order, each once:%s", when, b.String())
}

// kubeProxyNFTHooks are kube-proxy's nftables base chains as
// type/hook/priority (pkg/proxy/nftables nftablesBaseChains): filter
// prerouting and output at dstnat-10 (the firewall, before DNAT), filter
// input, forward and output at filter, nat prerouting and output at
// dstnat, nat postrouting at srcnat.
var kubeProxyNFTHooks = []string{
	"filter/forward/0", "filter/input/0", "filter/output/-110", "filter/output/0", "filter/prerouting/-110",
	"nat/output/-100", "nat/postrouting/100", "nat/prerouting/-100",
}

func (c *tc) checkNFTBaseChains(when string) {
	c.Helper()
	for _, family := range []string{"ip", "ip6"} {
		chains := c.nftBaseChains(family, "svcproxy")
		if got := hookSignature(chains); strings.Join(got, " ") != strings.Join(kubeProxyNFTHooks, " ") {
			c.Errorf("%s: %s svcproxy base chains are %v, want kube-proxy's %v", when, family, got, kubeProxyNFTHooks)
		}
		for _, ch := range chains {
			seen := map[string]bool{}
			for _, r := range ch.Rules {
				if seen[r] {
					c.Errorf("%s: %s base chain %s has a duplicate rule %s", when, family, ch.Name, r)
				}
				seen[r] = true
			}
			if len(ch.Rules) == 0 {
				c.Errorf("%s: %s base chain %s is empty", when, family, ch.Name)
			}
		}
	}
	tables, err := env.Node.Run(c.ctx, "nft", "list", "tables")
	if err != nil {
		c.Fatal(err)
	}
	if n := strings.Count(tables, "svcproxy"); n != 2 {
		c.Errorf("%s: want one svcproxy table per family, got:\n%s", when, tables)
	}
	c.Logf("RESULT %s: nftables base chains (ip and ip6) %v, no duplicate rules", when, kubeProxyNFTHooks)
}

// builtinJumps returns, per built-in chain of an iptables-save dump of one
// table, the rules that jump to a KUBE- chain, in order.
func builtinJumps(dump string) map[string][]string {
	builtin := map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}
	out := map[string][]string{}
	for _, line := range strings.Split(dump, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" || !builtin[f[1]] {
			continue
		}
		if j := jumpOf(line); strings.HasPrefix(j, "KUBE-") {
			out[f[1]] = append(out[f[1]], line)
		}
	}
	return out
}

// jumpRe matches the target of a saved rule's -j or -g.
var jumpRe = regexp.MustCompile(`\s-[jg] (\S+)`)

// jumpOf is the -j (or -g) target of a saved rule.
func jumpOf(rule string) string {
	if m := jumpRe.FindStringSubmatch(rule); m != nil {
		return m[1]
	}
	return ""
}

// nftBaseChain is one base chain of `nft -j list table`.
type nftBaseChain struct {
	Name, Type, Hook string
	Prio             int
	Rules            []string // each rule's expressions as JSON
}

// nftBaseChains lists the base chains of table (family ip or ip6) in the
// node namespace, with their rules.
func (c *tc) nftBaseChains(family, table string) map[string]*nftBaseChain {
	c.Helper()
	out, err := env.Node.Run(c.ctx, "nft", "-j", "list", "table", family, table)
	if err != nil {
		c.Fatalf("nft -j list table %s %s: %v", family, table, err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		c.Fatalf("nft -j output: %v", err)
	}
	chains := map[string]*nftBaseChain{}
	var rules []struct {
		Chain string          `json:"chain"`
		Expr  json.RawMessage `json:"expr"`
	}
	for _, obj := range doc.Nftables {
		if raw, ok := obj["chain"]; ok {
			var ch struct {
				Name, Type, Hook string
				Prio             *int `json:"prio"`
			}
			if err := json.Unmarshal(raw, &ch); err != nil {
				c.Fatalf("nft chain %s: %v", raw, err)
			}
			if ch.Hook != "" && ch.Prio != nil {
				chains[ch.Name] = &nftBaseChain{Name: ch.Name, Type: ch.Type, Hook: ch.Hook, Prio: *ch.Prio}
			}
		}
		if raw, ok := obj["rule"]; ok {
			var r struct {
				Chain string          `json:"chain"`
				Expr  json.RawMessage `json:"expr"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				c.Fatalf("nft rule %s: %v", raw, err)
			}
			rules = append(rules, r)
		}
	}
	for _, r := range rules {
		if ch := chains[r.Chain]; ch != nil {
			ch.Rules = append(ch.Rules, string(r.Expr))
		}
	}
	return chains
}

// hookSignature renders base chains as sorted "type/hook/priority" strings.
func hookSignature(chains map[string]*nftBaseChain) []string {
	var out []string
	for _, ch := range chains {
		out = append(out, fmt.Sprintf("%s/%s/%d", ch.Type, ch.Hook, ch.Prio))
	}
	sort.Strings(out)
	return out
}
