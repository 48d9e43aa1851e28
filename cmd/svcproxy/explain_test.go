package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
	"github.com/svcproxy/svcproxy/syncer"
)

// explainManifests are the golden cases' cluster: node-1 (192.168.0.2,
// 2001:db8::2, pod CIDRs 10.244.1.0/24 and fd00:10:244:1::/64), its
// Services and EndpointSlices.
var explainManifests = filepath.Join("testdata", "explain", "manifests")

// explainFlags are the proxy flags every case runs with.
var explainFlags = []string{"--manifests", explainManifests, "--hostname-override", "node-1",
	"--cluster-cidr", "10.244.0.0/16,fd00:10:244::/48", "--service-cluster-ip-range", "10.96.0.0/16,fd00:10:96::/112"}

// explainCases are the golden cases: testdata/explain/<name>-<mode>.golden
// (text) and <name>-<mode>.json.golden.
var explainCases = []struct {
	name     string
	from, to string
	args     []string
	// verdict is what both modes answer, "" when they differ.
	verdict proxier.Outcome
}{
	{"clusterip", "10.244.1.5", "10.96.0.10:80/tcp", nil, proxier.OutcomeDNAT},
	{"nodeport-local-from-outside", "203.0.113.2", "192.168.0.2:30012/tcp", nil, proxier.OutcomeDNAT},
	{"nodeport-local-from-pod", "10.244.1.5", "192.168.0.2:30012/tcp", nil, proxier.OutcomeDNAT},
	{"nodeport-local-from-node", "192.168.0.2", "192.168.0.2:30012/tcp", nil, proxier.OutcomeDNAT},
	{"lb-source-range-allowed", "203.0.113.2", "1.2.3.4:443/tcp", nil, proxier.OutcomeDNAT},
	{"lb-source-range-blocked", "203.0.113.130", "1.2.3.4:443/tcp", nil, proxier.OutcomeDrop},
	{"itp-local", "10.244.1.5", "10.96.0.16:80/tcp", nil, proxier.OutcomeDNAT},
	{"no-endpoints", "10.244.1.5", "10.96.0.15:80/tcp", nil, proxier.OutcomeReject},
	{"session-affinity", "10.244.1.5", "10.96.0.18:80/tcp", nil, proxier.OutcomeDNAT},
	{"hairpin", "10.244.1.2", "10.96.0.10:80/tcp", nil, proxier.OutcomeDNAT},
	{"ipv6", "fd00:10:244:1::5", "[fd00:10:96::10]:80/tcp", nil, proxier.OutcomeDNAT},
	{"unknown-port", "10.244.1.5", "10.96.0.10:81/tcp", nil, ""},
	{"unallocated-clusterip", "10.244.1.5", "10.96.0.99:80/tcp", nil, ""},
	{"not-ours", "10.244.1.5", "8.8.8.8:53/udp", nil, proxier.OutcomeNotOurs},
	// A pod of this node taken for another node's: with bridge detection
	// it is not short-circuited, and only the local endpoint serves it.
	{"from-kind-override", "10.244.1.5", "192.168.0.2:30012/tcp",
		[]string{"--from-kind", "remote-pod", "--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0"}, proxier.OutcomeDNAT},
}

// explainRun runs `svcproxy explain args...` through the functions
// explainMain runs, and returns its stdout.
func explainRun(t *testing.T, args ...string) (string, *options) {
	t.Helper()
	o, ea, err := parseExplain(args)
	if err != nil {
		t.Fatalf("parseExplain(%q): %v", args, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := runExplain(ctx, &out, o, ea); err != nil {
		t.Fatalf("explain %q: %v", args, err)
	}
	return out.String(), o
}

// TestExplainGolden: explain's text and JSON in both modes, as in
// testdata/explain (-update rewrites them). Every rule and element the
// JSON names is in --dry-run's output for the same files and flags, and
// the verdict is the one the case expects.
func TestExplainGolden(t *testing.T) {
	for _, tc := range explainCases {
		for _, mode := range []string{"iptables", "nftables"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				args := append(append([]string{"--proxy-mode", mode, "--from", tc.from, "--to", tc.to}, explainFlags...), tc.args...)
				text, _ := explainRun(t, args...)
				pt.Golden(t, filepath.Join("testdata", "explain", tc.name+"-"+mode+".golden"), text)
				js, o := explainRun(t, append(args, "-o", "json")...)
				pt.Golden(t, filepath.Join("testdata", "explain", tc.name+"-"+mode+".json.golden"), js)

				var e explanation
				if err := json.Unmarshal([]byte(js), &e); err != nil {
					t.Fatalf("JSON: %v", err)
				}
				if tc.verdict != "" && e.Verdict != tc.verdict {
					t.Errorf("verdict %s, want %s", e.Verdict, tc.verdict)
				}
				if (e.Verdict == proxier.OutcomeNotOurs) != (len(e.Rules) == 0) {
					t.Errorf("verdict %s with %d rules", e.Verdict, len(e.Rules))
				}
				var dry bytes.Buffer
				if err := runDryRun(context.Background(), o, &dry); err != nil {
					t.Fatal(err)
				}
				checkRulesInDryRun(t, mode, e.Rules, dry.String())
			})
		}
	}
}

// checkRulesInDryRun fails t for a location that is not in --dry-run's
// output.
func checkRulesInDryRun(t *testing.T, mode string, rules []proxier.Location, dry string) {
	t.Helper()
	lines := strings.Split(dry, "\n")
	for _, l := range rules {
		var ok bool
		switch {
		case mode == "iptables":
			ok = slices.Contains(lines, l.Rule) && strings.HasPrefix(l.Rule, "-A "+l.Chain+" ")
		case l.Set != "":
			prefix := "add element " + l.Table + " " + l.Set + " { "
			ok = slices.ContainsFunc(lines, func(line string) bool {
				body, found := strings.CutPrefix(line, prefix)
				return found && slices.Contains(strings.Split(strings.TrimSuffix(body, " }"), ", "), l.Element)
			})
		default:
			ok = slices.Contains(lines, "add rule "+l.Table+" "+l.Chain+" "+l.Rule)
		}
		if !ok {
			t.Errorf("%+v is not in --dry-run's output", l)
		}
	}
}

// TestExplainJSONFields decodes explain's JSON as a script does, for the
// fields the e2e matrix reads.
func TestExplainJSONFields(t *testing.T) {
	for _, tc := range []struct {
		name, from, to string
		verdict        proxier.Outcome
		via            proxier.Via
		masquerade     bool
		endpoints      map[string]bool // endpoint → masqueraded
		kind           proxier.SourceKind
	}{
		{"hairpin", "10.244.1.2", "10.96.0.10:80/tcp", proxier.OutcomeDNAT, proxier.ViaClusterIP, false,
			map[string]bool{"10.244.1.2:8080": true, "10.244.2.2:8080": false}, proxier.FromLocalPod},
		{"ETP Local from outside", "203.0.113.2", "192.168.0.2:30012/tcp", proxier.OutcomeDNAT, proxier.ViaNodePort, false,
			map[string]bool{"10.244.1.4:8080": false}, proxier.FromOutside},
		{"node short-circuit", "192.168.0.2", "192.168.0.2:30012/tcp", proxier.OutcomeDNAT, proxier.ViaNodePort, true,
			map[string]bool{"10.244.1.4:8080": true, "10.244.2.4:8080": true}, proxier.FromNode},
		{"remote pod to ClusterIP", "10.244.2.9", "10.96.0.10:80/tcp", proxier.OutcomeDNAT, proxier.ViaClusterIP, false,
			map[string]bool{"10.244.1.2:8080": false, "10.244.2.2:8080": false}, proxier.FromRemotePod},
		{"source range", "203.0.113.130", "1.2.3.4:443/tcp", proxier.OutcomeDrop, proxier.ViaLoadBalancerIP, false, nil, proxier.FromOutside},
	} {
		for _, mode := range []string{"iptables", "nftables"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				js, _ := explainRun(t, append([]string{"--proxy-mode", mode, "--from", tc.from, "--to", tc.to, "-o", "json"}, explainFlags...)...)
				var got struct {
					Verdict    proxier.Outcome `json:"verdict"`
					Reason     string          `json:"reason"`
					Masquerade bool            `json:"masquerade"`
					Port       struct {
						Via proxier.Via `json:"via"`
					} `json:"port"`
					Endpoints []struct {
						Endpoint   string `json:"endpoint"`
						Masquerade bool   `json:"masquerade"`
					} `json:"endpoints"`
					SourceKind proxier.SourceKind `json:"sourceKind"`
					Rules      []json.RawMessage  `json:"rules"`
				}
				if err := json.Unmarshal([]byte(js), &got); err != nil {
					t.Fatal(err)
				}
				if got.Verdict != tc.verdict || got.Port.Via != tc.via || got.Masquerade != tc.masquerade || got.SourceKind != tc.kind || got.Reason == "" {
					t.Errorf("verdict %s via %s masquerade %v kind %s reason %q, want %s via %s masquerade %v kind %s",
						got.Verdict, got.Port.Via, got.Masquerade, got.SourceKind, got.Reason, tc.verdict, tc.via, tc.masquerade, tc.kind)
				}
				eps := map[string]bool{}
				for _, e := range got.Endpoints {
					eps[e.Endpoint] = e.Masquerade
				}
				if len(eps) != len(tc.endpoints) {
					t.Errorf("endpoints %v, want %v", eps, tc.endpoints)
				}
				for ep, masq := range tc.endpoints {
					if m, ok := eps[ep]; !ok || m != masq {
						t.Errorf("endpoints %v, want %v", eps, tc.endpoints)
					}
				}
				if len(got.Rules) == 0 {
					t.Error("no rules")
				}
			})
		}
	}
}

// TestExplainArgs: bad arguments are refused with a message naming the
// flag; --help is explain's own.
func TestExplainArgs(t *testing.T) {
	ok := []string{"--from", "10.244.1.5", "--to", "10.96.0.10:80/tcp", "--manifests", explainManifests}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--to", "10.96.0.10:80/tcp"}, "--from and --to are required"},
		{[]string{"--from", "10.244.1.5"}, "--from and --to are required"},
		{[]string{"--from", "pod", "--to", "10.96.0.10:80"}, "--from:"},
		{[]string{"--from", "10.244.1.5", "--to", "10.96.0.10"}, "--to:"},
		{[]string{"--from", "10.244.1.5", "--to", "10.96.0.10:0/tcp"}, "--to:"},
		{[]string{"--from", "10.244.1.5", "--to", "10.96.0.10:80/icmp"}, "unknown protocol"},
		{[]string{"--from", "10.244.1.5", "--to", "[fd00::1]:80/tcp"}, "not the same IP family"},
		{append([]string{"-o", "yaml"}, ok...), "--output:"},
		{append([]string{"--from-kind", "pod"}, ok...), "--from-kind:"},
		{append([]string{"--dry-run"}, ok...), "--dry-run does not apply"},
		{append([]string{"--cleanup"}, ok...), "--cleanup does not apply"},
		{append([]string{"--proxy-mode", "ipvs"}, ok...), "ipvs"},
		{append([]string{"extra"}, ok...), "unexpected argument"},
	} {
		_, _, err := parseExplain(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseExplain(%q) = %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	for _, args := range [][]string{ok, append([]string{"--proxy-mode", "nftables", "--cleanup-kube-proxy", "--metrics-bind-address", "127.0.0.1:10249", "-v=2"}, ok...)} {
		if _, _, err := parseExplain(args); err != nil {
			t.Errorf("parseExplain(%q): %v", args, err)
		}
	}
	if _, _, err := parseExplain([]string{"--help"}); !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("--help: %v, want pflag.ErrHelp", err)
	}
	if u := explainUsage(); !strings.Contains(u, "--from-kind") || !strings.Contains(u, "svcproxy explain") {
		t.Errorf("explain's usage lacks its flags:\n%s", u)
	}
	// The proxy itself still refuses --manifests.
	if _, err := parseFlags([]string{"--manifests", explainManifests}); err == nil {
		t.Error("the proxy accepted --manifests without --dry-run")
	}
}

// TestExplainUnreachable: an API server that cannot be reached is an
// error (explainMain exits 1), not an explanation.
func TestExplainUnreachable(t *testing.T) {
	for _, mode := range []string{"iptables", "nftables"} {
		o, ea, err := parseExplain([]string{"--from", "10.244.1.5", "--to", "10.96.0.10:80/tcp", "--master", "http://127.0.0.1:1", "--hostname-override", "node-1", "--proxy-mode", mode})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var out bytes.Buffer
		err = runExplain(ctx, &out, o, ea)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "API server") {
			t.Errorf("%s: runExplain = %v, want an API server error", mode, err)
		}
		if out.Len() > 0 {
			t.Errorf("%s: printed %q", mode, out.String())
		}
	}
}

// TestInferSourceKind: the source kinds explain infers, and why.
func TestInferSourceKind(t *testing.T) {
	cfg := proxier.Config{Family: proxier.IPv4, NodeIPs: pt.Addrs("192.168.0.2"),
		LocalDetector: proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: pt.Prefixes("10.244.0.0/16")}}
	st := pt.State(proxier.IPv4, pt.Service("ns/web", proxier.TCP, "10.96.0.10", 80,
		pt.Endpoints(pt.Endpoint("10.244.9.2", 80, pt.Local), pt.Endpoint("10.244.1.3", 80, pt.OnNode("node-2")))))
	withCIDR := syncer.NodeInfo{PodCIDRs: pt.Prefixes("10.244.1.0/24")}
	for _, tc := range []struct {
		src  string
		info bool
		want proxier.SourceKind
		why  string
	}{
		{"192.168.0.2", true, proxier.FromNode, "this node's"},
		{"127.0.0.1", true, proxier.FromNode, "this node's"},
		{"10.244.9.2", true, proxier.FromLocalPod, "endpoint of ns/web on this node"},
		{"10.244.1.3", true, proxier.FromRemotePod, "on node node-2"},
		{"10.244.1.5", true, proxier.FromLocalPod, "pod CIDR 10.244.1.0/24"},
		{"10.244.2.5", true, proxier.FromRemotePod, "cluster CIDR"},
		{"10.244.2.5", false, proxier.FromLocalPod, "--detect-local-mode=ClusterCIDR"},
		{"203.0.113.2", true, proxier.FromOutside, "neither"},
	} {
		info := syncer.NodeInfo{}
		if tc.info {
			info = withCIDR
		}
		got, why := inferSourceKind(pt.Addr(tc.src), cfg, info, pt.Prefixes("10.244.0.0/16"), st)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("%s (node pod CIDR %v): %s (%s), want %s (%s)", tc.src, tc.info, got, why, tc.want, tc.why)
		}
	}
}

// TestExplainOtherFamily: a destination of a family the options do not
// name (explain probes nothing) is explained under that family's
// configuration, as the proxy on a dual-stack node would.
func TestExplainOtherFamily(t *testing.T) {
	o, _, err := parseExplain([]string{"--from", "fd00:10:244:1::5", "--to", "[fd00:10:96::10]:80/tcp", "--cluster-cidr", "10.244.0.0/16", "--manifests", explainManifests})
	if err != nil {
		t.Fatal(err)
	}
	info := syncer.NodeInfo{InternalIPs: pt.Addrs("192.168.0.2", "2001:db8::2")}
	n := &node{name: "node-1", info: info}
	if n.cfgs, err = proxyConfigs(o, host{Name: n.name, Node: info, Families: []proxier.IPFamily{proxier.IPv4}}); err != nil {
		t.Fatal(err)
	}
	cfg, err := familyConfigOf(o, n, proxier.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Family != proxier.IPv6 || !slices.Equal(cfg.NodeIPs, pt.Addrs("2001:db8::2")) {
		t.Errorf("config %v with node IPs %v, want IPv6 with 2001:db8::2", cfg.Family, cfg.NodeIPs)
	}
	if cfg, _ := familyConfigOf(o, n, proxier.IPv4); cfg.Family != proxier.IPv4 || !slices.Equal(cfg.NodeIPs, pt.Addrs("192.168.0.2")) {
		t.Errorf("IPv4 config %v with node IPs %v", cfg.Family, cfg.NodeIPs)
	}
}
