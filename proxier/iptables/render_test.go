package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/svcproxy/svcproxy/proxier"
)

var update = flag.Bool("update", false, "rewrite golden files")

func ep(ip string, port int32, ready bool) proxier.Endpoint {
	return proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: port, Ready: ready, Serving: ready}
}

func svc(ns, name, port string, proto proxier.Protocol, cip string, p int32, eps ...proxier.Endpoint) *proxier.Service {
	return &proxier.Service{
		Name:      proxier.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: proto},
		ClusterIP: netip.MustParseAddr(cip), Port: p, Protocol: proto, Endpoints: eps,
	}
}

func testConfig() proxier.Config {
	return proxier.Config{
		Family:        proxier.IPv4,
		MasqueradeBit: 14,
		LocalDetector: proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
	}
}

func testState() *proxier.State {
	local := ep("10.244.1.9", 8080, true)
	local.IsLocal = true
	itp := svc("ns2", "local", "", proxier.TCP, "10.96.0.20", 80, local, ep("10.244.2.3", 8080, true))
	itp.InternalPolicyLocal = true
	itpNone := svc("ns2", "local-none", "", proxier.TCP, "10.96.0.21", 80, ep("10.244.2.3", 8080, true))
	itpNone.InternalPolicyLocal = true
	return &proxier.State{
		Family: proxier.IPv4, NodeName: "node-1",
		Services: []*proxier.Service{
			svc("ns1", "empty", "http", proxier.TCP, "10.96.0.11", 80),
			svc("ns1", "web", "http", proxier.TCP, "10.96.0.10", 80,
				ep("10.244.1.2", 8080, true), ep("10.244.1.3", 8080, true), ep("10.244.1.4", 8080, true), ep("10.244.1.5", 8080, false)),
			svc("ns1", "web", "dns", proxier.UDP, "10.96.0.10", 53, ep("10.244.1.2", 5353, true)),
			itp, itpNone,
		},
	}
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  func(*proxier.Config)
		opt  Options
	}{
		{name: "basic", opt: Options{RandomFully: true, DropInvalid: true}},
		{name: "masquerade-all", cfg: func(c *proxier.Config) { c.MasqueradeAll = true }},
		{name: "no-detector", cfg: func(c *proxier.Config) { c.LocalDetector = proxier.LocalDetector{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			got := string(DryRun(cfg, tc.opt, testState()))
			again := string(DryRun(cfg, tc.opt, testState()))
			if got != again {
				t.Fatalf("render is not deterministic")
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if d := cmp.Diff(string(want), got); d != "" {
				t.Errorf("rules differ from %s (-want +got):\n%s", golden, d)
			}
		})
	}
}

func TestProbabilities(t *testing.T) {
	eps := []proxier.Endpoint{ep("10.0.0.1", 80, true), ep("10.0.0.2", 80, true), ep("10.0.0.3", 80, true), ep("10.0.0.4", 80, true)}
	st := &proxier.State{Family: proxier.IPv4, Services: []*proxier.Service{svc("a", "b", "", proxier.TCP, "10.96.0.1", 80, eps...)}}
	out := string(DryRun(testConfig(), Options{}, st))
	for _, want := range []string{"--probability 0.2500000000 ", "--probability 0.3333333333 ", "--probability 0.5000000000 "} {
		if strings.Count(out, want) != 1 {
			t.Errorf("want exactly one %q in:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "--probability"); n != 3 {
		t.Errorf("got %d probability rules, want 3 (last endpoint unconditional)", n)
	}
}

func TestChainNamesMatchKubeProxy(t *testing.T) {
	// Names kube-proxy gives these objects; a migrating node must converge
	// on the same chains.
	s := svc("ns1", "svc1", "p80", proxier.TCP, "172.30.0.41", 80)
	if got, want := ServiceChainName(s), "KUBE-SVC-XPGD46QRK7WJZT7O"; got != want {
		t.Errorf("ServiceChainName = %s, want %s", got, want)
	}
	if got, want := EndpointChainName(s, ep("10.180.0.1", 80, true)), "KUBE-SEP-SXIVWICOYRO3J4NJ"; got != want {
		t.Errorf("EndpointChainName = %s, want %s", got, want)
	}
}

// TestLocalhostNodePorts: route_localnet (and its KUBE-FIREWALL guard) is
// wanted only when NodePorts really answer on 127.0.0.1.
func TestLocalhostNodePorts(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  proxier.Config
		want bool
	}{
		{"all addresses", proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true}, true},
		{"flag off", proxier.Config{Family: proxier.IPv4}, false},
		{"IPv6", proxier.Config{Family: proxier.IPv6, LocalhostNodePorts: true}, false},
		{"loopback selected", proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, true},
		{"loopback not selected", proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}, false},
	} {
		if got := LocalhostNodePorts(tt.cfg); got != tt.want {
			t.Errorf("%s: LocalhostNodePorts = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestMatchLocalTraffic(t *testing.T) {
	two := proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("10.245.0.0/16")}}
	for _, tc := range []struct {
		name      string
		d         proxier.LocalDetector
		local     string
		notLocal  string
		implement bool
	}{
		{"every CIDR of the family", two, "-s 10.244.0.0/16,10.245.0.0/16", "! -s 10.244.0.0/16,10.245.0.0/16", true},
		{"bridge", proxier.LocalDetector{Mode: proxier.LocalBridgeInterface, Interface: "cbr0"}, "-i cbr0", "! -i cbr0", true},
		{"prefix", proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: "veth"}, "-i veth+", "! -i veth+", true},
		{"none", proxier.LocalDetector{}, "", "", false},
	} {
		l := proxier.LocalPodTraffic(tc.d, proxier.IPv4)
		if got := match(l); got != tc.local {
			t.Errorf("%s: local = %q, want %q", tc.name, got, tc.local)
		}
		if got := match(l.Not()); got != tc.notLocal {
			t.Errorf("%s: not local = %q, want %q", tc.name, got, tc.notLocal)
		}
		if l.Implemented() != tc.implement {
			t.Errorf("%s: implemented = %v", tc.name, l.Implemented())
		}
	}
}
