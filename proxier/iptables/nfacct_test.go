package iptables

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestRenderNFAcctGolden: with both counters, the INVALID drop and a
// localhost rule per NodePort with endpoints count their packets (the
// features golden is the same ruleset without them).
func TestRenderNFAcctGolden(t *testing.T) {
	got := string(DryRun(featureConfig(), Options{RandomFully: true, DropInvalid: true, NFAcct: NFAccts}, featureState()))
	checkConsistent(t, got)
	pt.Golden(t, filepath.Join("testdata", "features-nfacct.golden"), got)
}

// TestRenderNFAcct: which rules carry which counter, by the counters the
// kernel has and the configuration.
func TestRenderNFAcct(t *testing.T) {
	const (
		invalid   = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"
		plainDrop = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
		localhost = `-A KUBE-NODEPORTS -m comment --comment "ns/nodeport" -m tcp -p tcp -d 127.0.0.0/8 --dport 30080 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-`
	)
	noLocalhost := pt.Config(pt.NodeIPs("192.168.0.2"))
	v6 := pt.Config(pt.NodeIPs("fd00::2"), pt.LocalhostNodePorts)
	v6.Family = proxier.IPv6
	for _, tc := range []struct {
		name     string
		cfg      proxier.Config
		opt      Options
		want     []string
		wantNone []string
	}{
		{"no counters", featureConfig(), Options{DropInvalid: true}, []string{plainDrop}, []string{"nfacct"}},
		{"both", featureConfig(), Options{DropInvalid: true, NFAcct: NFAccts}, []string{invalid, localhost}, []string{plainDrop}},
		{"invalid only", featureConfig(), Options{DropInvalid: true, NFAcct: []string{NFAcctInvalidDropped}}, []string{invalid}, []string{"localhost_nps"}},
		{"localhost only", featureConfig(), Options{DropInvalid: true, NFAcct: []string{NFAcctLocalhostNodePorts}}, []string{plainDrop, localhost}, []string{"ct_state_invalid"}},
		{"liberal conntrack: no INVALID rule", featureConfig(), Options{NFAcct: NFAccts}, []string{localhost}, []string{"INVALID"}},
		{"localhost NodePorts off", noLocalhost, Options{DropInvalid: true, NFAcct: NFAccts}, []string{invalid}, []string{"localhost_nps", "127.0.0.0/8 --dport"}},
		{"IPv6", v6, Options{DropInvalid: true, NFAcct: NFAccts}, []string{invalid}, []string{"localhost_nps"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := featureState()
			st.Family = tc.cfg.Family
			if tc.cfg.Family == proxier.IPv6 {
				st = pt.State(proxier.IPv6, pt.Service("ns/nodeport", proxier.TCP, "fd00:96::1", 80, pt.NodePort(30080),
					pt.Endpoints(pt.Endpoint("fd00:244::2", 8080))))
			}
			got := string(DryRun(tc.cfg, tc.opt, st))
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("no %q in:\n%s", w, got)
				}
			}
			for _, w := range tc.wantNone {
				if strings.Contains(got, w) {
					t.Errorf("%q in:\n%s", w, got)
				}
			}
			// Only NodePorts with endpoints get the localhost rule, and it
			// comes before the NodePort's own.
			if n := strings.Count(got, "--nfacct-name localhost_nps_accepted_pkts"); strings.Contains(strings.Join(tc.want, ""), "localhost_nps") && n != 3 {
				t.Errorf("%d localhost rules, want 3 (nodeport, lb, lb-nolocal; not lb-empty)", n)
			}
			if i := strings.Index(got, "127.0.0.0/8 --dport 30080"); i >= 0 && i > strings.Index(got, `"ns/nodeport" -m tcp -p tcp --dport 30080`) {
				t.Errorf("the localhost rule follows the NodePort rule")
			}
		})
	}
}

func TestHasNFAcctMatch(t *testing.T) {
	dir := t.TempDir()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldMatches, oldModules := matchesPath, modulesDir
	t.Cleanup(func() { matchesPath, modulesDir = oldMatches, oldModules })
	for _, tc := range []struct {
		name, matches, dep string
		want               bool
	}{
		{"registered", "conntrack\nnfacct\nnfacct\ncomment\n", "", true},
		{"module to load", "conntrack\ncomment\n", "kernel/net/netfilter/xt_nfacct.ko: kernel/net/netfilter/nfnetlink_acct.ko\n", true},
		{"neither", "conntrack\nnfacctx\n", "kernel/net/netfilter/xt_conntrack.ko:\n", false},
		{"nothing readable", "", "", false},
	} {
		sub := strings.ReplaceAll(tc.name, " ", "-")
		matchesPath = map[proxier.IPFamily]string{proxier.IPv4: filepath.Join(dir, sub, "missing")}
		if tc.matches != "" {
			matchesPath[proxier.IPv4] = write(filepath.Join(sub, "matches"), tc.matches)
		}
		modulesDir = filepath.Join(dir, sub, "modules")
		if tc.dep != "" {
			write(filepath.Join(sub, "modules", release, "modules.dep"), tc.dep)
		}
		if got := hasNFAcctMatch(proxier.IPv4); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestKernelApplyNFAcct: the kernel takes the rules with the counters
// once the objects exist (and the restore fails without them, so the
// match is really in what is applied).
func TestKernelApplyNFAcct(t *testing.T) {
	ns := kernelNetns(t)
	run, bin := nsRunner(ns)
	ctx := context.Background()
	opt := Options{RandomFully: true, DropInvalid: true, NFAcct: NFAccts}
	if err := New(featureConfig(), opt, run).Sync(ctx, featureState()); err == nil {
		t.Fatal("the restore succeeded before the nfacct objects existed")
	}
	fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, err := nfnl.Dial(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range NFAccts {
		if err := c.EnsureAcct(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := New(featureConfig(), opt, run).Sync(ctx, featureState()); err != nil {
		t.Fatal(err)
	}
	// iptables-save writes two spaces after --nfacct-name.
	dump := strings.ReplaceAll(save(t, ns, bin), "--nfacct-name  ", "--nfacct-name ")
	for _, want := range []string{"--nfacct-name ct_state_invalid_dropped_pkts -j DROP", "--nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-"} {
		if !strings.Contains(dump, want) {
			t.Errorf("kernel ruleset lacks %q:\n%s", want, dump)
		}
	}
}

// TestNFAcctMetricNames: every object the rules feed has its metric.
func TestNFAcctMetricNames(t *testing.T) {
	want := map[string]string{
		NFAcctInvalidDropped:     "kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
		NFAcctLocalhostNodePorts: "kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
	}
	for _, o := range NFAccts {
		if got := proxier.NFAcctMetricName(o); got != want[o] {
			t.Errorf("metric of %s: %q, want %q", o, got, want[o])
		}
	}
	if len(NFAccts) != len(want) {
		t.Errorf("NFAccts = %v", NFAccts)
	}
}
