package nftables_test

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// flowPacket is f's packet as the interpreter takes it.
func flowPacket(f pt.Flow) nftPacket {
	p := f.Packet
	return nftPacket{src: p.Source, dst: p.Dest.Addr(), dport: p.Dest.Port(), proto: protoNumbers[p.Protocol.Lower()],
		iif: pt.InputInterface(f.Config.LocalDetector, p.Kind), fromNode: p.Kind == proxier.FromNode}
}

// renderFlow is what DryRun gives for f's State and Config.
func renderFlow(f pt.Flow) string {
	return nftables.DryRun(f.Config, f.State)
}

// flowWalker parses ruleset, the nft text of f's State and Config, and
// walks packets on f's node: its node IPs and loopback are local.
func flowWalker(f pt.Flow, ruleset string) (*walker, error) {
	rs, err := parseNFT(ruleset)
	if err != nil {
		return nil, err
	}
	return &walker{rs: rs, local: func(a netip.Addr) bool { return a.IsLoopback() || slices.Contains(f.Config.NodeIPs, a) }}, nil
}

// observeFlow walks f's packet through ruleset.
func observeFlow(f pt.Flow, ruleset string) (pt.Observed, error) {
	w, err := flowWalker(f, ruleset)
	if err != nil {
		return pt.Observed{}, err
	}
	return w.observe(flowPacket(f))
}

// observe sums up the ways pkt goes as a verdict: DNAT when every way ends
// at an endpoint, DROP or REJECT when every way is refused, NOT-OURS when
// no rule touched the packet. Affinity holds when every way records an
// entry that a second connection of the client follows to the same
// endpoint.
func (w *walker) observe(pkt nftPacket) (pt.Observed, error) {
	results, err := w.walk(pkt)
	if err != nil {
		return pt.Observed{}, err
	}
	var o pt.Observed
	kinds := map[proxier.Outcome]bool{}
	affinity := true
	for _, r := range results {
		switch {
		case r.verdict == "drop":
			kinds[proxier.OutcomeDrop] = true
		case r.verdict == "reject":
			kinds[proxier.OutcomeReject] = true
		case r.verdict != "":
			return o, fmt.Errorf("a way ends in %q", r.verdict)
		case r.dnat.IsValid():
			kinds[proxier.OutcomeDNAT] = true
			o.Endpoints = append(o.Endpoints, pt.ObservedEndpoint{Endpoint: r.dnat, Probability: r.prob, Masquerade: r.masq})
			follows, err := w.follows(pkt, r)
			if err != nil {
				return o, err
			}
			affinity = affinity && follows
		case r.masq:
			return o, fmt.Errorf("a way is masqueraded without DNAT")
		default:
			kinds[proxier.OutcomeNotOurs] = true
		}
	}
	if len(kinds) != 1 {
		return o, fmt.Errorf("the ways through the ruleset disagree: %v", kinds)
	}
	for k := range kinds {
		o.Verdict = k
	}
	o.Affinity = len(o.Endpoints) > 0 && affinity
	return o, nil
}

// follows reports whether a second connection of pkt's client, with the
// dynamic entries r's way recorded, surely goes to r's endpoint.
func (w *walker) follows(pkt nftPacket, r nftResult) (bool, error) {
	if len(r.updates) == 0 {
		return false, nil
	}
	res, err := w.seeded(r).walk(pkt)
	return surelyTo(res, r.dnat), err
}

// seeded is w with the dynamic entries r's way recorded.
func (w *walker) seeded(r nftResult) *walker {
	again := &walker{rs: w.rs, local: w.local, seed: map[*nftSet][]nftElem{}}
	for _, u := range r.updates {
		again.seed[u.set] = append(again.seed[u.set], u.elem)
	}
	return again
}

// surelyTo reports whether the one way of res is DNAT to ap.
func surelyTo(res []nftResult, ap netip.AddrPort) bool {
	return len(res) == 1 && res[0].verdict == "" && res[0].dnat == ap && math.Abs(res[0].prob-1) < 1e-9
}

// affinityShared lists how a client that f's packet pins to an endpoint
// fails to be treated as the plan says at the other destinations sharing
// its entry: where the endpoint may serve the client, its next connection
// goes there; where it may not (a Local policy, a remote endpoint), the
// entry is not followed.
func affinityShared(f pt.Flow, ruleset string) ([]string, error) {
	plan := proxier.MakePlan(f.Config, f.State)
	tr := plan.Trace(f.Packet)
	w, err := flowWalker(f, ruleset)
	if err != nil || tr.Affinity == nil {
		return nil, err
	}
	pkt := flowPacket(f)
	results, err := w.walk(pkt)
	if err != nil {
		return nil, err
	}
	var errs []string
	for _, r := range results {
		if !r.dnat.IsValid() {
			continue
		}
		for _, d := range tr.Affinity.Destinations {
			again, next := pkt, f.Packet
			again.dst, again.dport, next.Dest = d.Addr(), d.Port(), d
			var allowed []netip.AddrPort
			for _, c := range plan.Trace(next).Endpoints {
				allowed = append(allowed, c.Endpoint)
			}
			res, err := w.seeded(r).walk(again)
			if err != nil {
				return nil, err
			}
			switch {
			case slices.Contains(allowed, r.dnat) && !surelyTo(res, r.dnat):
				errs = append(errs, fmt.Sprintf("a client sent to %s is not sent there again through %s", r.dnat, d))
			case !slices.Contains(allowed, r.dnat) && slices.ContainsFunc(res, func(x nftResult) bool { return !slices.Contains(allowed, x.dnat) }):
				errs = append(errs, fmt.Sprintf("a client sent to %s is sent outside %v through %s", r.dnat, allowed, d))
			}
		}
	}
	return errs, nil
}

// flowErrors lists how ruleset disagrees with f: its verdict, endpoints,
// masquerading and affinity, and where affinity is shared.
func flowErrors(f pt.Flow, ruleset string) ([]string, error) {
	o, err := observeFlow(f, ruleset)
	if err != nil {
		return nil, err
	}
	errs := f.Want.Check(o)
	if f.Want.Affinity {
		shared, err := affinityShared(f, ruleset)
		if err != nil {
			return nil, err
		}
		errs = append(errs, shared...)
	}
	return errs, nil
}

// TestNFTablesFlows holds the nftables ruleset to the packet-flow table.
func TestNFTablesFlows(t *testing.T) {
	for _, f := range pt.Flows(proxier.NFTablesMode) {
		t.Run(f.Name, func(t *testing.T) {
			ruleset := renderFlow(f)
			errs, err := flowErrors(f, ruleset)
			if err != nil {
				t.Fatalf("%v\nruleset:\n%s", err, ruleset)
			}
			if len(errs) > 0 {
				t.Errorf("%s\nruleset:\n%s", strings.Join(errs, "\n"), ruleset)
			}
		})
	}
}

// TestNFTablesFlowsCatch shows that the flow check fails when the ruleset
// is wrong: each mutation of the rendered text makes a flow disagree.
func TestNFTablesFlowsCatch(t *testing.T) {
	flows := pt.Flows(proxier.NFTablesMode)
	for _, tc := range []struct {
		flow, old, new string
	}{
		{"main/hairpin", "add rule ip svcproxy masquerading ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random\n", ""},
		{"main/local pod to ClusterIP", "cluster-ip ip saddr != 10.244.0.0/16", "cluster-ip ip saddr 10.244.0.0/16"},
		{"main/local pod to ClusterIP", "numgen random mod 2 map @endpoints-ip-tcp", "numgen random mod 1 map @endpoints-ip-tcp"},
		{"main/outside the source range to LB IP", "!= @firewall-allow drop", "!= @firewall-allow accept"},
		{"main/affinity", "update @affinity-tcp-10800 { ip saddr . 10.96.0.18 . 80 .", "update @affinity-tcp-10800 { ip saddr . 10.96.0.18 . 81 ."},
		{"main/affinity", " update @affinity-tcp-10800 { ip saddr . 192.168.0.2 . 30018 . ip daddr . th dport }", ""},
		{"main/affinity", "| 8080 @affinity-tcp-10800 dnat ip to 10.244.2.18:8080", "| 8080 @affinity-tcp-10800 dnat ip to 10.244.1.18:8080"},
		{"main/affinity", "pick-ip ip daddr . meta l4proto . th dport vmap @affinity-dests-pick\n", ""},
		{"plan/affinity to a Local service through its ClusterIP", "5.6.7.30 . tcp . 80 : jump affinity-pick-local-", "5.6.7.30 . tcp . 80 : jump affinity-pick-"},
		{"main/node short-circuits, masqueraded", "nodeport-local fib saddr type local jump mark-for-masquerade", "nodeport-local fib saddr type local counter"},
		{"main/unknown port of a ClusterIP", "cluster-ips-check ip daddr @cluster-ips reject", "cluster-ips-check ip daddr @cluster-ips drop"},
		{"main/outside, no local endpoint, NodePort", "tcp . 30013 : drop", "tcp . 30013 : accept"},
		{"main/outside to NodePort", "mark and 0x00004000 == 0 return", "mark and 0x00004000 != 0 return"},
		{"two-cluster-cidrs/local pod of the second cluster CIDR to ClusterIP", "!= { 10.244.0.0/16, 10.245.0.0/16 }", "!= { 10.244.0.0/16 }"},
		{"two-cluster-cidrs/local pod of the second cluster CIDR short-circuits", "ip saddr { 10.244.0.0/16, 10.245.0.0/16 } goto pick-np", "ip saddr { 10.244.0.0/16 } goto pick-np"},
		{"plan/remote endpoint to its own ClusterIP (hairpin)", ", 10.244.2.2 . 10.244.2.2", ""},
		{"interface-prefix/remote pod to ClusterIP", `cluster-ip iifname != "veth*"`, `cluster-ip iifname != "eth*"`},
	} {
		t.Run(tc.flow, func(t *testing.T) {
			i := slices.IndexFunc(flows, func(f pt.Flow) bool { return f.Name == tc.flow })
			if i < 0 {
				t.Fatalf("no flow %q", tc.flow)
			}
			text := renderFlow(flows[i])
			if !strings.Contains(text, tc.old) {
				t.Fatalf("the ruleset has no %q", tc.old)
			}
			errs, err := flowErrors(flows[i], strings.Replace(text, tc.old, tc.new, 1))
			if err == nil && len(errs) == 0 {
				t.Errorf("replacing %q with %q went unnoticed", tc.old, tc.new)
			}
		})
	}
}
