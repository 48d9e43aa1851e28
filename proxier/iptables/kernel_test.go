package iptables

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// kernelNetns creates a network namespace with a unique name for this test
// and removes it when the test ends. Kernel tests need root; they never touch
// the host namespace.
func kernelNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create a network namespace (run make test as root)")
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := "svpk-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	return ns
}

func nsRunner(ns string) (Runner, Binaries) {
	bin := Detect(context.Background(), proxier.IPv4)
	return netnsRunner(bin, ns), bin
}

// netnsRunner runs bin's commands in network namespace ns.
func netnsRunner(bin Binaries, ns string) execRunner {
	return execRunner{bin: bin, wrap: []string{"ip", "netns", "exec", ns}, netns: ns}
}

func save(t *testing.T, ns string, bin Binaries) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, bin.Save).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	return string(out)
}

func TestKernelApply(t *testing.T) {
	ns := kernelNetns(t)
	run, bin := nsRunner(ns)
	ctx := context.Background()
	opt := Options{RandomFully: true, DropInvalid: true}

	p := New(testConfig(), opt, run)
	st := testState()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	if !p.LastResult().Full {
		t.Errorf("first sync was not a full sync")
	}
	dump := save(t, ns, bin)
	for _, want := range []string{
		"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
		"--to-destination 10.244.1.4:8080",
		"-j REJECT",
		"--probability 0.33333333",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("kernel ruleset lacks %q:\n%s", want, dump)
		}
	}

	// A sync with nothing changed sends nothing.
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Bytes != 0 || r.Full {
		t.Errorf("no-op sync wrote %d bytes (full=%v), want 0", r.Bytes, r.Full)
	}

	// Remove an endpoint: the partial sync rewrites the service chain and
	// deletes the endpoint's chain.
	web := *st.Services[1]
	web.Endpoints = web.Endpoints[:1]
	st2 := *st
	st2.Services = append([]*proxier.Service(nil), st.Services...)
	st2.Services[1] = &web
	gone := EndpointChainName(&web, st.Services[1].Endpoints[2])
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatalf("partial sync: %v", err)
	}
	if r := p.LastResult(); r.Full || r.ChainsDeleted != 2 {
		t.Errorf("partial sync result %+v, want partial with 2 chains deleted", r)
	}
	dump = save(t, ns, bin)
	if strings.Contains(dump, gone) {
		t.Errorf("stale chain %s still in kernel", gone)
	}

	// A restart: a new proxier adopts the kernel state; jump rules are not
	// duplicated and chains left by the old process that are stale go away.
	p2 := New(testConfig(), opt, run)
	if err := p2.Sync(ctx, st); err != nil {
		t.Fatalf("restart sync: %v", err)
	}
	if err := p2.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	p3 := New(testConfig(), opt, run)
	if err := p3.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	dump = save(t, ns, bin)
	if n := strings.Count(dump, "-j KUBE-SERVICES"); n != 4 {
		t.Errorf("got %d jumps to KUBE-SERVICES, want 4 (nat PREROUTING/OUTPUT, filter FORWARD/OUTPUT):\n%s", n, dump)
	}
	if strings.Contains(dump, gone) {
		t.Errorf("stale chain %s survived a restart", gone)
	}

	// Duplicated jump rules (another agent re-added one) are removed on a
	// full sync.
	if out, err := exec.Command("ip", "netns", "exec", ns, bin.Command, "-t", "nat", "-A", "PREROUTING",
		"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	p3.ForceFullSync()
	if err := p3.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(save(t, ns, bin), "-j KUBE-SERVICES"); n != 4 {
		t.Errorf("after duplicate: %d jumps to KUBE-SERVICES, want 4", n)
	}
}

func TestKernelIPv6(t *testing.T) {
	ns := kernelNetns(t)
	bin := Detect(context.Background(), proxier.IPv6)
	run := netnsRunner(bin, ns)
	cfg := proxier.Config{Family: proxier.IPv6, MasqueradeBit: 14, LocalDetector: proxier.LocalDetector{
		Mode: proxier.LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10::/64")}}}
	st := &proxier.State{Family: proxier.IPv6, Services: []*proxier.Service{
		svc("ns", "v6", "", proxier.TCP, "fd00:96::10", 80, ep("fd00:10::2", 8080, true), ep("fd00:10::3", 8080, true)),
		svc("ns", "v6-empty", "", proxier.UDP, "fd00:96::11", 53),
	}}
	if err := New(cfg, Options{}, run).Sync(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	dump := save(t, ns, bin)
	if !strings.Contains(dump, "--to-destination [fd00:10::3]:8080") {
		t.Errorf("IPv6 DNAT missing:\n%s", dump)
	}
}

func TestKernelCleanup(t *testing.T) {
	ns := kernelNetns(t)
	run, bin := nsRunner(ns)
	ctx := context.Background()
	// A foreign rule and chain that must survive.
	for _, args := range [][]string{{"-t", "nat", "-N", "OTHER"}, {"-t", "nat", "-A", "PREROUTING", "-j", "OTHER"}, {"-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"}} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin.Command}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if err := New(featureConfig(), Options{}, run).Sync(ctx, featureState()); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(ctx, run); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	dump := save(t, ns, bin)
	for _, gone := range []string{"KUBE-SERVICES", "KUBE-SVC-", "KUBE-SEP-", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-FORWARD", "KUBE-EXT-", "KUBE-FW-"} {
		if strings.Contains(dump, gone) {
			t.Errorf("%s left after cleanup:\n%s", gone, dump)
		}
	}
	for _, kept := range []string{"-A PREROUTING -j OTHER", "--dport 22 -j ACCEPT"} {
		if !strings.Contains(dump, kept) {
			t.Errorf("cleanup removed a foreign rule %q", kept)
		}
	}
	// Idempotent.
	if err := Cleanup(ctx, run); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

// modeRunner runs mode's (nft or legacy) iptables in ns; it skips t where
// that is not installed.
func modeRunner(t *testing.T, ns, mode string) (execRunner, Binaries) {
	t.Helper()
	return commandRunner(t, ns, "iptables-"+mode, mode)
}

// commandRunner runs command (iptables-nft, ip6tables-legacy, ...), of
// mode, with its -save and -restore, in ns; it skips t where command's
// restore is not installed.
func commandRunner(t *testing.T, ns, command, mode string) (execRunner, Binaries) {
	t.Helper()
	bin := Binaries{Mode: mode, Save: command + "-save", Restore: command + "-restore", Command: command}
	if _, err := exec.LookPath(bin.Restore); err != nil {
		t.Skip(err)
	}
	return netnsRunner(bin, ns), bin
}

func TestKernelCheckDetectsFlushes(t *testing.T) {
	st := featureState()
	np := st.Services[4]
	svcChain, sepChain := ServiceChainName(np), EndpointChainName(np, np.Endpoints[0])
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			ns := kernelNetns(t)
			run, bin := modeRunner(t, ns, mode)
			ctx := context.Background()
			ipt := func(args ...string) {
				t.Helper()
				if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin.Command}, args...)...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %v: %s", args, err, out)
				}
			}
			for _, tc := range []struct {
				name  string
				alter func()
			}{
				{"flush nat", func() { ipt("-t", "nat", "-F") }},
				{"flush filter", func() { ipt("-t", "filter", "-F") }},
				{"delete a jump", func() {
					ipt("-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES")
				}},
				{"flush KUBE-POSTROUTING", func() { ipt("-t", "nat", "-F", "KUBE-POSTROUTING") }},
				{"flush nat KUBE-SERVICES", func() { ipt("-t", "nat", "-F", "KUBE-SERVICES") }},
				{"flush nat KUBE-NODEPORTS", func() { ipt("-t", "nat", "-F", "KUBE-NODEPORTS") }},
				{"flush filter KUBE-EXTERNAL-SERVICES", func() { ipt("-t", "filter", "-F", "KUBE-EXTERNAL-SERVICES") }},
				{"flush filter KUBE-PROXY-FIREWALL", func() { ipt("-t", "filter", "-F", "KUBE-PROXY-FIREWALL") }},
				{"delete one rule of nat KUBE-SERVICES", func() { ipt("-t", "nat", "-D", "KUBE-SERVICES", "2") }},
				{"flush a KUBE-SVC chain", func() { ipt("-t", "nat", "-F", svcChain) }},
				{"flush a KUBE-SEP chain", func() { ipt("-t", "nat", "-F", sepChain) }},
				{"delete one rule of a KUBE-SVC chain", func() { ipt("-t", "nat", "-D", svcChain, "1") }},
				{"nft flush ruleset", func() {
					if out, err := exec.Command("ip", "netns", "exec", ns, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
						t.Fatalf("%v: %s", err, out)
					}
				}},
			} {
				if tc.name == "nft flush ruleset" && bin.Mode != "nft" {
					continue // does not apply to the legacy backend
				}
				t.Run(tc.name, func(t *testing.T) {
					p := New(featureConfig(), Options{}, run)
					if p.probe == nil {
						t.Fatalf("no probe for %s", mode)
					}
					if err := p.Sync(ctx, featureState()); err != nil {
						t.Fatal(err)
					}
					for i := 0; i < 2; i++ {
						if missing, err := p.Check(ctx); err != nil || missing != "" {
							t.Fatalf("intact rules: Check = %q, %v", missing, err)
						}
					}
					if p.checksDeep != 1 || p.checksIdle != 1 {
						t.Errorf("intact rules: %d deep and %d idle checks, want 1 and 1", p.checksDeep, p.checksIdle)
					}
					tc.alter()
					p.serviceReadAt = time.Time{} // no wait for the per-service read (serviceReadShare)
					missing, err := p.Check(ctx)
					if err != nil || missing == "" {
						t.Fatalf("after %s: Check = %q, %v; want something missing", tc.name, missing, err)
					}
					t.Logf("after %s: %s", tc.name, missing)
					// The repair: a forced full sync restores everything.
					p.ForceFullSync()
					if err := p.Sync(ctx, featureState()); err != nil {
						t.Fatal(err)
					}
					if missing, err := p.Check(ctx); err != nil || missing != "" {
						t.Fatalf("after repair: Check = %q, %v", missing, err)
					}
					if !strings.Contains(save(t, ns, bin), "--to-destination 10.244.1.4:8080") {
						t.Errorf("service rules not restored")
					}
				})
			}

			// Foreign changes that leave our rules alone cost one deep
			// check and no repair; our own partial syncs cost none.
			t.Run("foreign change and partial sync", func(t *testing.T) {
				p := New(featureConfig(), Options{}, run)
				if err := p.Sync(ctx, featureState()); err != nil {
					t.Fatal(err)
				}
				check := func(what string) {
					t.Helper()
					if missing, err := p.Check(ctx); err != nil || missing != "" {
						t.Fatalf("%s: Check = %q, %v", what, missing, err)
					}
				}
				check("after full sync")
				ipt("-t", "nat", "-N", "OTHER")
				ipt("-t", "nat", "-A", "OTHER", "-j", "RETURN")
				ipt("-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
				check("after foreign rules")
				deep := p.checksDeep
				st2 := featureState()
				st2.Services = st2.Services[1:] // drop one service: a partial sync
				if err := p.Sync(ctx, st2); err != nil {
					t.Fatal(err)
				}
				if p.LastResult().Full {
					t.Fatal("sync was full, want partial")
				}
				check("after partial sync")
				check("idle")
				if p.checksDeep != deep {
					t.Errorf("partial sync of ours caused %d deep checks, want 0", p.checksDeep-deep)
				}
				ipt("-t", "nat", "-F", "KUBE-NODEPORTS")
				if missing, err := p.Check(ctx); err != nil || missing == "" {
					t.Fatalf("after flush following a partial sync: Check = %q, %v", missing, err)
				}
			})
		})
	}
}

// TestKernelCheckIPv6: the probes read the ip6 tables (ip6tables-nft's ip6
// family, ip6tables-legacy's IPv6 blobs).
func TestKernelCheckIPv6(t *testing.T) {
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			ns := kernelNetns(t)
			run, bin := commandRunner(t, ns, "ip6tables-"+mode, mode)
			cfg := proxier.Config{Family: proxier.IPv6, MasqueradeBit: 14, LocalDetector: proxier.LocalDetector{
				Mode: proxier.LocalClusterCIDR, CIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:10::/64")}}}
			st := &proxier.State{Family: proxier.IPv6, Services: []*proxier.Service{
				svc("ns", "v6", "", proxier.TCP, "fd00:96::10", 80, ep("fd00:10::2", 8080, true), ep("fd00:10::3", 8080, true)),
			}}
			ctx := context.Background()
			p := New(cfg, Options{}, run)
			if err := p.Sync(ctx, st); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				if missing, err := p.Check(ctx); err != nil || missing != "" {
					t.Fatalf("intact rules: Check = %q, %v", missing, err)
				}
			}
			if p.checksIdle != 1 {
				t.Errorf("%d idle checks, want 1", p.checksIdle)
			}
			for _, chain := range []string{"KUBE-SERVICES", ServiceChainName(st.Services[0])} {
				if out, err := exec.Command("ip", "netns", "exec", ns, bin.Command, "-t", "nat", "-F", chain).CombinedOutput(); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				p.serviceReadAt = time.Time{}
				if missing, err := p.Check(ctx); err != nil || missing == "" {
					t.Fatalf("after flushing %s: Check = %q, %v", chain, missing, err)
				}
				p.ForceFullSync()
				if err := p.Sync(ctx, st); err != nil {
					t.Fatal(err)
				}
				if missing, err := p.Check(ctx); err != nil || missing != "" {
					t.Fatalf("after repair: Check = %q, %v", missing, err)
				}
			}
		})
	}
}

// TestKernelCheckServiceReadShare: while someone keeps changing the
// ruleset, per-service chains are read at most every serviceReadShare× the
// cost of a read; the stamp is not taken as good in between, so damage to a
// service chain is still found by a later tick.
func TestKernelCheckServiceReadShare(t *testing.T) {
	ns := kernelNetns(t)
	run, bin := nsRunner(ns)
	ctx := context.Background()
	p := New(featureConfig(), Options{}, run)
	if p.probe == nil {
		t.Skip("no probe for this backend")
	}
	if err := p.Sync(ctx, featureState()); err != nil {
		t.Fatal(err)
	}
	if missing, err := p.Check(ctx); err != nil || missing != "" {
		t.Fatalf("Check = %q, %v", missing, err)
	}
	now, good := p.serviceReadAt, p.goodStamp
	p.now = func() time.Time { return now }
	p.serviceReadCost = time.Second
	np := featureState().Services[4]
	if out, err := exec.Command("ip", "netns", "exec", ns, bin.Command, "-t", "nat", "-F", ServiceChainName(np)).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	now = now.Add(5 * time.Second) // within 10 × 1s of the last read
	if missing, err := p.Check(ctx); err != nil || missing != "" {
		t.Fatalf("within the wait: Check = %q, %v; want the per-service read skipped", missing, err)
	}
	if p.goodStamp != good {
		t.Errorf("new stamp taken as good without reading the per-service chains")
	}
	now = now.Add(6 * time.Second)
	if missing, err := p.Check(ctx); err != nil || missing == "" {
		t.Fatalf("after the wait: Check = %q, %v; want the flushed service chain", missing, err)
	}
}
