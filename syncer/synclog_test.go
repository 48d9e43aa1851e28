package syncer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/svcproxy/svcproxy/proxier"
)

// opsFake is a fakeProxier that reports 10 operations per call so far.
type opsFake struct{ fakeProxier }

func (p *opsFake) LastSyncOperations() int { return 10 * p.calls() }

// syncLine is one "Synced" or "Sync failed" log entry.
type syncLine struct {
	msg string
	err error
	kv  map[string]any
}

// syncLines are the sync log entries logger captured, in order.
func syncLines(t *testing.T, logger ktesting.Underlier) []syncLine {
	t.Helper()
	var out []syncLine
	for _, e := range logger.GetBuffer().Data() {
		if e.Message != "Synced" && e.Message != "Sync failed" {
			continue
		}
		l := syncLine{msg: e.Message, err: e.Err, kv: map[string]any{}}
		if len(e.ParameterKVList)%2 != 0 {
			t.Fatalf("%s: odd key/value list %v", e.Message, e.ParameterKVList)
		}
		for i := 0; i < len(e.ParameterKVList); i += 2 {
			k, ok := e.ParameterKVList[i].(string)
			if !ok {
				t.Fatalf("%s: key %v is no string", e.Message, e.ParameterKVList[i])
			}
			if _, dup := l.kv[k]; dup {
				t.Errorf("%s: key %s twice", e.Message, k)
			}
			l.kv[k] = e.ParameterKVList[i+1]
		}
		out = append(out, l)
	}
	return out
}

// TestSyncLogLine: each sync logs one structured line per family, with
// what changed (the count and the first names of the changed Services),
// the operations the backend reports, and the result; a failed family's
// line is an error without operations.
func TestSyncLogLine(t *testing.T) {
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	klog.SetLogger(logger)
	t.Cleanup(klog.ClearLogger)
	under := logger.GetSink().(ktesting.Underlier)

	client := fake.NewClientset(testObjects()...)
	v4 := &opsFake{fakeProxier{family: proxier.IPv4}}
	v6 := &opsFake{fakeProxier{family: proxier.IPv6, fail: func(n int) error {
		if n == 2 {
			return errors.New("nft: boom")
		}
		return nil
	}}}
	// No sync but the first and the ones asked for below.
	s, err := New(client, Options{NodeName: "node-a", MinSyncPeriod: time.Hour, SyncPeriod: time.Hour}, v4, v6)
	if err != nil {
		t.Fatal(err)
	}
	runSyncer(t, s)
	waitFor(t, "the first sync", func() bool { return v4.calls() == 1 && v6.calls() == 1 })
	for i := range 7 {
		svc := testService("ns3", fmt.Sprintf("s%d", i), fmt.Sprintf("172.30.1.%d", i+1))
		if _, err := client.CoreV1().Services("ns3").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "7 Service changes pending", func() bool { return metricValue(t, s.m.serviceChangesPending) == 7 })
	s.resyncNow()
	waitFor(t, "the second sync", func() bool { return v4.calls() == 2 && v6.calls() == 2 })
	// The failed family's line comes after its Sync returned.
	var lines []syncLine
	waitFor(t, "four sync lines", func() bool { lines = syncLines(t, under); return len(lines) >= 4 })

	want := []struct {
		msg, family, result string
		full                bool
		servicePorts        int
		changed             int
		names               []string
		operations          any // nil: no key
	}{
		{"Synced", "IPv4", "success", true, 3, 3, []string{"ns1/svc1", "ns1/svc2", "ns2/dual"}, 10},
		{"Synced", "IPv6", "success", true, 1, 1, []string{"ns2/dual"}, 10},
		{"Synced", "IPv4", "success", false, 10, 7, []string{"ns3/s0", "ns3/s1", "ns3/s2", "ns3/s3", "ns3/s4"}, 20},
		{"Sync failed", "IPv6", "failure", false, 1, 0, []string{}, nil},
	}
	if len(lines) != len(want) {
		t.Fatalf("%d sync lines, want %d (one per family per sync): %v", len(lines), len(want), lines)
	}
	keys := []string{"ipFamily", "duration", "convert", "servicePorts", "endpoints", "changedServices",
		"changedServiceNames", "changedEndpoints", "fullRebuild", "result"}
	for i, w := range want {
		l := lines[i]
		for _, k := range keys {
			if _, ok := l.kv[k]; !ok {
				t.Errorf("line %d (%s %s): no key %s", i, w.msg, w.family, k)
			}
		}
		got := []any{l.msg, l.kv["ipFamily"], l.kv["result"], l.kv["fullRebuild"], l.kv["servicePorts"], l.kv["changedServices"], l.kv["operations"]}
		exp := []any{w.msg, w.family, w.result, w.full, w.servicePorts, w.changed, w.operations}
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("line %d: msg, ipFamily, result, fullRebuild, servicePorts, changedServices, operations = %v, want %v", i, got, exp)
		}
		if names, _ := l.kv["changedServiceNames"].([]string); !reflect.DeepEqual(names, w.names) {
			t.Errorf("line %d (%s %s): changedServiceNames %#v, want %#v", i, w.msg, w.family, l.kv["changedServiceNames"], w.names)
		}
		if _, ok := l.kv["duration"].(time.Duration); !ok {
			t.Errorf("line %d: duration %#v is no time.Duration", i, l.kv["duration"])
		}
		if (l.err != nil) != (w.result == "failure") {
			t.Errorf("line %d: error %v with result %s", i, l.err, w.result)
		}
	}
}

// TestFirstNames: the first n names in order, whatever the map's order
// and size.
func TestFirstNames(t *testing.T) {
	for _, tc := range []struct{ names, n int }{{0, 5}, {3, 5}, {5, 5}, {6, 5}, {100, 5}, {10, 1}, {10, 0}} {
		names := map[types.NamespacedName]struct{}{}
		var all []string
		for i := range tc.names {
			// Namespaces and names both decide the order.
			nn := types.NamespacedName{Namespace: fmt.Sprintf("ns%d", i%3), Name: fmt.Sprintf("svc%03d", (i*37)%101)}
			names[nn] = struct{}{}
			all = append(all, nn.String())
		}
		slices.Sort(all)
		want := all[:min(tc.n, len(all))]
		for range 3 { // map order varies
			if got := firstNames(names, tc.n); !slices.Equal(got, want) {
				t.Errorf("%d names, first %d: %v, want %v", tc.names, tc.n, got, want)
			}
		}
	}
}
