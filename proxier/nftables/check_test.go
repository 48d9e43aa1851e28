package nftables

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nftables/guard"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestFakeCheck: the tick stops at the generation while nothing changed,
// and reads the shape once after a foreign change.
func TestFakeCheck(t *testing.T) {
	ctx := context.Background()
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), nft)
	p.guard = guard.New(guard.Config{Family: proxier.IPv4, Table: TableName, Reader: &fakeReader{fake: nft}})
	p.w.guard = p.guard
	if err := p.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if what, err := p.guard.Check(ctx); err != nil || what != "" {
			t.Fatalf("check after sync: %q, %v", what, err)
		}
	}
	if s := p.guard.Stats(); s.ShapeReads != 0 || s.IdleChecks != 3 {
		t.Errorf("after our own sync: %d shape reads, %d idle ticks; want 0 and 3", s.ShapeReads, s.IdleChecks)
	}
	// Someone deletes an element: the shape is whole (the notifications
	// catch this), read once.
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Element{Map: mServiceIPs, Key: []string{"10.96.0.1", "tcp", "80"}})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if what, err := p.guard.Check(ctx); err != nil || what != "" || p.guard.Stats().ShapeReads != 1 {
			t.Fatalf("tick %d after a deleted element: %q, %v, %d shape reads; want one", i, what, err, p.guard.Stats().ShapeReads)
		}
	}
	tx = nft.NewTransaction()
	tx.Flush(&knftables.Chain{Name: chServices})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if what, err := p.guard.Check(ctx); err != nil || !strings.Contains(what, chServices) {
		t.Errorf("check after a flushed chain: %q, %v; want %s named", what, err, chServices)
	}
}

// TestKernelEvents: in a namespace, the notifications show others'
// element-level damage — a flushed map, a deleted element — and others'
// changes elsewhere are left alone, and so are our own syncs (nft -f, the
// cold load, netlink batches, nft partial syncs).
func TestKernelEvents(t *testing.T) {
	_, fd := enterNetns(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP)))
	repairs := kernelWatch(t, p, fd)
	none := noRepair(t, repairs)
	// A cold load without elements for netlink (one transaction).
	if err := p.Sync(ctx, pt.State(proxier.IPv4)); err != nil {
		t.Fatal(err)
	}
	none("a cold load without elements")
	// A partial sync, a full sync replacing the table.
	st := testState()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	p.ForceFullSync()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	np := pt.Service("ns/np", proxier.TCP, "10.96.0.9", 8080, pt.NodePort(30999), pt.ExternalLocal, pt.ExternalIPs("203.0.113.99"),
		pt.Endpoints(pt.Endpoint("10.244.1.7", 80, pt.Local), pt.Endpoint("10.244.2.7", 80)))
	st2 := *st
	st2.Services = append(st2.Services[:len(st2.Services):len(st2.Services)], np)
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Full || p.w.batch.batches == 0 {
		t.Fatalf("want a partial sync over netlink: %+v, %d batches", r, p.w.batch.batches)
	}
	// Four endpoints: a new lb chain, a partial sync through nft.
	web := *st2.Services[3]
	web.Endpoints = append(web.Endpoints[:3:3], pt.Endpoint("10.244.2.10", 8080))
	st3 := st2
	st3.Services = append([]*proxier.Service(nil), st2.Services...)
	st3.Services[3] = &web
	batches := p.w.batch.batches
	if err := p.Sync(ctx, &st3); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Full || p.w.batch.batches != batches {
		t.Fatalf("want a partial sync through nft: %+v", r)
	}
	none("our own syncs")
	sh(t, "nft", "add table ip other; add chain ip other c; add rule ip other c counter; add table ip6 svcproxy; add chain ip6 svcproxy c")
	sh(t, "iptables-nft", "-w", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
	none("others' changes elsewhere")
	// Entries of an affinity set come and go with the traffic and
	// forgetAffinity; they are no damage.
	aff := affinitySet(proxier.UDP, 600)
	sh(t, "nft", "add element ip svcproxy "+aff+" { 10.244.9.9 . 10.96.0.4 . 53 . 10.244.1.5 . 53 }")
	sh(t, "nft", "delete element ip svcproxy "+aff+" { 10.244.9.9 . 10.96.0.4 . 53 . 10.244.1.5 . 53 }")
	none("changes to " + aff)

	// Narrow damage is repaired by rewriting what it names, over a
	// partial sync; the rest by a full sync. Either way the table is
	// what it was.
	want := content(t, p.w.nft)
	lb := ""
	for c := range p.last.idx.lbChains {
		lb = c
	}
	for _, c := range []struct {
		damage string
		full   bool
	}{
		{"flush map ip svcproxy service-ips", false},
		{"delete element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 }", false},
		{"delete element ip svcproxy cluster-ips { 10.96.0.2 }", false},
		{"flush map ip svcproxy endpoints-ip-tcp", false},
		{"flush set ip svcproxy firewall-allow", false},
		{"flush chain ip svcproxy services", false},
		{"flush chain ip svcproxy " + lb, false},
		{"add rule ip svcproxy services accept", false},
		// A value changed: the map is flushed and refilled.
		{"delete element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 }; add element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 : drop }", false},
		{"add element ip svcproxy cluster-ips { 10.96.0.200 }", false},
		// Two objects in two transactions before the sync.
		{"flush map ip svcproxy service-ips\nflush chain ip svcproxy services", false},
		{"add chain ip svcproxy extra", true},
		{"delete table ip svcproxy", true},
		{"flush ruleset", true},
	} {
		start := time.Now()
		txs := strings.Split(c.damage, "\n")
		for _, tx := range txs {
			sh(t, "nft", tx)
		}
		for range txs {
			select {
			case what := <-repairs:
				t.Logf("%s: noticed after %v: %s", c.damage, time.Since(start).Round(time.Microsecond), what)
			case <-time.After(time.Second):
				t.Errorf("%s: not noticed within 1s", c.damage)
			}
		}
		if err := p.Sync(ctx, &st3); err != nil {
			t.Fatalf("repair after %s: %v", c.damage, err)
		}
		if r := p.LastResult(); r.Full != c.full {
			t.Errorf("%s: repaired by a full sync %v, want %v", c.damage, r.Full, c.full)
		}
		if d := diffLines(content(t, p.w.nft), want); d != "" {
			t.Errorf("after repairing %s:\n%s", c.damage, d)
		}
		none("our repair of " + c.damage)
	}
	// A transaction of someone else's while a bulk write of ours has left
	// the group goes unheard, and is found when it rejoins.
	foreignWhileMuted(t, p, "flush chain ip svcproxy services", none)
	select {
	case what := <-repairs:
		if !strings.Contains(what, "may not be ours") {
			t.Errorf("after a foreign transaction while muted: repair %q", what)
		}
	case <-time.After(time.Second):
		t.Error("a foreign transaction while muted: not repaired")
	}
	if err := p.Sync(ctx, &st3); err != nil {
		t.Fatal(err)
	}
	if d := diffLines(content(t, p.w.nft), want); d != "" {
		t.Errorf("after repairing a change made while muted:\n%s", d)
	}
	none("our repair of a change made while muted")
	if n := p.guard.Stats().Overflows; n != 0 {
		t.Errorf("%d overflows", n)
	}
}

// kernelWatch runs p's notification watcher on the namespace fd until
// the test ends and returns the repairs it asks for.
func kernelWatch(tb testing.TB, p *Proxier, fd int) <-chan string {
	return watchKernel(tb, p, guard.Events{NetNS: fd})
}

// kernelWatchSentinel is kernelWatch with the sentinel, as Watch runs it.
func kernelWatchSentinel(tb testing.TB, p *Proxier, fd int) <-chan string {
	return watchKernel(tb, p, guard.Events{NetNS: fd, Sentinel: true})
}

func watchKernel(tb testing.TB, p *Proxier, ev guard.Events) <-chan string {
	ctx, cancel := context.WithCancel(context.Background())
	repairs := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		p.guard.Notify(ctx, ev, func(what, _ string) { repairs <- what })
		close(done)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	return repairs
}

// noRepair returns a check that repairs reports nothing for 300 ms.
func noRepair(t *testing.T, repairs <-chan string) func(what string) {
	return func(what string) {
		t.Helper()
		select {
		case got := <-repairs:
			t.Errorf("%s: repair %q, want none", what, got)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// foreignWhileMuted runs `nft cmd` while a bulk write of p's would have
// the watchers out of the notification group, and checks with none that
// nothing is heard meanwhile.
func foreignWhileMuted(t *testing.T, p *Proxier, cmd string, none func(string)) {
	t.Helper()
	unmute := p.guard.Mute(context.Background())
	if unmute == nil {
		t.Fatal("no watcher to mute")
	}
	sh(t, "nft", cmd)
	none("a foreign transaction while muted: " + cmd)
	unmute()
}

// TestKernelEventsOverflow: with a receive buffer too small for the
// notifications of a full sync, notifications are lost; when every
// transaction since the last one heard was ours nothing is repaired, and a
// foreign transaction whose notifications were lost is.
func TestKernelEventsOverflow(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP)))
	// The kernel's minimum buffer, a few KB; bulk writes not muted.
	repairs := watchKernel(t, p, guard.Events{NetNS: fd, Buffer: 1, Unmuted: true})
	st := pt.ScaleState(100)
	for i := 0; i < 3; i++ {
		if err := p.Sync(ctx, st); err != nil {
			t.Fatal(err)
		}
		p.ForceFullSync()
	}
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	select {
	case what := <-repairs:
		t.Errorf("our own full syncs: repair %q, want none", what)
	case <-time.After(300 * time.Millisecond):
	}
	lost := p.guard.Stats().Overflows
	if lost == 0 {
		t.Fatalf("no notifications lost; the test needs a smaller buffer or more elements")
	}
	// Someone adds 3000 ClusterIPs to ours in one transaction.
	var b strings.Builder
	b.WriteString("add element ip svcproxy cluster-ips { ")
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&b, "10.97.%d.%d, ", i>>8, i&255)
	}
	b.WriteString("10.98.0.1 }\n")
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	select {
	case what := <-repairs:
		t.Logf("foreign transaction: %s (%d overflows before, %d after)", what, lost, p.guard.Stats().Overflows)
	case <-time.After(time.Second):
		t.Errorf("foreign transaction not noticed within 1s")
	}
}

// benchNetns moves the benchmark's goroutine, locked to its OS thread, into
// a new anonymous network namespace, which goes away with the thread (never
// unlocked, so Go discards it when the benchmark's goroutine ends), and
// returns an fd for it.
func benchNetns(b *testing.B) int {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		b.Fatalf("unshare: %v", err)
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	return fd
}

// benchKernel10k makes a proxier as svcproxy does, with its sockets in the
// namespace fd, and syncs 10,000 Services × 10 endpoints into it.
func benchKernel10k(b *testing.B, fd int) (*Proxier, *proxier.State) {
	p, err := newKernel(pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")), fd)
	if err != nil {
		b.Fatal(err)
	}
	st := pt.ScaleState(10000)
	if err := p.Sync(context.Background(), st); err != nil {
		b.Fatal(err)
	}
	return p, st
}

// cpuTime is the CPU time this process and its waited-for children used.
func cpuTime() time.Duration {
	var self, kids unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &self)
	unix.Getrusage(unix.RUSAGE_CHILDREN, &kids)
	var d time.Duration
	for _, tv := range []unix.Timeval{self.Utime, self.Stime, kids.Utime, kids.Stime} {
		d += time.Duration(tv.Nano())
	}
	return d
}

// BenchmarkKernelCheck10k measures, in a throwaway namespace holding
// 10,000 services × 10 endpoints: one idle tick (the generation did not
// move: b.N of them, ns/op); one tick after a foreign change (it reads the
// shape: shape-ms, the mean of 10); full syncs (wall and CPU time, the
// mean of 3) without a subscriber to the notifications (full-ms,
// full-cpu-ms) and with the watcher subscribed (full-sub-ms,
// full-sub-cpu-ms), which must not call our own syncs foreign; and, for
// one Service's element deleted by nft, the times from the start of the
// command to its end (nft-delete-ms), to the watcher's verdict
// (detect-ms) and to the end of the repair (repaired-ms: the sync that
// rewrites the map named).
//
//	go test -run XXX -bench KernelCheck10k -benchtime 1000x ./proxier/nftables/
//
// Measured on the 2-core test machine (2026-12): an idle tick 70 µs, a
// shape read 1.4 ms, a full sync 0.46 s and 0.45 s of CPU, and 0.59 s and
// 0.48 s of CPU with the watcher subscribed (its bulk writes mute it; the
// kernel builds a notification per element for any subscriber), a
// deleted element detected in 9 ms and repaired in 42 ms.
func BenchmarkKernelCheck10k(b *testing.B) {
	fd := benchNetns(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, st := benchKernel10k(b, fd)
	elems := p.LastResult().Elements
	const fullRuns = 3
	full := func() (wall, cpu time.Duration) {
		for i := 0; i < fullRuns; i++ {
			p.ForceFullSync()
			c0, start := cpuTime(), time.Now()
			if err := p.Sync(ctx, st); err != nil {
				b.Fatal(err)
			}
			wall += time.Since(start)
			cpu += cpuTime() - c0
		}
		return wall / fullRuns, cpu / fullRuns
	}
	fullWall, fullCPU := full()
	repairs := kernelWatch(b, p, fd)
	time.Sleep(100 * time.Millisecond)
	subWall, subCPU := full()
	time.Sleep(500 * time.Millisecond)
	select {
	case what := <-repairs:
		b.Fatalf("our own full sync called foreign: %s", what)
	default:
	}
	// Someone deletes one Service's element: the time from the start of
	// the nft command to the watcher's verdict, and of the repair.
	start := time.Now()
	if out, err := exec.Command("nft", "delete", "element", "ip", TableName, mServiceIPs, "{ 10.96.0.1 . tcp . 80 }").CombinedOutput(); err != nil {
		b.Fatalf("nft: %v: %s", err, out)
	}
	nftTime := time.Since(start)
	select {
	case <-repairs:
	case <-time.After(10 * time.Second):
		b.Fatalf("deleted element not noticed")
	}
	detect := time.Since(start)
	// The sync the watcher asked for: it rewrites the damaged map only.
	if err := p.Sync(ctx, st); err != nil {
		b.Fatal(err)
	}
	repair := time.Since(start)
	if p.LastResult().Full {
		b.Fatal("one deleted element repaired by a full sync")
	}

	const shapeRuns = 10
	var shape time.Duration
	for i := 0; i < shapeRuns; i++ {
		if out, err := exec.Command("nft", "add", "table", "ip", fmt.Sprintf("other%d", i)).CombinedOutput(); err != nil {
			b.Fatalf("nft: %v: %s", err, out)
		}
		start := time.Now()
		what, err := p.guard.Check(ctx)
		shape += time.Since(start)
		if err != nil || what != "" {
			b.Fatalf("shape check: %q, %v", what, err)
		}
	}
	stats := p.guard.Stats()
	shapes, overflows := stats.ShapeReads, stats.Overflows
	if shapes != shapeRuns {
		b.Fatalf("%d shape reads, want %d", shapes, shapeRuns)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if what, err := p.guard.Check(ctx); err != nil || what != "" {
			b.Fatalf("idle check: %q, %v", what, err)
		}
	}
	b.StopTimer()
	if p.guard.Stats().ShapeReads != shapeRuns {
		b.Fatalf("idle checks read the table")
	}
	b.ReportMetric(float64(shape.Microseconds())/1000/shapeRuns, "shape-ms")
	b.ReportMetric(float64(fullWall.Milliseconds()), "full-ms")
	b.ReportMetric(float64(fullCPU.Milliseconds()), "full-cpu-ms")
	b.ReportMetric(float64(subWall.Milliseconds()), "full-sub-ms")
	b.ReportMetric(float64(subCPU.Milliseconds()), "full-sub-cpu-ms")
	b.ReportMetric(float64(overflows), "overflows")
	b.ReportMetric(float64(nftTime.Microseconds())/1000, "nft-delete-ms")
	b.ReportMetric(float64(detect.Microseconds())/1000, "detect-ms")
	b.ReportMetric(float64(repair.Milliseconds()), "repaired-ms")
	b.ReportMetric(float64(elems), "elements")
}

// TestKernelSharedListeners: the two families' proxiers of one namespace
// (Share) mute each other's watchers during bulk writes, since the kernel
// builds a notification per element while any socket listens, and neither
// calls the other's transactions in the muted gap foreign; a foreign
// transaction in the gap is found when the watchers rejoin.
func TestKernelSharedListeners(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	p4, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP)))
	p6, _ := kernelProxier(t, fd, pt.Config(pt.IPv6, pt.NodeIPs("fd00::2")))
	Share(p4, p6)
	st6 := pt.State(proxier.IPv6, pt.Service("ns/web6", proxier.TCP, "fd00:10:96::8", 80, pt.Endpoints(pt.Endpoint("fd00:10:244:1::6", 8080, pt.Local))))
	if err := p4.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	if err := p6.Sync(ctx, st6); err != nil {
		t.Fatal(err)
	}
	r4, r6 := kernelWatch(t, p4, fd), kernelWatch(t, p6, fd)
	none := func(what string) {
		t.Helper()
		select {
		case got := <-r4:
			t.Errorf("%s: IPv4 repair %q, want none", what, got)
		case got := <-r6:
			t.Errorf("%s: IPv6 repair %q, want none", what, got)
		case <-time.After(300 * time.Millisecond):
		}
	}
	none("the watchers' start")

	// An IPv4 full sync of 300 Services (3,000+ elements) mutes both
	// watchers; its two transactions are the IPv6 watcher's own too.
	p4.ForceFullSync()
	if err := p4.Sync(ctx, pt.ScaleState(300)); err != nil {
		t.Fatal(err)
	}
	none("an IPv4 full sync")

	// While IPv4 has the group muted, IPv6 does not hear a foreign flush
	// of its chain; it judges the gap when it rejoins.
	foreignWhileMuted(t, p4, "flush chain ip6 svcproxy services", none)
	// Neither watcher heard it, so neither knows which table it touched:
	// both rewrite.
	for fam, r := range map[string]<-chan string{"IPv4": r4, "IPv6": r6} {
		select {
		case what := <-r:
			if !strings.Contains(what, "may not be ours") {
				t.Errorf("%s repair %q, want a judgement of lost notifications", fam, what)
			}
		case <-time.After(time.Second):
			t.Errorf("%s: the unheard foreign transaction was never judged", fam)
		}
	}
	if err := p4.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	if err := p6.Sync(ctx, st6); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, "nft", "list", "chain", "ip6", TableName, "services"); !strings.Contains(out, "vmap @service-ips") {
		t.Errorf("IPv6 services chain not repaired:\n%s", out)
	}
}

// TestKernelSentinel: while someone's commit deletes many elements of our
// table, the sentinel takes the watchers out of the notification group
// (the kernel then builds no notification per element), and the gap is
// judged as lost notifications once the commit is over; our own syncs,
// full and partial, never set it off.
func TestKernelSentinel(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	p, _ := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP)))
	st := pt.ScaleState(10000) // 100,000 endpoints
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	repairs := kernelWatchSentinel(t, p, fd)
	none := noRepair(t, repairs)
	none("the watcher's start")
	p.ForceFullSync()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	none("our full sync")
	for i := 0; i < 5; i++ {
		changed := *st.Services[i]
		changed.Endpoints = slices.Clone(changed.Endpoints)
		changed.Endpoints[5] = pt.Endpoint(fmt.Sprintf("10.250.0.%d", i), 8080)
		st2 := *st
		st2.Services = slices.Clone(st.Services)
		st2.Services[i] = &changed
		if err := p.Sync(ctx, &st2); err != nil {
			t.Fatal(err)
		}
		st = &st2
	}
	none("our partial syncs")

	// The sentinel races someone's commit on a shared 2-core machine: a
	// loaded scheduler can let the commit end (and be heard) before the
	// sentinel's poll runs. It must sit the flush out at least once in
	// three tries; each try is repaired either way.
	satOut := false
	for try := 1; try <= 3 && !satOut; try++ {
		start := time.Now()
		sh(t, "nft", "flush map ip svcproxy endpoints-ip-tcp")
		took := time.Since(start)
		select {
		case what := <-repairs:
			t.Logf("try %d: the flush of 100,000 elements took %v; repair: %s", try, took.Round(time.Millisecond), what)
			satOut = strings.Contains(what, "notifications lost")
		case <-time.After(2 * time.Second):
			t.Fatal("the flush was never noticed")
		}
		if err := p.Sync(ctx, st); err != nil {
			t.Fatal(err)
		}
		if !p.LastResult().Full {
			t.Error("the flush was not repaired by a full sync")
		}
		if n := strings.Count(sh(t, "nft", "list map ip svcproxy endpoints-ip-tcp"), " : "); n < 100000 {
			t.Errorf("endpoints-ip-tcp holds %d elements after the repair, want 100,000", n)
		}
	}
	if !satOut {
		t.Error("the flush was heard, not sat out, in each of three tries")
	}
	none("our repair")
}
