package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// scaleServices is the number of Services of TestScale
// (SVCPROXY_E2E_SCALE_SERVICES overrides it).
func scaleServices() int {
	if n, err := strconv.Atoi(os.Getenv("SVCPROXY_E2E_SCALE_SERVICES")); err == nil && n > 0 {
		return n
	}
	return 10000
}

// TestScale (nftables mode): with 10,000 Services of 10 endpoints each in
// the API server, it measures
//   - cold start: svcproxy restarted on a node without its table, from
//     process start to the first sync and how long that sync took;
//   - single-change latency: an EndpointSlice update (one endpoint
//     replaced) from the API write to the new element appearing in the
//     kernel, watched with `nft monitor`; p50 and max of 20 changes;
//   - self-repair: the time from damage to the table rewritten;
//
// and it sends traffic through two Services of real pods among the 10,000
// after the cold starts and after each repair.
//
// The bar (issue 4): cold start ≤ 3 s, change p50 ≤ 20 ms.
//
// It runs after every other test: it calls t.Parallel, and Go resumes a
// package's parallel top-level tests only once all its sequential ones
// have finished (no other test here is parallel). The 10,000 Services it
// leaves would slow every test after it.
func TestScale(t *testing.T) {
	t.Parallel()
	c := begin(t)
	c.onlyIn("nftables", "the 10,000-Service scale case runs in nftables mode (iptables-restore needs minutes for it)")
	pod := client // the client pod: client is the API clientset below
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c.ctx = ctx // longer than the 2 minutes begin gives a test
	n := scaleServices()
	const ns = "scale"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	cfg := *env.RestConfig
	cfg.QPS, cfg.Burst = -1, 0 // no client-side throttling
	client, err := kubernetes.NewForConfig(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	client, err = kubernetes.NewForConfig(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Two Services of real pods, for traffic through the table at scale
	// (whose large sets are sized, size.go): one spread over the
	// backends, one whose only endpoint is the client itself (hairpin,
	// masqueraded to the bridge address).
	web := c.service("scale-traffic", "web", []harness.Port{harness.TCP}, backends...)
	self := c.service("scale-traffic", "self", []harness.Port{harness.TCP}, pod)

	// svcproxy is stopped while the Services are written, so that its start
	// afterwards is a true cold start. The Services are not deleted: this
	// case runs last, and the run's teardown removes the whole control
	// plane (deleting 10,000 Services one by one would take minutes).
	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Logf("svcproxy stop: %v", err)
	}

	// Create n Services with 10 endpoints each, with 16 writers.
	start := time.Now()
	svcs := make([]*v1.Service, n)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				svc, err := client.CoreV1().Services(ns).Create(ctx, &v1.Service{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%05d", i)},
					Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
				}, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					return
				}
				svcs[i] = svc
				if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, scaleSlice(svc, i, 0), metav1.CreateOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("creating Services: %v", err)
	}
	c.since(fmt.Sprintf("created %d Services and EndpointSlices (10 endpoints each)", n), start)
	// traffic checks the two Services of real pods.
	traffic := func(when string) {
		c.Helper()
		rs := c.connect(pod, harness.ClientOptions{Target: target(web, 80), Count: 30, Timeout: 2 * time.Second})
		c.checkSpread(rs, 30, backends, pod.IP)
		rs = c.connect(pod, harness.ClientOptions{Target: target(self, 80), Count: 5, Timeout: 2 * time.Second})
		c.checkSpread(rs, 5, []*harness.Pod{pod}, harness.BridgeIP)
		if !t.Failed() {
			t.Logf("RESULT traffic at scale %s: 30 connections spread over the 3 backends, 5 hairpin connections masqueraded", when)
		}
	}

	// Cold start: no table, everything already in the API; three times,
	// for the spread.
	last := svcs[n-1]
	var colds []time.Duration
	for k := 0; k < coldStarts; k++ {
		if k > 0 {
			if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
				t.Logf("svcproxy stop: %v", err)
			}
		}
		for _, fam := range []string{"ip", "ip6"} {
			if out, err := env.Node.Run(ctx, "nft", "delete", "table", fam, "svcproxy"); err != nil && !strings.Contains(out+err.Error(), "No such file") {
				t.Fatalf("delete table: %v", err)
			}
		}
		// The API server shares this machine's two cores (on a real node
		// it does not): let it finish digesting the writes before
		// measuring svcproxy.
		c.since(fmt.Sprintf("waited for an idle machine (%s)", waitIdle(time.Minute)), time.Now())
		restart := time.Now()
		if err := env.StartSvcproxyAndWait(ctx, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		startToSynced := time.Since(restart)
		colds = append(colds, startToSynced)
		t.Logf("RESULT cold start %d with %d Services x 10 endpoints: process start to first sync done %v; the full sync itself took %v",
			k+1, n, startToSynced.Round(time.Millisecond), firstFullSync(t).Round(time.Millisecond))
		logColdStart(t)
		c.waitDNATsTo(last, scaleIPs(n-1, 0), time.Minute)
	}
	slices.Sort(colds)
	median := colds[len(colds)/2]
	t.Logf("RESULT cold start with %d Services x 10 endpoints: median %v of %v", n, median.Round(time.Millisecond), colds)
	traffic("after the cold starts")
	// The bar (cold start ≤ 3 s) is from process start to the rules in
	// place, on an idle 2-core node; here the API server shares the cores
	// (it serves the 20,000 objects' initial lists meanwhile). The guard
	// fails the run at twice the bar; the figure is reported.
	if median > 3*time.Second {
		t.Logf("cold start %v is above the 3s bar", median.Round(time.Millisecond))
	}
	if median > 6*time.Second {
		t.Errorf("cold start took %v, more than twice the 3s bar", median)
	}

	// Single-change latency, seen in the kernel: nf_tables announces every
	// new element on a netlink multicast group, read here directly (`nft
	// monitor` needs minutes to read a table this size before it reports).
	watchCtx, stopWatch := context.WithCancel(ctx)
	elems, err := watchNewElements(watchCtx, env.Node.Path())
	if err != nil {
		t.Fatal(err)
	}
	var lat []time.Duration
	for k := 1; k <= 20; k++ {
		i := (k * 499) % n
		slice := scaleSlice(svcs[i], i, k)
		want := slice.Endpoints[5].Addresses[0]
		cur, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, slice.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice.ResourceVersion = cur.ResourceVersion
		t0 := time.Now()
		if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := waitElement(elems, netip.MustParseAddr(want), 10*time.Second); err != nil {
			t.Fatalf("change %d (%s): %v", k, want, err)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(300 * time.Millisecond)
	}
	// Unsubscribed, so that the kernel stops building a notification per
	// element for this test (a node has no such listener).
	stopWatch()
	slices.Sort(lat)
	p50, maxLat := lat[len(lat)/2], lat[len(lat)-1]
	t.Logf("RESULT single endpoint change with %d Services, API write to kernel (nf_tables netlink event): p50 %v, max %v, all %v",
		n, p50.Round(100*time.Microsecond), maxLat.Round(100*time.Microsecond), lat)
	if p50 > 20*time.Millisecond {
		t.Logf("single-change latency p50 %v is above the 20ms bar", p50)
	}
	if p50 > 40*time.Millisecond {
		t.Errorf("single-change latency p50 %v, more than twice the 20ms bar", p50)
	}

	// Self-repair at scale: damage the table, time until svcproxy's
	// repairing full sync is done (its log line), then check a Service.
	for _, damage := range [][]string{
		{"nft", "flush", "ruleset"},
		{"nft", "flush", "map", "ip", "svcproxy", "endpoints-ip-tcp"},
		{"nft", "flush", "chain", "ip", "svcproxy", "services"},
		{"nft", "delete", "table", "ip", "svcproxy"},
	} {
		time.Sleep(time.Second)
		d, cmd := repairTime(t, damage)
		t.Logf("RESULT self-repair with %d Services: after `%s` the repair was done in %v (%v after the command returned)",
			n, strings.Join(damage, " "), d.Round(time.Millisecond), (d - cmd).Round(time.Millisecond))
		if d > time.Second {
			t.Logf("repair took %v, above the 1s bar", d.Round(time.Millisecond))
		}
		// The guard, as for the other figures: twice the bar.
		if d > 2*time.Second {
			t.Errorf("repair after `%s` took %v, more than twice the 1s bar", strings.Join(damage, " "), d.Round(time.Millisecond))
		}
		c.waitDNATsTo(last, scaleIPs(n-1, 0), time.Minute)
		traffic("after `" + strings.Join(damage, " ") + "`")
	}
}

// repairTime runs damage in the node namespace and returns the time until
// svcproxy logs the end of the IPv4 repair that followed it (a narrow one,
// only what the damage named rewritten, or a full sync), and the time the
// damaging command took. (While anyone listens to nf_tables notifications,
// as svcproxy does, the kernel builds one per element a transaction
// deletes: a flush of a 100,000-element map then takes the command a
// second or more.)
func repairTime(t *testing.T, damage []string) (time.Duration, time.Duration) {
	t.Helper()
	path := env.Svcproxy().LogPath
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	offset := st.Size()
	t0 := time.Now()
	if out, err := env.Node.Run(context.Background(), damage...); err != nil {
		t.Fatalf("%v: %v: %s", damage, err, out)
	}
	cmd := time.Since(t0)
	for time.Since(t0) < 30*time.Second {
		time.Sleep(5 * time.Millisecond)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		f.Seek(offset, io.SeekStart)
		b, _ := io.ReadAll(f)
		f.Close()
		if bytes.Contains(b, []byte("Rules altered")) && (fullSyncRe.Match(b) || bytes.Contains(b, []byte(`"Repaired the table" family="IPv4"`))) {
			d := time.Since(t0)
			// The steps, with svcproxy's timestamps, for whoever
			// wants to know where the time went.
			for _, l := range bytes.Split(b, []byte("\n")) {
				if bytes.Contains(l, []byte("Rules altered")) || bytes.Contains(l, []byte("Repaired the table")) ||
					bytes.Contains(l, []byte("Refilled the table")) || bytes.Contains(l, []byte(`"Synced" ipFamily="IPv4"`)) {
					t.Logf("svcproxy: %.300s", l)
				}
			}
			return d, cmd
		}
	}
	t.Fatalf("no full sync within 30s of %v", damage)
	return 0, 0
}

// coldStarts is how many cold starts TestScale measures.
const coldStarts = 3

// logColdStart logs the steps of the last svcproxy run's start, with
// svcproxy's timestamps: caches filled, the full syncs and their parts.
func logColdStart(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(env.Svcproxy().LogPath)
	if err != nil {
		t.Fatal(err)
	}
	runs := strings.Split(string(b), "\n=== ")
	run := runs[len(runs)-1]
	t.Logf("svcproxy: process started %s", strings.SplitN(run, ": ", 2)[0])
	for _, l := range strings.Split(run, "\n") {
		for _, s := range []string{`"Starting svcproxy"`, `"Caches populated" type="*v1.Service"`, `"Caches populated" type="*v1.EndpointSlice"`,
			`"Caches synced`, `"Full sync"`, `"Loaded the table"`, `fullRebuild=true`} {
			if strings.Contains(l, s) {
				t.Logf("svcproxy: %.260s", l)
				break
			}
		}
	}
}

// scaleIPs are the 10 endpoint IPs of scale Service i at generation g.
func scaleIPs(i, g int) []string {
	ips := make([]string, 10)
	for j := range ips {
		ips[j] = fmt.Sprintf("10.%d.%d.%d", 100+j, i>>8, i&255)
	}
	if g > 0 {
		ips[5] = fmt.Sprintf("10.251.%d.%d", g, i&255)
	}
	return ips
}

func scaleSlice(svc *v1.Service, i, g int) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace,
			Name:      harness.SliceName(svc.Name),
			Labels:    map[string]string{discovery.LabelServiceName: svc.Name, discovery.LabelManagedBy: "svcproxy-e2e"},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, ip := range scaleIPs(i, g) {
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses:  []string{ip},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To("node-2"),
		})
	}
	return es
}

// watchNewElements subscribes, in the network namespace at nsPath, to
// nf_tables events and sends the payload of every new-element message.
func watchNewElements(ctx context.Context, nsPath string) (<-chan []byte, error) {
	f, err := os.Open(nsPath)
	if err != nil {
		return nil, err
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd()), Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	conn.SetReadBuffer(8 << 20)
	out := make(chan []byte, 4096)
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	go func() {
		defer close(out)
		for {
			msgs, err := conn.Receive()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue // e.g. ENOBUFS after a burst: keep listening
			}
			for _, m := range msgs {
				if uint16(m.Header.Type)&0xff == unix.NFT_MSG_NEWSETELEM {
					out <- m.Data
				}
			}
		}
	}()
	return out, nil
}

// waitElement waits for a new element whose data holds ip.
func waitElement(elems <-chan []byte, ip netip.Addr, timeout time.Duration) error {
	want := ip.AsSlice()
	deadline := time.After(timeout)
	for {
		select {
		case data, ok := <-elems:
			if !ok {
				return fmt.Errorf("netlink watch ended before %v", ip)
			}
			if bytes.Contains(data, want) {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no new element with %v in the kernel within %v", ip, timeout)
		}
	}
}

var fullSyncRe = regexp.MustCompile(`"Synced" ipFamily="IPv4" duration="([^"]+)".*fullRebuild=true`)

// firstFullSync is the duration of the last svcproxy run's first IPv4 full
// sync, from its log.
func firstFullSync(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile(env.Svcproxy().LogPath)
	if err != nil {
		t.Fatal(err)
	}
	runs := strings.Split(string(b), "\n=== ")
	m := fullSyncRe.FindStringSubmatch(runs[len(runs)-1])
	if m == nil {
		t.Fatalf("no full IPv4 sync in svcproxy's log")
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitIdle waits until the machine's CPUs were at most 20% busy over one
// second, or max; it describes the last second's load.
func waitIdle(max time.Duration) string {
	read := func() (busy, total uint64) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i, v := range f[1:] {
			x, _ := strconv.ParseUint(v, 10, 64)
			total += x
			if i != 3 && i != 4 { // idle, iowait
				busy += x
			}
		}
		return busy, total
	}
	start := time.Now()
	for {
		b0, t0 := read()
		time.Sleep(time.Second)
		b1, t1 := read()
		if t1 == t0 {
			return "unknown"
		}
		pct := 100 * float64(b1-b0) / float64(t1-t0)
		if pct <= 20 || time.Since(start) > max {
			return fmt.Sprintf("%.0f%% busy after %v", pct, time.Since(start).Round(time.Second))
		}
	}
}
