package iptables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// observeFlow renders f's State and walks its packet through the rules.
func observeFlow(f pt.Flow) (pt.Observed, error) {
	rs, err := parseRestore(string(DryRun(f.Config, Options{RandomFully: true, DropInvalid: true}, f.State)))
	if err != nil {
		return pt.Observed{}, err
	}
	pkt := f.Packet
	local := func(a netip.Addr) bool {
		return a.IsLoopback() || slices.Contains(f.Config.NodeIPs, a)
	}
	results, err := rs.walk(walkPacket{
		src: pkt.Source, dst: pkt.Dest.Addr(), dport: pkt.Dest.Port(), proto: pkt.Protocol.Lower(),
		iface: pt.InputInterface(f.Config.LocalDetector, pkt.Kind), local: local,
	}, pkt.Kind == proxier.FromNode)
	if err != nil {
		return pt.Observed{}, err
	}
	return observed(results)
}

// observed sums the walk's results up as a verdict: DNAT when every way
// ends at an endpoint, DROP or REJECT when every way is refused, NOT-OURS
// when no rule touched the packet.
func observed(results []flowResult) (pt.Observed, error) {
	var o pt.Observed
	var kinds []string
	for _, r := range results {
		switch {
		case r.dnat.IsValid() && (r.filter == "" || r.filter == "ACCEPT"):
			kinds = append(kinds, string(proxier.OutcomeDNAT))
			o.Endpoints = append(o.Endpoints, pt.ObservedEndpoint{Endpoint: r.dnat, Probability: r.prob, Masquerade: r.masquerade})
		case r.filter == "DROP":
			kinds = append(kinds, string(proxier.OutcomeDrop))
		case r.filter == "REJECT":
			kinds = append(kinds, string(proxier.OutcomeReject))
		case r.filter == "" && !r.masquerade:
			kinds = append(kinds, string(proxier.OutcomeNotOurs))
		default:
			return o, fmt.Errorf("a way through the rules ends in %+v", r)
		}
	}
	slices.Sort(kinds)
	if kinds = slices.Compact(kinds); len(kinds) != 1 {
		return o, fmt.Errorf("the ways through the rules disagree: %v", kinds)
	}
	o.Verdict = proxier.Outcome(kinds[0])
	o.Affinity = len(o.Endpoints) > 0 && !slices.ContainsFunc(results, func(r flowResult) bool { return !r.affinity })
	if o.Verdict != proxier.OutcomeDNAT {
		o.Endpoints = nil
	}
	return o, nil
}

// TestIPTablesFlows holds the iptables rules to the packet-flow table.
func TestIPTablesFlows(t *testing.T) {
	for _, f := range pt.Flows(proxier.IPTablesMode) {
		t.Run(f.Name, func(t *testing.T) {
			o, err := observeFlow(f)
			if err != nil {
				t.Fatal(err)
			}
			if errs := f.Want.Check(o); len(errs) > 0 {
				t.Errorf("%s\nrules:\n%s", strings.Join(errs, "\n"), DryRun(f.Config, Options{}, f.State))
			}
		})
	}
}

// TestInterpreter pins the interpreter's semantics on hand-written rules.
func TestInterpreter(t *testing.T) {
	const rules = `*nat
:A - [0:0]
:B - [0:0]
:G - [0:0]
:MASQ - [0:0]
:POST - [0:0]
-A A -m comment --comment "a \"quoted\" comment" ! -s 10.0.0.0/8,192.168.0.0/16 -j MASQ
-A A -i veth+ -p tcp --dport 80 -g G
-A A -m statistic --mode random --probability 0.2500000000 -j B
-A A -m recent --name X --rcheck --seconds 10 --reap -j DROP
-A A -m addrtype --dst-type LOCAL -j B
-A A -j DNAT --to-destination 10.0.0.9:80
-A B -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.0.0.1:80
-A B -m recent --name Y --set -j DNAT --to-destination [fd00::2]:80
-A G -j RETURN
-A G -j DNAT --to-destination 10.0.0.8:80
-A MASQ -j MARK --or-mark 0x00004000
-A POST -m mark ! --mark 0x00004000/0x00004000 -j RETURN
-A POST -j MARK --xor-mark 0x00004000
-A POST -j MASQUERADE
-I PREROUTING 1 -j A
-I POSTROUTING 1 -j POST
COMMIT
*filter
:F - [0:0]
-A F -m conntrack --ctstate INVALID -j DROP
-A F -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -d 10.0.0.9 -j REJECT
-A F -m mark --mark 0x00004000/0x00004000 -j ACCEPT
-I FORWARD 1 -j F
-I INPUT 1 -j F
COMMIT
`
	rs, err := parseRestore(rules)
	if err != nil {
		t.Fatal(err)
	}
	local := func(a netip.Addr) bool { return a == netip.MustParseAddr("192.168.0.2") }
	for _, tc := range []struct {
		name  string
		src   string
		dst   string
		iface string
		want  []string
	}{
		// A remote source is marked; a quarter of the packets go through
		// B (half of them to .1, the rest to [fd00::2] with affinity
		// recorded); the rest fall through to .9, which the filter's
		// REJECT spares because it was DNATed there.
		{"statistic splits", "172.16.0.1", "203.0.113.1", "eth0", []string{
			"10.0.0.1:80 p=0.1250 filter=ACCEPT masq=true affinity=false",
			"[fd00::2]:80 p=0.1250 filter=ACCEPT masq=true affinity=true",
			"10.0.0.9:80 p=0.7500 filter=ACCEPT masq=true affinity=false"}},
		// goto G, whose RETURN returns from A as well: no DNAT, and the
		// filter table leaves the unmarked packet alone.
		{"goto returns past the caller", "10.0.0.5", "203.0.113.1", "veth0", []string{
			"invalid AddrPort p=1.0000 filter= masq=false affinity=false"}},
		// Not via a veth: the statistic and the LOCAL destination both
		// lead to B.
		{"local destination", "10.0.0.5", "192.168.0.2", "eth1", []string{
			"10.0.0.1:80 p=0.1250 filter= masq=false affinity=false",
			"[fd00::2]:80 p=0.1250 filter= masq=false affinity=true",
			"10.0.0.1:80 p=0.3750 filter= masq=false affinity=false",
			"[fd00::2]:80 p=0.3750 filter= masq=false affinity=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := rs.walk(walkPacket{src: netip.MustParseAddr(tc.src), dst: netip.MustParseAddr(tc.dst), dport: 80, proto: "tcp", iface: tc.iface, local: local}, false)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range res {
				got = append(got, fmt.Sprintf("%s p=%.4f filter=%s masq=%v affinity=%v", r.dnat, r.prob, r.filter, r.masquerade, r.affinity))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
		})
	}
	// What the interpreter does not know is an error, never a pass.
	for _, bad := range []string{"*nat\n-A A -m foo --bar -j B\nCOMMIT\n", "*nat\n-A A -x\nCOMMIT\n", "*nat\n-I A 2 -j B\nCOMMIT\n", "bogus\n"} {
		if _, err := parseRestore(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
	if _, err := rs.run("nat", "NOPE", branch{prob: 1}, 0); err == nil {
		t.Errorf("ran an undeclared chain")
	}
}
