package iptables

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// ep and svc are the kernel tests' short forms of the proxiertest builders.
func ep(ip string, port int32, ready bool) proxier.Endpoint {
	if !ready {
		return pt.Endpoint(ip, port, pt.NotReady)
	}
	return pt.Endpoint(ip, port)
}

func svc(ns, name, port string, proto proxier.Protocol, cip string, p int32, eps ...proxier.Endpoint) *proxier.Service {
	if port != "" {
		name += ":" + port
	}
	return pt.Service(ns+"/"+name, proto, cip, p, pt.Endpoints(eps...))
}

func testConfig() proxier.Config { return pt.Config() }

func testState() *proxier.State {
	return pt.State(proxier.IPv4,
		pt.Service("ns1/empty:http", proxier.TCP, "10.96.0.11", 80),
		pt.Service("ns1/web:http", proxier.TCP, "10.96.0.10", 80, pt.Endpoints(
			pt.Endpoint("10.244.1.2", 8080), pt.Endpoint("10.244.1.3", 8080), pt.Endpoint("10.244.1.4", 8080), pt.Endpoint("10.244.1.5", 8080, pt.NotReady))),
		pt.Service("ns1/web:dns", proxier.UDP, "10.96.0.10", 53, pt.Endpoints(pt.Endpoint("10.244.1.2", 5353))),
		pt.Service("ns2/local", proxier.TCP, "10.96.0.20", 80, pt.InternalLocal,
			pt.Endpoints(pt.Endpoint("10.244.1.9", 8080, pt.Local), pt.Endpoint("10.244.2.3", 8080))),
		pt.Service("ns2/local-none", proxier.TCP, "10.96.0.21", 80, pt.InternalLocal, pt.Endpoints(pt.Endpoint("10.244.2.3", 8080))),
	)
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
			pt.Golden(t, filepath.Join("testdata", tc.name+".golden"), got)
		})
	}
}

func TestProbabilities(t *testing.T) {
	st := pt.State(proxier.IPv4, pt.Service("a/b", proxier.TCP, "10.96.0.1", 80, pt.Endpoints(
		pt.Endpoint("10.0.0.1", 80), pt.Endpoint("10.0.0.2", 80), pt.Endpoint("10.0.0.3", 80), pt.Endpoint("10.0.0.4", 80))))
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
	s := pt.Service("ns1/svc1:p80", proxier.TCP, "172.30.0.41", 80)
	if got, want := ServiceChainName(s), "KUBE-SVC-XPGD46QRK7WJZT7O"; got != want {
		t.Errorf("ServiceChainName = %s, want %s", got, want)
	}
	if got, want := EndpointChainName(s, pt.Endpoint("10.180.0.1", 80)), "KUBE-SEP-SXIVWICOYRO3J4NJ"; got != want {
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
