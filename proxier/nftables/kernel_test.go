package nftables

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl/nfnltest"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// enterNetns creates a network namespace with a unique name for this test
// and moves the test's goroutine, locked to its OS thread, into it: nft,
// sockets and netlink calls made from the test then act only there. The
// thread is never unlocked, so Go discards it when the test ends; the
// namespace is deleted at cleanup. It returns the namespace's name and an
// fd for it.
func enterNetns(t *testing.T) (string, int) {
	t.Helper()
	ns, fd := nfnltest.Netns(t, "svpn-")
	runtime.LockOSThread()
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns: %v", err)
	}
	return ns, fd
}

func sh(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// kernelProxier is a Proxier as svcproxy makes one, with its sockets in
// the namespace fd, whose full syncs do not carry session affinity.
func kernelProxier(t testing.TB, fd int, cfg proxier.Config) (*Proxier, knftables.Interface) {
	t.Helper()
	p, err := newKernel(cfg, fd)
	if err != nil {
		t.Fatal(err)
	}
	p.w.readAffinity = nil
	return p, p.w.nft
}

// content is the table's rules and elements, sorted, as knftables lists them.
func content(t testing.TB, nft knftables.Interface) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	chains, err := nft.List(ctx, "chains")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chains {
		rules, err := nft.ListRules(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			out = append(out, "rule "+c+" "+r.Rule)
		}
		if len(rules) == 0 {
			out = append(out, "chain "+c)
		}
	}
	for _, typ := range []string{"set", "map"} {
		names, err := nft.List(ctx, typ)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			elems, err := nft.ListElements(ctx, typ, n)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, typ+" "+n)
			for _, e := range elems {
				out = append(out, fmt.Sprintf("element %s %v : %v", n, e.Key, e.Value))
			}
		}
	}
	slices.Sort(out)
	return out
}

// syncedKernel is a kernelProxier in a new namespace after a first sync of
// testState, with the flag's service CIDR 10.96.0.0/16.
func syncedKernel(t *testing.T) (int, *Proxier, knftables.Interface, *proxier.State) {
	t.Helper()
	_, fd := enterNetns(t)
	p, nft := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	st := testState()
	if err := p.Sync(context.Background(), st); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	return fd, p, nft, st
}

// mustContain reports, as an error each, the wants text lacks; what names
// the text.
func mustContain(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

func TestKernelNftables(t *testing.T) {
	fd, p, nft, st := syncedKernel(t)
	ctx := context.Background()
	if !p.LastResult().Full {
		t.Errorf("first sync was not full")
	}
	if what, err := p.guard.Check(ctx); err != nil || what != "" {
		t.Fatalf("check after sync: %q, %v", what, err)
	}

	// An endpoint change goes as a small partial transaction, and leaves
	// the same table a full sync of the new state makes.
	web := *st.Services[3]
	web.Endpoints = append(web.Endpoints[:1:1], pt.Endpoint("10.244.2.9", 8080))
	st2 := *st
	st2.Services = slices.Clone(st.Services)
	st2.Services[3] = &web
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatalf("partial sync: %v", err)
	}
	if r := p.LastResult(); r.Full || r.Operations > 10 {
		t.Errorf("partial sync: %+v", r)
	}
	// A new endpoint count needs a new lb chain, added in a partial sync.
	web4 := web
	web4.Endpoints = append(slices.Clone(web.Endpoints), pt.Endpoint("10.244.2.10", 8080), pt.Endpoint("10.244.2.11", 8080))
	st4 := st2
	st4.Services = slices.Clone(st2.Services)
	st4.Services[3] = &web4
	if err := p.Sync(ctx, &st4); err != nil {
		t.Fatalf("partial sync adding lb-ip-4: %v", err)
	}
	if r := p.LastResult(); r.Full || r.Operations == 0 {
		t.Errorf("partial sync with a new lb chain: %+v", r)
	}
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatalf("partial sync back to two endpoints: %v", err)
	}
	// A NodePort Service with an external IP and externalTrafficPolicy
	// Local arrives, and then one goes: element-only partial syncs, which
	// go over netlink, touching most kinds of set and map.
	np := pt.Service("ns/np", proxier.TCP, "10.96.0.9", 8080, pt.NodePort(30999), pt.ExternalLocal, pt.ExternalIPs("203.0.113.99"),
		pt.Endpoints(pt.Endpoint("10.244.1.7", 80, pt.Local), pt.Endpoint("10.244.2.7", 80)))
	without := st2
	st2.Services = append(slices.Clone(st2.Services), np)
	for _, s := range []*proxier.State{&st2, &without, &st2} {
		if err := p.Sync(ctx, s); err != nil {
			t.Fatalf("partial sync of the NodePort service: %v", err)
		}
		if r := p.LastResult(); r.Full {
			t.Errorf("NodePort service change caused a full sync: %+v", r)
		}
	}
	if p.w.batch.batches < 3 {
		t.Errorf("%d element-only syncs went over netlink, want >= 3", p.w.batch.batches)
	}
	incremental := content(t, nft)
	p2, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	if err := p2.Sync(ctx, &st2); err != nil {
		t.Fatalf("full sync: %v", err)
	}
	if full := content(t, nft); !slices.Equal(incremental, full) {
		t.Errorf("partial sync left a different table than a full sync:\nincremental:\n%s\nfull:\n%s",
			strings.Join(incremental, "\n"), strings.Join(full, "\n"))
	}

	// Damage is noticed, and a forced full sync repairs it.
	for _, damage := range [][]string{
		{"nft", "flush", "chain", "ip", TableName, chServices},
		{"nft", "flush", "chain", "ip", TableName, "lb-ip-tcp-2"},
		{"nft", "delete", "table", "ip", TableName},
		{"nft", "flush", "ruleset"},
	} {
		sh(t, damage...)
		what, err := p.guard.Check(ctx)
		if err != nil || what == "" {
			t.Errorf("%s: check found nothing (%v)", strings.Join(damage, " "), err)
		}
		p.ForceFullSync()
		if err := p.Sync(ctx, &st2); err != nil {
			t.Fatalf("repair after %s: %v", damage, err)
		}
		if what, err := p.guard.Check(ctx); err != nil || what != "" {
			t.Errorf("after repair of %s: %q, %v", damage, what, err)
		}
	}
}

// TestKernelNftablesTraffic sends real connections through a ClusterIP in
// the namespace (nat output hook): they spread over the three endpoints,
// and a service without endpoints is rejected at once.
func TestKernelNftablesTraffic(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	sh(t, "ip", "link", "set", "lo", "up")
	sh(t, "ip", "link", "add", "pods", "type", "veth", "peer", "name", "pods-peer")
	sh(t, "ip", "link", "set", "pods", "up")
	sh(t, "ip", "link", "set", "pods-peer", "up")
	sh(t, "ip", "route", "add", "10.96.0.0/16", "dev", "pods")
	eps := []string{"10.244.1.2", "10.244.1.3", "10.244.1.4"}
	for _, ip := range eps {
		sh(t, "ip", "addr", "add", ip+"/32", "dev", "pods")
		l, err := net.Listen("tcp", ip+":8080")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", l.Addr(), c.RemoteAddr())
				c.Close()
			}
		}()
	}
	udp, err := net.ListenPacket("udp", "10.244.1.2:5353")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	go func() {
		buf := make([]byte, 100)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(buf[:n], from)
		}
	}()
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	var web []proxier.Endpoint
	for _, ip := range eps {
		web = append(web, pt.Endpoint(ip, 8080, pt.Local))
	}
	st := pt.State(proxier.IPv4,
		pt.Service("ns/web", proxier.TCP, "10.96.0.1", 80, pt.Endpoints(web...)),
		pt.Service("ns/empty", proxier.TCP, "10.96.0.2", 80),
		pt.Service("ns/dns", proxier.UDP, "10.96.0.3", 53, pt.Endpoints(pt.Endpoint("10.244.1.2", 5353, pt.Local))),
	)
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for i := 0; i < 60; i++ {
		c, err := net.DialTimeout("tcp", "10.96.0.1:80", 2*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("reply %q", line)
		}
		got[f[0]]++
	}
	for _, ip := range eps {
		if got[ip+":8080"] == 0 {
			t.Errorf("endpoint %s got no connection: %v", ip, got)
		}
	}
	if len(got) != len(eps) {
		t.Errorf("connections went to %v, want only %v", got, eps)
	}
	t.Logf("60 connections: %v", got)

	// UDP through the ClusterIP.
	uc, err := net.Dial("udp", "10.96.0.3:53")
	if err != nil {
		t.Fatal(err)
	}
	uc.SetDeadline(time.Now().Add(2 * time.Second))
	uc.Write([]byte("ping"))
	buf := make([]byte, 10)
	if n, err := uc.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Errorf("UDP through the ClusterIP: %q, %v", buf[:n], err)
	}
	uc.Close()

	start := time.Now()
	_, err = net.DialTimeout("tcp", "10.96.0.2:80", 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("service without endpoints: %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("rejection took %v", d)
	}
	// An unknown port of a ClusterIP is rejected too.
	if _, err := net.DialTimeout("tcp", "10.96.0.1:81", 2*time.Second); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("unknown port of a ClusterIP: %v, want connection refused", err)
	}
}

// BenchmarkKernelNftables10k measures, in a throwaway namespace, the cold
// full sync of 10,000 services × 10 endpoints (cold-ms) and then one
// endpoint change (b.N partial syncs).
//
//	go test -run XXX -bench KernelNftables10k -benchtime 50x ./proxier/nftables/
//
// Measured on the 2-core test machine (2026-12): the cold sync 0.6 s, a
// partial sync over netlink 2.2-2.6 ms, of which the Go side (diff of
// 10,000 Services, BenchmarkPartialSync10k) takes 0.8-1.2 ms; an nft
// process, which a partial sync of elements does without, about 5 ms.
// (Before the plan's copy of every Service port moved after the kernel
// write, 5.1-6.2 ms; the after-sync steps that read it are not timed.)
func BenchmarkKernelNftables10k(b *testing.B) {
	fd := benchNetns(b)
	ctx := context.Background()
	p, _ := kernelProxier(b, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	st := pt.ScaleState(10000)
	start := time.Now()
	if err := p.Sync(ctx, st); err != nil {
		b.Fatal(err)
	}
	cold := time.Since(start)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		changed := *st.Services[i%len(st.Services)]
		changed.Endpoints = slices.Clone(changed.Endpoints)
		changed.Endpoints[5] = pt.Endpoint(fmt.Sprintf("10.250.%d.%d", (i>>8)&255, i&255), 8080)
		st2 := *st
		st2.Services = slices.Clone(st.Services)
		st2.Services[i%len(st.Services)] = &changed
		if err := p.Sync(ctx, &st2); err != nil {
			b.Fatal(err)
		}
		if p.LastResult().Full {
			b.Fatal("full sync")
		}
		st = &st2
	}
	b.StopTimer()
	b.ReportMetric(float64(cold.Milliseconds()), "cold-ms")
}

// TestKernelCleanup: --cleanup-kube-proxy removes kube-proxy's tables and
// leaves ours; --cleanup removes ours.
func TestKernelCleanup(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	sh(t, "nft", "add table ip kube-proxy; add chain ip kube-proxy services; add table ip6 kube-proxy; add table ip other")
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP)))
	if err := p.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	if err := CleanupKubeProxy(ctx); err != nil {
		t.Fatalf("CleanupKubeProxy: %v", err)
	}
	tables := sh(t, "nft", "list", "tables")
	if strings.Contains(tables, "kube-proxy") || !strings.Contains(tables, "table ip svcproxy") || !strings.Contains(tables, "table ip other") {
		t.Errorf("after CleanupKubeProxy: %q, want svcproxy and other only", tables)
	}
	if err := Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if err := Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup twice: %v", err)
	}
	if tables := sh(t, "nft", "list", "tables"); strings.TrimSpace(tables) != "table ip other" {
		t.Errorf("after Cleanup: %q, want only the unrelated table", tables)
	}
}
