package nftables

import (
	"fmt"
	"strings"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
)

func ptr[T any](v T) *T { return &v }

func baseChain(name string, t knftables.BaseChainType, h knftables.BaseChainHook, prio knftables.BaseChainPriority) *knftables.Chain {
	return &knftables.Chain{Name: name, Type: ptr(t), Hook: ptr(h), Priority: ptr(prio)}
}

// skeleton is the fixed part of the table for a config: chains with their
// static rules, and every set and map (without elements).
type skeleton struct {
	chains []*knftables.Chain
	rules  map[string][]string // chain → rules
	sets   []*knftables.Set
	maps   []*knftables.Map
	elems  []elem // fixed elements: the NodePort addresses
}

// setDef is a set or map of the skeleton: its name and definition.
type setDef struct {
	name string
	obj  knftables.Object
}

// setDefs lists the skeleton's sets, then its maps, in their order.
func (sk *skeleton) setDefs() []setDef {
	out := make([]setDef, 0, len(sk.sets)+len(sk.maps))
	for _, s := range sk.sets {
		out = append(out, setDef{s.Name, s})
	}
	for _, m := range sk.maps {
		out = append(out, setDef{m.Name, m})
	}
	return out
}

// static returns the definition of the non-dynamic set or map name, or
// nil.
func (sk *skeleton) static(name string) knftables.Object {
	for _, s := range sk.setDefs() {
		if s.name == name && !mustSpec(name).dynamic {
			return s.obj
		}
	}
	return nil
}

// newSkeleton is the skeleton of the node-wide plan p (its Services are
// not read) with the affinity sets of affinity.
func newSkeleton(p *proxier.Plan, affinity []affinityKey) *skeleton {
	cfg := p.Config
	f := famOf(cfg.Family)
	mark := cfg.MasqueradeMark()
	sk := &skeleton{rules: map[string][]string{}}
	add := func(c *knftables.Chain, rules ...string) {
		sk.chains = append(sk.chains, c)
		sk.rules[c.Name] = rules
	}
	// Numeric priorities: nft before 1.0.7 rejects the names "dstnat" and
	// "srcnat" in the output hook. dstnat is -100, srcnat 100, filter 0.
	dnatPrio := knftables.BaseChainPriority("-100")
	preDNAT := knftables.BaseChainPriority("-110")
	snatPrio := knftables.BaseChainPriority("100")

	recordJump := []string{}
	if len(affinity) > 0 {
		recordJump = []string{"ct state new ct status dnat jump " + chAffinityRecord}
	}
	add(baseChain(chFilterPreroutingPreDNAT, knftables.FilterType, knftables.PreroutingHook, preDNAT), "ct state new jump "+chFirewallCheck)
	add(baseChain(chFilterOutputPreDNAT, knftables.FilterType, knftables.OutputHook, preDNAT), "ct state new jump "+chFirewallCheck)
	// Affinity is recorded wherever a DNATed connection's first packet
	// ends up: forwarded to a pod, or delivered to this host (an endpoint on
	// the host network).
	add(baseChain(chFilterInput, knftables.FilterType, knftables.InputHook, knftables.FilterPriority),
		append([]string{"ct state new jump " + chNodePortEPCheck, "ct state new jump " + chServiceEPCheck}, recordJump...)...)
	add(baseChain(chFilterForward, knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority),
		append([]string{"ct state new jump " + chServiceEPCheck, "ct state new jump " + chClusterIPsCheck}, recordJump...)...)
	add(baseChain(chFilterOutput, knftables.FilterType, knftables.OutputHook, knftables.FilterPriority),
		append([]string{"ct state new jump " + chServiceEPCheck, "ct state new jump " + chClusterIPsCheck}, recordJump...)...)
	add(baseChain(chNATPrerouting, knftables.NATType, knftables.PreroutingHook, dnatPrio), "jump "+chServices)
	add(baseChain(chNATOutput, knftables.NATType, knftables.OutputHook, dnatPrio), "jump "+chServices)
	add(baseChain(chNATPostrouting, knftables.NATType, knftables.PostroutingHook, snatPrio), "jump "+chMasquerading)

	key := f.ip + " daddr . meta l4proto . th dport"
	add(&knftables.Chain{Name: chFirewallCheck},
		fmt.Sprintf("%s @%s %s . %s saddr != @%s drop", key, sFirewallDests, key, f.ip, sFirewallAllow))
	add(&knftables.Chain{Name: chServiceEPCheck}, key+" vmap @"+mNoEndpointServices)
	add(&knftables.Chain{Name: chNodePortEPCheck}, nodePortMatch(f, p.NodePorts)+" meta l4proto . th dport vmap @"+mNoEndpointNodePort)
	// A known ClusterIP on an unknown port is rejected; any other address in
	// a service CIDR is unallocated and dropped. The CIDRs are elements of
	// an interval set, so a ServiceCIDR change is an element change, not a
	// new rule (see serviceCIDRElems).
	add(&knftables.Chain{Name: chClusterIPsCheck},
		fmt.Sprintf("%s daddr @%s reject", f.ip, sClusterIPs),
		fmt.Sprintf("%s daddr @%s drop", f.ip, sServiceCIDRs))
	add(&knftables.Chain{Name: chReject}, "reject")
	add(&knftables.Chain{Name: chServices},
		key+" vmap @"+mServiceIPs,
		nodePortMatch(f, p.NodePorts)+" meta l4proto . th dport vmap @"+mServiceNodePorts)
	add(&knftables.Chain{Name: chMarkMasq}, "mark set mark or "+mark)
	add(&knftables.Chain{Name: chMasquerading},
		fmt.Sprintf("ct status dnat %s saddr . %s daddr @%s masquerade fully-random", f.ip, f.ip, sHairpin),
		fmt.Sprintf("mark and %s == 0 return", mark),
		"mark set mark xor "+mark,
		"masquerade fully-random")

	// Policy chains, from the plan's decisions.
	plans := policyPlans(cfg)
	for _, pc := range policyChains {
		sp := plans[pc.policy]
		add(&knftables.Chain{Name: pc.name}, pc.rules(f, &sp)...)
	}

	// Pick chains: affinity first (a client with an entry is DNATed to its
	// endpoint in the Service port's pick chain), then the endpoint count.
	for _, p := range pools {
		var rules []string
		if len(affinity) > 0 {
			m := mAffinityPick
			if p.local() {
				m = mAffinityPickLocal
			}
			rules = append(rules, key+" vmap @"+m)
		}
		rules = append(rules, p.keyExpr(f)+" vmap @"+p.countMap())
		add(&knftables.Chain{Name: p.pickChain()}, rules...)
	}
	if len(affinity) > 0 {
		var rules []string
		for _, a := range affinity {
			rules = append(rules, fmt.Sprintf("meta l4proto %s ct original %s daddr . ct original proto-dst vmap @%s",
				a.proto.Lower(), f.ip, affinityDests(a.proto, a.timeout)))
		}
		add(&knftables.Chain{Name: chAffinityRecord}, rules...)
	}

	// Sets and maps.
	svcKey := f.addr + " . inet_proto . inet_service"
	verdictMap := func(name, typ string) {
		sk.maps = append(sk.maps, &knftables.Map{Name: name, Type: typ + " : verdict"})
	}
	verdictMap(mServiceIPs, svcKey)
	verdictMap(mServiceNodePorts, "inet_proto . inet_service")
	verdictMap(mNoEndpointServices, svcKey)
	verdictMap(mNoEndpointNodePort, "inet_proto . inet_service")
	for _, p := range pools {
		if p.byPort {
			verdictMap(p.countMap(), "inet_proto . inet_service")
		} else {
			verdictMap(p.countMap(), svcKey)
		}
		// Typed with the protocol's own "dport", never "th dport": nft
		// 1.0.6 cannot read a "th dport" value back from the kernel (a later
		// rule using the map fails with "conflicting protocols").
		for _, proto := range protocols {
			sk.maps = append(sk.maps, &knftables.Map{Name: p.endpointsMap(proto),
				TypeOf: p.endpointsKeyExpr(f, proto) + " . numgen random mod 1 : " + f.ip + " daddr . " + proto + " dport"})
		}
	}
	if !p.NodePorts.AllLocal {
		for _, ip := range p.NodePorts.IPs {
			sk.elems = append(sk.elems, elem{set: sNodePortIPs, key: tupleOf(addrAtom(ip))})
		}
	}
	sk.sets = append(sk.sets,
		&knftables.Set{Name: sClusterIPs, Type: f.addr},
		&knftables.Set{Name: sServiceCIDRs, Type: f.addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}},
		&knftables.Set{Name: sNodePortIPs, Type: f.addr},
		&knftables.Set{Name: sFirewallDests, Type: svcKey},
		&knftables.Set{Name: sFirewallAllow, Type: svcKey + " . " + f.addr, Flags: []knftables.SetFlag{knftables.IntervalFlag}},
		&knftables.Set{Name: sHairpin, Type: f.addr + " . " + f.addr},
	)
	if len(affinity) > 0 {
		verdictMap(mAffinityPick, svcKey)
		verdictMap(mAffinityPickLocal, svcKey)
	}
	for _, a := range affinity {
		sk.maps = append(sk.maps, &knftables.Map{Name: affinityDests(a.proto, a.timeout), TypeOf: f.ip + " daddr . th dport : verdict"})
		sk.sets = append(sk.sets, &knftables.Set{Name: affinitySet(a.proto, a.timeout),
			Type:    f.addr + " . " + f.addr + " . inet_service . " + f.addr + " . inet_service",
			Flags:   []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag},
			Timeout: ptr(secondsDuration(a.timeout))})
	}
	return sk
}

// key is a fingerprint of the skeleton: a change means a full rewrite.
func (sk *skeleton) key() string {
	var b strings.Builder
	for _, c := range sk.chains {
		fmt.Fprintf(&b, "%s|%v|%v|%v\n", c.Name, deref(c.Type), deref(c.Hook), deref(c.Priority))
		for _, r := range sk.rules[c.Name] {
			b.WriteString(r + "\n")
		}
	}
	for _, s := range sk.sets {
		fmt.Fprintf(&b, "set %s %s %s %v %v %v\n", s.Name, s.Type, s.TypeOf, s.Flags, deref(s.Timeout), deref(s.Size))
	}
	for _, m := range sk.maps {
		fmt.Fprintf(&b, "map %s %s %s %v %v %v\n", m.Name, m.Type, m.TypeOf, m.Flags, deref(m.Timeout), deref(m.Size))
	}
	for _, e := range sk.elems {
		fmt.Fprintf(&b, "element %s %s\n", e.set, e.keyText(mustSpec(e.set)))
	}
	return b.String()
}

func deref[T any](v *T) any {
	if v == nil {
		return nil
	}
	return *v
}
