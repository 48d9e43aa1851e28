package nftables

import (
	"context"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// goldenV4 is a State with every kind of Service the layout renders:
// ClusterIP only, named ports, NodePort, external IPs, a load balancer
// with source ranges (one holding the node IP), externalTrafficPolicy and
// internalTrafficPolicy Local (with and without local endpoints), no
// endpoints, session affinity over TCP and UDP, terminating endpoints as
// the fallback, SCTP, and ServiceCIDRs overriding the flag's.
func goldenV4() *proxier.State {
	e, eps, local := pt.Endpoint, pt.Endpoints, pt.Local
	st := pt.State(proxier.IPv4,
		pt.Service("kube-system/dns:dns", proxier.UDP, "10.96.0.53", 53, eps(e("10.244.1.4", 5353, local), e("10.244.2.4", 5353))),
		pt.Service("ns1/empty", proxier.TCP, "10.96.0.11", 80),
		pt.Service("ns1/np", proxier.TCP, "10.96.0.12", 8080, pt.NodePort(30080), pt.ExternalIPs("203.0.113.10"),
			eps(e("10.244.1.5", 80, local), e("10.244.2.5", 80))),
		pt.Service("ns1/web:http", proxier.TCP, "10.96.0.10", 80, eps(e("10.244.1.2", 8080, local), e("10.244.1.3", 8080, local), e("10.244.2.2", 8080))),
		pt.Service("ns2/lb", proxier.TCP, "10.96.0.13", 443, pt.NodePort(30443), pt.LoadBalancer("198.51.100.1", "198.51.100.2"),
			pt.SourceRanges("203.0.113.0/25", "192.168.0.0/24"), pt.ExternalLocal, pt.HealthCheck(32000),
			eps(e("10.244.1.6", 8443, local), e("10.244.2.6", 8443))),
		pt.Service("ns2/itp", proxier.TCP, "10.96.0.15", 80, pt.InternalLocal, eps(e("10.244.1.8", 80, local), e("10.244.2.8", 80))),
		pt.Service("ns2/itp-none", proxier.TCP, "10.96.0.16", 80, pt.InternalLocal, eps(e("10.244.2.9", 80))),
		// externalTrafficPolicy Local without a local endpoint: external
		// traffic is dropped, the ClusterIP still served.
		pt.Service("ns2/remote", proxier.TCP, "10.96.0.14", 80, pt.NodePort(30081), pt.ExternalLocal, eps(e("10.244.2.7", 80))),
		pt.Service("ns3/sticky", proxier.TCP, "10.96.0.17", 80, pt.Affinity(10800), pt.NodePort(30082), pt.ExternalIPs("203.0.113.11"),
			eps(e("10.244.1.10", 8080, local), e("10.244.2.10", 8080))),
		pt.Service("ns3/sticky-local", proxier.UDP, "10.96.0.18", 53, pt.Affinity(600), pt.NodePort(30083), pt.ExternalLocal,
			eps(e("10.244.1.11", 53, local), e("10.244.2.11", 53))),
		// A second Service port sharing sticky's affinity set.
		pt.Service("ns3/sticky2", proxier.TCP, "10.96.0.21", 8080, pt.Affinity(10800), eps(e("10.244.2.15", 8080))),
		pt.Service("ns4/sctp", proxier.SCTP, "10.96.0.20", 9999, eps(e("10.244.1.14", 9999, local))),
		pt.Service("ns4/terminating", proxier.TCP, "10.96.0.19", 80,
			eps(e("10.244.1.12", 80, local, pt.Terminating), e("10.244.2.12", 80, pt.Terminating), e("10.244.2.13", 80, pt.NotReady))),
	)
	st.ServiceCIDRs = pt.Prefixes("10.96.0.0/16", "10.97.0.0/24")
	return st
}

// goldenV6 is the IPv6 counterpart of goldenV4, with fewer Services.
func goldenV6() *proxier.State {
	e, eps, local := pt.Endpoint, pt.Endpoints, pt.Local
	return pt.State(proxier.IPv6,
		pt.Service("ns1/empty", proxier.TCP, "fd00:10:96::11", 80),
		pt.Service("ns1/web", proxier.TCP, "fd00:10:96::10", 80, eps(e("fd00:10:244:1::2", 8080, local), e("fd00:10:244:2::2", 8080))),
		pt.Service("ns2/lb", proxier.TCP, "fd00:10:96::13", 443, pt.NodePort(30443), pt.ExternalIPs("2001:db8::10"), pt.LoadBalancer("2001:db8:1::1"),
			pt.SourceRanges("2001:db8:2::/64", "10.0.0.0/8"), pt.ExternalLocal,
			eps(e("fd00:10:244:1::6", 8443, local), e("fd00:10:244:2::6", 8443))),
		pt.Service("ns2/itp", proxier.TCP, "fd00:10:96::15", 80, pt.InternalLocal, eps(e("fd00:10:244:1::8", 80, local))),
		pt.Service("ns3/sticky", proxier.UDP, "fd00:10:96::17", 53, pt.Affinity(10800), pt.NodePort(30082),
			eps(e("fd00:10:244:1::10", 53, local), e("fd00:10:244:2::10", 53))),
	)
}

// goldenConfig is the golden files' config of family f: two node IPs in
// IPv4, shaped by opts.
func goldenConfig(f proxier.IPFamily, opts ...pt.ConfigOption) proxier.Config {
	base := []pt.ConfigOption{pt.NodeIPs("192.168.0.2", "10.0.0.2")}
	if f == proxier.IPv6 {
		base = []pt.ConfigOption{pt.IPv6, pt.NodeIPs("fd00::2")}
	}
	return pt.Config(append(base, opts...)...)
}

// goldenCases are the whole tables the golden files hold: the first sync
// of a State (DryRun's output), under several configurations.
var goldenCases = []struct {
	name string
	cfg  func() proxier.Config
	st   func() *proxier.State
}{
	{"ipv4", func() proxier.Config { return goldenConfig(proxier.IPv4, pt.ServiceRange("10.96.0.0/16")) }, goldenV4},
	{"ipv4-nodeport-addresses", func() proxier.Config {
		return goldenConfig(proxier.IPv4, pt.NodePortAddresses("192.168.0.0/24", "fd00::/64"), pt.ServiceRange("10.96.0.0/16"))
	}, goldenV4},
	{"ipv4-masquerade-all", func() proxier.Config {
		return goldenConfig(proxier.IPv4, pt.MasqueradeAll, pt.Detector(proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: "veth"}))
	}, func() *proxier.State { st := goldenV4(); st.ServiceCIDRs = nil; return st }},
	{"ipv4-no-detector", func() proxier.Config {
		return goldenConfig(proxier.IPv4, pt.NoDetector, pt.ServiceRange("10.96.0.0/12"))
	}, func() *proxier.State { st := goldenV4(); st.ServiceCIDRs = nil; return st }},
	{"ipv6", func() proxier.Config { return goldenConfig(proxier.IPv6, pt.ServiceRange("fd00:10:96::/112")) }, goldenV6},
}

// TestDryRunGolden compares the whole table a first sync writes (DryRun)
// with testdata/<case>.nft, byte for byte. Run with -update to rewrite
// the files after an intended change.
func TestDryRunGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			got := DryRun(tc.cfg(), tc.st())
			if again := DryRun(tc.cfg(), tc.st()); again != got {
				t.Fatal("DryRun is not deterministic")
			}
			pt.Golden(t, filepath.Join("testdata", tc.name+".nft"), got)
		})
	}
}

// TestPartialSyncGolden compares the transaction of a partial sync from
// goldenV4 to a State changed in most ways a partial sync handles (an
// endpoint gone, one added, a Service gone, one added, a new endpoint
// count, affinity endpoints and destinations changed, a Service with
// affinity gone, a ServiceCIDR added) with
// testdata/ipv4-partial.nft.
func TestPartialSyncGolden(t *testing.T) {
	ctx := context.Background()
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(goldenConfig(proxier.IPv4, pt.ServiceRange("10.96.0.0/16")), nft)
	st := goldenV4()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	st2 := *st
	st2.ServiceCIDRs = pt.Prefixes("10.96.0.0/16", "10.97.0.0/24", "10.98.0.0/24")
	st2.Services = slices.Clone(st.Services)
	byName := func(name string) int {
		return slices.IndexFunc(st2.Services, func(s *proxier.Service) bool { return s.Name.Name == name })
	}
	// web: one endpoint gone, two added (a new endpoint count).
	web := *st2.Services[byName("web")]
	web.Endpoints = append(slices.Clone(web.Endpoints[1:]), pt.Endpoint("10.244.3.2", 8080), pt.Endpoint("10.244.3.3", 8080))
	st2.Services[byName("web")] = &web
	// sticky: an endpoint replaced.
	sticky := *st2.Services[byName("sticky")]
	sticky.Endpoints = []proxier.Endpoint{sticky.Endpoints[0], pt.Endpoint("10.244.3.10", 8080)}
	st2.Services[byName("sticky")] = &sticky
	// sticky-local: a new destination (its record chain is rewritten).
	stickyLocal := *st2.Services[byName("sticky-local")]
	stickyLocal.ExternalIPs = pt.Addrs("203.0.113.12")
	st2.Services[byName("sticky-local")] = &stickyLocal
	// sticky2 gone (its record chain goes); empty gone; a new one.
	st2.Services = slices.Delete(st2.Services, byName("sticky2"), byName("sticky2")+1)
	st2.Services = slices.Delete(st2.Services, byName("empty"), byName("empty")+1)
	added := pt.Service("ns5/added", proxier.UDP, "10.96.0.30", 5353, pt.Endpoints(pt.Endpoint("10.244.1.30", 5353, pt.Local)))
	st2.Services = append(st2.Services, added)
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Full {
		t.Fatalf("want a partial sync: %+v", r)
	}
	pt.Golden(t, filepath.Join("testdata", "ipv4-partial.nft"), nft.LastTransaction.String())

	// The partial sync leaves the table a first sync of st2 leaves.
	fresh := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(goldenConfig(proxier.IPv4, pt.ServiceRange("10.96.0.0/16")), fresh).Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if got, want := sortedLines(nft.Dump()), sortedLines(fresh.Dump()); got != want {
		t.Errorf("partial sync differs from a full sync (-full +partial):\n%s", cmp.Diff(want, got))
	}
}

// TestKernelGoldenLoads: nft takes every golden table, in a throwaway
// namespace.
func TestKernelGoldenLoads(t *testing.T) {
	enterNetns(t)
	for _, tc := range goldenCases {
		cmd := exec.Command("nft", "-f", filepath.Join("testdata", tc.name+".nft"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: nft -f: %v: %s", tc.name, err, out)
		}
	}
}
