package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
)

// scaleState has n ClusterIP services of two endpoints each, every tenth
// one also a NodePort.
func scaleState(n int) *proxier.State {
	st := &proxier.State{Family: proxier.IPv4, NodeName: "node-1"}
	for i := 0; i < n; i++ {
		cip := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
		s := svc("scale", fmt.Sprintf("s%d", i), "", proxier.TCP, cip.String(), 80,
			ep(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).String(), 8080, true),
			ep(netip.AddrFrom4([4]byte{10, 245, byte(i >> 8), byte(i)}).String(), 8080, true))
		if i%10 == 0 {
			s.NodePort = int32(30000 + i/10)
		}
		st.Services = append(st.Services, s)
	}
	return st
}

// TestKernelCheckCostAtScale measures Check with 10,000 services in both
// iptables backends. It takes a while, so it runs only with
// SVCPROXY_KERNEL_SCALE=1.
func TestKernelCheckCostAtScale(t *testing.T) {
	if os.Getenv("SVCPROXY_KERNEL_SCALE") == "" {
		t.Skip("set SVCPROXY_KERNEL_SCALE=1 to measure Check with 10,000 services")
	}
	n := 10000
	if v := os.Getenv("SVCPROXY_KERNEL_SCALE_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	modes := []string{"nft", "legacy"}
	if v := os.Getenv("SVCPROXY_KERNEL_SCALE_MODE"); v != "" {
		modes = []string{v}
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			ns := kernelNetns(t)
			run, bin := modeRunner(t, ns, mode)
			ctx := context.Background()
			p := New(testConfig(), Options{}, run)
			start := time.Now()
			if err := p.Sync(ctx, scaleState(n)); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: first sync of 10,000 services: %v", mode, time.Since(start))
			for _, chain := range []string{"KUBE-SERVICES", "KUBE-POSTROUTING"} {
				start := time.Now()
				rules, _, err := run.Rules(ctx, NAT, chain)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: for comparison, iptables -S %s (%d rules): %v", mode, chain, len(rules), time.Since(start))
			}
			check := func(what string, wantMissing bool) {
				t.Helper()
				start := time.Now()
				missing, err := p.Check(ctx)
				if err != nil || (missing != "") != wantMissing {
					t.Fatalf("%s: Check = %q, %v", what, missing, err)
				}
				t.Logf("%s: Check %s with 10,000 services: %v %s", mode, what, time.Since(start), missing)
			}
			for _, table := range []string{Filter, NAT} {
				start := time.Now()
				r, _, err := p.probe.read(table, nil)
				t.Logf("%s: probe read of %s: %d chains, %v (err %v)", mode, table, len(r.counts), time.Since(start), err)
			}
			check("first (deep) after the full sync", false)
			for i := 0; i < 3; i++ {
				check("idle", false)
			}
			st := scaleState(n)
			st.Services[5].Endpoints = st.Services[5].Endpoints[:1]
			start = time.Now()
			if err := p.Sync(ctx, st); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: partial sync (one endpoint gone): %v", mode, time.Since(start))
			check("after our partial sync", false)
			svcChain := ServiceChainName(st.Services[7])
			for _, alter := range [][]string{{"-F", "KUBE-SERVICES"}, {"-F", svcChain}} {
				if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin.Command, "-t", "nat"}, alter...)...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				check(fmt.Sprint("after ", alter), true)
				p.ForceFullSync()
				start := time.Now()
				if err := p.Sync(ctx, st); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: repair (full sync): %v", mode, time.Since(start))
				check("after repair", false)
			}
		})
	}
}
