// Package iptables is svcproxy's iptables backend: it renders a proxier.Plan
// into iptables-restore input (pure, deterministic) and applies it to the
// kernel in one iptables-restore transaction per sync.
package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Table names.
const (
	Filter = "filter"
	NAT    = "nat"
)

// Chains svcproxy owns outright (flushed and rewritten on every full sync).
const (
	chainServices         = "KUBE-SERVICES"
	chainExternalServices = "KUBE-EXTERNAL-SERVICES"
	chainForward          = "KUBE-FORWARD"
	chainNodePorts        = "KUBE-NODEPORTS"
	chainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	chainPostrouting      = "KUBE-POSTROUTING"
	chainMarkMasq         = "KUBE-MARK-MASQ"
	chainFirewall         = "KUBE-FIREWALL"
)

// Prefixes of per-service chains. Names are kube-proxy's, so a node migrating
// from kube-proxy converges on the same chains instead of doubling them.
const (
	prefixSVC = "KUBE-SVC-"
	prefixSVL = "KUBE-SVL-"
	prefixEXT = "KUBE-EXT-"
	prefixFW  = "KUBE-FW-"
	prefixSEP = "KUBE-SEP-"
)

// IsServiceChain reports whether name is a per-service chain svcproxy (or
// kube-proxy) creates and may delete when stale.
func IsServiceChain(name string) bool {
	for _, p := range []string{prefixSVC, prefixSVL, prefixEXT, prefixFW, prefixSEP} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Chain is one chain's full contents: rules are the text after "-A <name> ".
type Chain struct {
	Name  string
	Rules []string
}

// Jump is a rule svcproxy needs in a built-in chain. Jumps are inserted once
// at the top and never duplicated; Comment identifies them.
type Jump struct {
	Table   string
	From    string // built-in chain
	To      string // our chain
	Match   string // extra match, e.g. "-m conntrack --ctstate NEW"
	Comment string
}

// Spec is the rule text of j after "-A <From> ".
func (j Jump) Spec() string {
	var b strings.Builder
	if j.Match != "" {
		b.WriteString(j.Match)
		b.WriteByte(' ')
	}
	if j.Comment != "" {
		fmt.Fprintf(&b, "-m comment --comment %q ", j.Comment)
	}
	b.WriteString("-j ")
	b.WriteString(j.To)
	return b.String()
}

const ctNew = "-m conntrack --ctstate NEW"

// Jumps lists the jump rules from built-in chains, in kube-proxy's order:
// each is inserted at position 1, so the last one listed ends up first.
var Jumps = []Jump{
	{Filter, "INPUT", chainExternalServices, ctNew, "kubernetes externally-visible service portals"},
	{Filter, "FORWARD", chainExternalServices, ctNew, "kubernetes externally-visible service portals"},
	{Filter, "INPUT", chainNodePorts, "", "kubernetes health check service ports"},
	{Filter, "FORWARD", chainServices, ctNew, "kubernetes service portals"},
	{Filter, "OUTPUT", chainServices, ctNew, "kubernetes service portals"},
	{Filter, "FORWARD", chainForward, "", "kubernetes forwarding rules"},
	{Filter, "INPUT", chainProxyFirewall, ctNew, "kubernetes load balancer firewall"},
	{Filter, "OUTPUT", chainProxyFirewall, ctNew, "kubernetes load balancer firewall"},
	{Filter, "FORWARD", chainProxyFirewall, ctNew, "kubernetes load balancer firewall"},
	{NAT, "OUTPUT", chainServices, "", "kubernetes service portals"},
	{NAT, "PREROUTING", chainServices, "", "kubernetes service portals"},
	{NAT, "POSTROUTING", chainPostrouting, "", "kubernetes postrouting rules"},
}

// Ruleset is the desired content of every chain svcproxy owns, per table,
// in a fixed order: top-level chains first, then per-service chains sorted
// by name.
type Ruleset struct {
	Filter []*Chain
	NAT    []*Chain
}

// Tables returns the tables in the order they are written.
func (r *Ruleset) Tables() []struct {
	Name   string
	Chains []*Chain
} {
	return []struct {
		Name   string
		Chains []*Chain
	}{{Filter, r.Filter}, {NAT, r.NAT}}
}

// Options are rendering choices that come from the host, not the plan.
type Options struct {
	// RandomFully adds --random-fully to MASQUERADE (iptables ≥ 1.6.2).
	RandomFully bool
	// DropInvalid drops conntrack-INVALID forwarded packets, unless the
	// kernel is liberal about TCP windows (nf_conntrack_tcp_be_liberal).
	DropInvalid bool
	// NFAcct are the nfacct objects (of NFAccts) the kernel holds and can
	// match: the INVALID drop and the localhost NodePort rules count their
	// packets in them, as kube-proxy's do (see nfacct.go).
	NFAcct []string
}

// Render turns a plan into the desired ruleset. It is pure and
// deterministic.
func Render(p *proxier.Plan, opt Options) *Ruleset {
	r := &renderer{plan: p, opt: opt, mark: p.Config.MasqueradeMark()}
	return r.render()
}

type renderer struct {
	plan *proxier.Plan
	opt  Options
	mark string

	filterServices, filterExternal, filterForward, filterNodePorts, filterFirewall *Chain
	natServices, natNodePorts, natPostrouting, natMarkMasq                         *Chain
	natService                                                                     []*Chain
}

func (r *renderer) render() *Ruleset {
	r.filterServices = &Chain{Name: chainServices}
	r.filterExternal = &Chain{Name: chainExternalServices}
	r.filterForward = &Chain{Name: chainForward}
	r.filterNodePorts = &Chain{Name: chainNodePorts}
	r.filterFirewall = &Chain{Name: chainProxyFirewall}
	r.natServices = &Chain{Name: chainServices}
	r.natNodePorts = &Chain{Name: chainNodePorts}
	r.natPostrouting = &Chain{Name: chainPostrouting}
	r.natMarkMasq = &Chain{Name: chainMarkMasq}

	r.writeMasqueradeMachinery()
	r.writeForward()
	for i := range r.plan.Services {
		r.writeService(&r.plan.Services[i])
	}
	r.writeNodePortDispatch()

	slices.SortFunc(r.natService, func(a, b *Chain) int { return strings.Compare(a.Name, b.Name) })
	r.natService = slices.CompactFunc(r.natService, func(a, b *Chain) bool { return a.Name == b.Name })
	filter := []*Chain{r.filterServices, r.filterExternal, r.filterForward, r.filterNodePorts, r.filterFirewall}
	if fw := r.localnetFirewall(); fw != nil {
		filter = append(filter, fw)
	}
	return &Ruleset{
		Filter: filter,
		NAT:    append([]*Chain{r.natServices, r.natNodePorts, r.natPostrouting, r.natMarkMasq}, r.natService...),
	}
}

func (r *renderer) writeMasqueradeMachinery() {
	r.natMarkMasq.add("-j MARK --or-mark " + r.mark)
	r.natPostrouting.add(fmt.Sprintf("-m mark ! --mark %s/%s -j RETURN", r.mark, r.mark))
	// Clear the mark so a packet that traverses again is not masqueraded twice.
	r.natPostrouting.add("-j MARK --xor-mark " + r.mark)
	masq := `-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE`
	if r.opt.RandomFully {
		masq += " --random-fully"
	}
	r.natPostrouting.add(masq)
}

func (r *renderer) writeForward() {
	if r.opt.DropInvalid {
		r.filterForward.add("-m conntrack --ctstate INVALID " + r.opt.nfacctMatch(NFAcctInvalidDropped) + "-j DROP")
	}
	r.filterForward.add(fmt.Sprintf(`-m comment --comment "kubernetes forwarding rules" -m mark --mark %s/%s -j ACCEPT`, r.mark, r.mark))
	r.filterForward.add(`-m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
}

// writeNodePortDispatch writes the last rule(s) of nat KUBE-SERVICES: traffic
// to a NodePort address goes on to KUBE-NODEPORTS.
func (r *renderer) writeNodePortDispatch() {
	np := r.plan.NodePorts
	const comment = `-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"`
	if np.AllLocal {
		rule := comment + " -m addrtype --dst-type LOCAL"
		if !np.Localhost {
			rule += " ! -d " + np.Loopback.String()
		}
		r.natServices.add(rule + " -j " + chainNodePorts)
		return
	}
	for _, ip := range np.IPs {
		r.natServices.add(fmt.Sprintf("%s -d %s -j %s", comment, ip, chainNodePorts))
	}
}

// LocalhostNodePorts reports whether NodePorts answer on 127.0.0.0/8 (and so
// whether route_localnet and the KUBE-FIREWALL guard are needed).
func LocalhostNodePorts(cfg proxier.Config) bool {
	return proxier.NodePortsOf(cfg).Localhost
}

// localnetFirewall is filter KUBE-FIREWALL when localhost NodePorts are on:
// with route_localnet set, packets from elsewhere addressed to 127.0.0.0/8
// must not be accepted (CVE-2020-8558).
func (r *renderer) localnetFirewall() *Chain {
	if !r.plan.NodePorts.Localhost {
		return nil
	}
	c := &Chain{Name: chainFirewall}
	c.add(`-m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`)
	return c
}

// JumpsFor lists the jump rules cfg needs.
func JumpsFor(cfg proxier.Config) []Jump {
	if !LocalhostNodePorts(cfg) {
		return Jumps
	}
	return append(slices.Clone(Jumps),
		Jump{Table: Filter, From: "INPUT", To: chainFirewall},
		Jump{Table: Filter, From: "OUTPUT", To: chainFirewall})
}

// match renders a local-traffic match: source CIDRs joined into one -s, or
// the input interface (a prefix ends in "+").
func match(l proxier.LocalTraffic) string {
	neg := ""
	if l.Negate {
		neg = "! "
	}
	switch l.Mode {
	case proxier.LocalClusterCIDR, proxier.LocalNodeCIDR:
		cidrs := make([]string, len(l.CIDRs))
		for i, c := range l.CIDRs {
			cidrs[i] = c.String()
		}
		return neg + "-s " + strings.Join(cidrs, ",")
	case proxier.LocalBridgeInterface:
		return neg + "-i " + l.Interface
	case proxier.LocalInterfacePrefix:
		return neg + "-i " + l.Interface + "+"
	}
	return ""
}

func (c *Chain) add(rule string) { c.Rules = append(c.Rules, rule) }

// probability formats 1/n as kube-proxy does: ten decimal places.
func probability(n int) string {
	return strconv.FormatFloat(1.0/float64(n), 'f', 10, 64)
}

func hashName(prefix string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "")))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}

// ServiceChainName is the KUBE-SVC chain of a service port.
func ServiceChainName(s *proxier.Service) string {
	return hashName(prefixSVC, s.Name.String(), s.Protocol.Lower())
}

// LocalChainName is the KUBE-SVL chain (local endpoints only) of a service port.
func LocalChainName(s *proxier.Service) string {
	return hashName(prefixSVL, s.Name.String(), s.Protocol.Lower())
}

// EndpointChainName is the KUBE-SEP chain of one endpoint of a service port.
func EndpointChainName(s *proxier.Service, ep proxier.Endpoint) string {
	return hashName(prefixSEP, s.Name.String(), s.Protocol.Lower(), ep.String())
}

// Extra is what a transaction carries besides the chains it rewrites: more
// chains to declare (flush) first, and lines after the rules (jump inserts
// and deletions, stale chain deletions).
type Extra struct {
	Flush []string
	Tail  []string
}

// Bytes is the iptables-restore input for the ruleset: every chain declared
// (which flushes it under --noflush) and filled, plus extra per table.
func (r *Ruleset) Bytes(extra map[string]Extra) []byte {
	var b strings.Builder
	for _, t := range r.Tables() {
		writeTable(&b, t.Name, t.Chains, extra[t.Name])
	}
	return []byte(b.String())
}

func writeTable(b *strings.Builder, table string, chains []*Chain, extra Extra) {
	b.WriteString("*" + table + "\n")
	for _, c := range chains {
		b.WriteString(":" + c.Name + " - [0:0]\n")
	}
	for _, name := range extra.Flush {
		b.WriteString(":" + name + " - [0:0]\n")
	}
	for _, c := range chains {
		for _, rule := range c.Rules {
			b.WriteString("-A " + c.Name + " " + rule + "\n")
		}
	}
	for _, l := range extra.Tail {
		b.WriteString(l + "\n")
	}
	b.WriteString("COMMIT\n")
}

// JumpInserts returns the lines that insert every jump rule, per table, as a
// first sync on a clean node does.
func JumpInserts(jumps []Jump) map[string]Extra {
	out := map[string]Extra{}
	for _, j := range jumps {
		e := out[j.Table]
		e.Tail = append(e.Tail, fmt.Sprintf("-I %s 1 %s", j.From, j.Spec()))
		out[j.Table] = e
	}
	return out
}
