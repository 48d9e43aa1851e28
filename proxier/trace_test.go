package proxier_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestTraceFlows runs the packet-flow table against the tracer, in each
// mode's traits.
func TestTraceFlows(t *testing.T) {
	for _, m := range []struct {
		name string
		mode proxier.ModeTraits
	}{{"iptables", proxier.IPTablesMode}, {"nftables", proxier.NFTablesMode}} {
		for _, f := range pt.Flows(m.mode) {
			t.Run(m.name+"/"+f.Name, func(t *testing.T) {
				tr := proxier.MakePlan(f.Config, f.State).Trace(f.Packet)
				errs := f.Want.Check(pt.ObservedOf(tr))
				port, via := "", proxier.Via("")
				if tr.Port != nil {
					port, via = tr.Port.Name.String(), tr.Port.Via
				}
				if port != f.Want.Port || via != f.Want.Via {
					errs = append(errs, fmt.Sprintf("port %q via %q, want %q via %q", port, via, f.Want.Port, f.Want.Via))
				}
				if tr.Reason != f.Want.Reason {
					errs = append(errs, fmt.Sprintf("reason %q, want %q", tr.Reason, f.Want.Reason))
				}
				if len(errs) > 0 {
					t.Errorf("%s\ntrace:\n%s", strings.Join(errs, "\n"), tr)
				}
			})
		}
	}
}

// TestTraceFlowsCover checks that the table exercises every verdict, way in
// and short-circuit, and that the two modes' tables differ only where the
// modes do.
func TestTraceFlowsCover(t *testing.T) {
	seen := map[string]bool{}
	ipt, nft := pt.Flows(proxier.IPTablesMode), pt.Flows(proxier.NFTablesMode)
	if len(ipt) != len(nft) {
		t.Fatalf("%d iptables flows, %d nftables flows", len(ipt), len(nft))
	}
	var differ []string
	for i, f := range ipt {
		tr := proxier.MakePlan(f.Config, f.State).Trace(f.Packet)
		seen[string(tr.Verdict)] = true
		if tr.Port != nil {
			seen[string(tr.Port.Via)] = true
		}
		if tr.Policy != nil && tr.Policy.ShortCircuit {
			seen["short-circuit"] = true
		}
		if tr.Affinity != nil {
			seen["affinity"] = true
		}
		if fmt.Sprint(f.Want) != fmt.Sprint(nft[i].Want) {
			differ = append(differ, f.Name)
		}
	}
	for _, want := range []string{"DNAT", "REJECT", "DROP", "NOT-OURS", "ClusterIP", "NodePort", "ExternalIP", "LoadBalancerIP", "short-circuit", "affinity"} {
		if !seen[want] {
			t.Errorf("no flow exercises %s", want)
		}
	}
	wantDiffer := []string{
		"main/unknown port of a ClusterIP", "main/other protocol of a ClusterIP", "main/unallocated ClusterIP",
		"main/localhost NodePort", "main/node to external IP without endpoints",
		"nodeport-addresses/other local address, no endpoints", "ipv6/unallocated ClusterIP",
	}
	if fmt.Sprint(differ) != fmt.Sprint(wantDiffer) {
		t.Errorf("flows where the modes differ:\n%s\nwant\n%s", strings.Join(differ, "\n"), strings.Join(wantDiffer, "\n"))
	}
}

func TestTraceText(t *testing.T) {
	st := pt.State(proxier.IPv4, pt.Service("ns/web:http", proxier.TCP, "10.96.0.10", 80, pt.Affinity(60),
		pt.Endpoints(pt.Endpoint("10.244.1.2", 8080, pt.Local), pt.Endpoint("10.244.2.2", 8080, pt.OnNode(pt.OtherNode)))))
	tr := proxier.MakePlan(pt.Config(), st).Trace(pt.Pkt(proxier.FromLocalPod, "10.244.1.2", "10.96.0.10:80"))
	want := `packet     10.244.1.2 (local-pod) -> 10.96.0.10:80/TCP
port       ns/web:http/TCP via ClusterIP 10.96.0.10:80
policy     internal Cluster
endpoint   10.244.1.2:8080 on node-1 (local) p=0.5000 masqueraded: hairpin
endpoint   10.244.2.2:8080 on node-2 p=0.5000
affinity   ClientIP for 60s, shared by 10.96.0.10:80
masquerade no: ClusterIP traffic that the local-traffic match (--detect-local-mode) counts as a pod's keeps its source
verdict    DNAT: to a cluster endpoint
`
	if got := tr.String(); got != want {
		t.Errorf("text:\n%s\nwant:\n%s", got, want)
	}
	b, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"verdict":"DNAT"`, `"via":"ClusterIP"`, `"policy":"Cluster"`, `"endpoint":"10.244.1.2:8080"`, `"hairpin":true`, `"name":{"namespace":"ns","name":"web","port":"http","protocol":"TCP"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
}

// TestTraceLocalAddrs: where NodePorts answer on every local address, the
// node's addresses beyond its node IPs (LocalAddrs) are NodePort
// addresses and the node itself, as the kernel's local-address match has
// them; without them such an address is not the node's.
func TestTraceLocalAddrs(t *testing.T) {
	st := pt.State(proxier.IPv6, pt.Service("ns/web", proxier.TCP, "fd00:96::10", 80, pt.NodePort(30080),
		pt.Endpoints(pt.Endpoint("fd00:244:1::2", 8080, pt.Local))))
	for _, tc := range []struct {
		name  string
		local []string
		want  proxier.Outcome
	}{
		{"known local address", []string{"fd00:10::2"}, proxier.OutcomeDNAT},
		{"address not known", nil, proxier.OutcomeNotOurs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := pt.Config(pt.IPv6)
			cfg.LocalAddrs = pt.Addrs(tc.local...)
			tr := proxier.MakePlan(cfg, st).Trace(pt.Pkt(proxier.FromOutside, "fd00:99::1", "[fd00:10::2]:30080"))
			if tr.Verdict != tc.want {
				t.Fatalf("verdict %s (%s), want %s", tr.Verdict, tr.Reason, tc.want)
			}
			if tc.want == proxier.OutcomeDNAT && (tr.Port == nil || tr.Port.Via != proxier.ViaNodePort || len(tr.Endpoints) != 1 || tr.Reason != proxier.ReasonClusterEndpoints) {
				t.Errorf("matched %+v to %v (%s), want the NodePort to its endpoint", tr.Port, tr.Endpoints, tr.Reason)
			}
		})
	}
}
