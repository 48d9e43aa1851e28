package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// The conntrack reconciler's rules, as kube-proxy's current one has them,
// with real UDP clients that keep their source port (statsd-like senders):
// every datagram of such a client rides the conntrack entry its first one
// made, so only deleting the entry lets the rules now in place decide.
//
//  1. An entry made before a NodePort had rules (never DNATed) goes once
//     the Service has serving endpoints.
//  2. Entries of a Service that goes to zero endpoints, or is deleted, go
//     (kubernetes#139628, fixed by #139629 and #141371).
//  3. Endpoints match by IP and port: a targetPort change drops entries to
//     the old port.

// ctFlow is a UDP flow with a fixed source port, from a pod or (from ==
// nil) from the external client.
type ctFlow struct {
	name    string
	from    *harness.Pod
	target  string
	srcPort int
}

func (c *tc) ctSend(f ctFlow) []harness.Reply {
	c.Helper()
	opts := harness.ClientOptions{Proto: "udp", Target: f.target, Count: 3, SrcPort: f.srcPort,
		Interval: 20 * time.Millisecond, Timeout: 300 * time.Millisecond}
	if f.from != nil {
		return c.connect(f.from, opts)
	}
	opts.SrcIP = harness.ExtAllowedIP
	rs, err := env.ExternalConnect(c.ctx, opts)
	if err != nil {
		c.Fatalf("external client to %s: %v", f.target, err)
	}
	return rs
}

// ctEach waits until check passes for every flow's replies.
func (c *tc) ctEach(what string, flows []ctFlow, check func([]harness.Reply) string) {
	c.Helper()
	for _, f := range flows {
		from := "any port"
		if f.srcPort != 0 {
			from = "port " + strconv.Itoa(f.srcPort)
		}
		c.eventually(fmt.Sprintf("%s: %s from %s", what, f.name, from), func() string {
			return check(c.ctSend(f))
		})
	}
}

// ctAnsweredBy complains unless every attempt was answered by the echo
// server named name.
func ctAnsweredBy(name string) func([]harness.Reply) string {
	return func(rs []harness.Reply) string {
		if len(rs) == 0 {
			return "no attempts"
		}
		for _, r := range rs {
			if r.Err != "" || r.Backend != name {
				return fmt.Sprintf("want every datagram answered by %s, got %s", name, harness.FormatTally(harness.Tally(rs)))
			}
		}
		return ""
	}
}

// ctUnanswered complains if any attempt was answered (wantErr != "": or
// failed otherwise than with wantErr).
func ctUnanswered(wantErr string) func([]harness.Reply) string {
	return func(rs []harness.Reply) string {
		if len(rs) == 0 {
			return "no attempts"
		}
		for _, r := range rs {
			if r.Err == "" || (wantErr != "" && r.Err != wantErr) {
				what := "unanswered"
				if wantErr != "" {
					what = wantErr
				}
				return fmt.Sprintf("want every datagram %s, got %s", what, harness.FormatTally(harness.Tally(rs)))
			}
		}
		return ""
	}
}

// ctFreeNodePort is a NodePort no Service has.
func (c *tc) ctFreeNodePort() int32 {
	c.Helper()
	all, err := env.Client.CoreV1().Services("").List(c.ctx, metav1.ListOptions{})
	if err != nil {
		c.Fatal(err)
	}
	used := map[int32]bool{}
	for _, s := range all.Items {
		for _, p := range s.Spec.Ports {
			used[p.NodePort] = true
		}
	}
	for {
		if np := int32(30000 + rand.Intn(2768)); !used[np] {
			return np
		}
	}
}

// ctUDPService creates a UDP NodePort Service, port 80 to targetPort, with
// the given ClusterIP and NodePort ("" and 0: allocated), and deletes it
// when the test ends. An address a deleted Service just released may take
// a moment to be free again.
func (c *tc) ctUDPService(name, clusterIP string, nodePort, targetPort int32) *v1.Service {
	c.Helper()
	const ns = "features"
	if err := env.EnsureNamespace(c.ctx, ns); err != nil {
		c.Fatal(err)
	}
	s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: v1.ServiceSpec{
		Type: v1.ServiceTypeNodePort, ClusterIP: clusterIP,
		Ports: []v1.ServicePort{{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, NodePort: nodePort, TargetPort: intstr.FromInt32(targetPort)}}}}
	var created *v1.Service
	c.eventually("create Service "+name, func() string {
		var err error
		created, err = env.Client.CoreV1().Services(ns).Create(c.ctx, s, metav1.CreateOptions{})
		switch {
		case err == nil:
			return ""
		case strings.Contains(err.Error(), "already allocated"):
			return err.Error()
		}
		c.Fatalf("create Service %s: %v", name, err)
		return ""
	})
	c.Cleanup(func() {
		c.diagnose()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteService(ctx, ns, name); err != nil {
			c.Errorf("delete Service %s: %v", name, err)
		}
	})
	c.Logf("Service %s/%s: ClusterIP %s, NodePort %d, targetPort %d", ns, name,
		created.Spec.ClusterIP, created.Spec.Ports[0].NodePort, targetPort)
	return created
}

// TestConntrackReconcileNodePortBeforeRules: an external client sends to a
// NodePort before its Service exists; the node answers port unreachable and
// conntrack keeps an entry that was never DNATed. Once the Service has an
// endpoint and svcproxy programmed it, the same source port must reach the
// endpoint: the entry has to be deleted, since the nat table only sees a
// flow's first packet.
func TestConntrackReconcileNodePortBeforeRules(t *testing.T) {
	c := begin(t)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	a := backends[0]
	np := c.ctFreeNodePort()
	flow := ctFlow{"NodePort from outside", nil, net.JoinHostPort(harness.NodeIP, strconv.Itoa(int(np))), 40411}
	if m := ctUnanswered("")(c.ctSend(flow)); m != "" {
		t.Fatalf("%s before its Service exists: %s", flow.target, m)
	}
	entries := c.conntrackList("-p", "udp", "--orig-port-dst", strconv.Itoa(int(np)), "--orig-port-src", strconv.Itoa(flow.srcPort))
	if len(entries) == 0 || !strings.Contains(entries[0], "src="+harness.NodeIP+" dst="+harness.ExtAllowedIP) {
		t.Fatalf("want one entry to %s from port %d answered by the node itself (never DNATed), got %q", flow.target, flow.srcPort, entries)
	}
	t.Logf("entry made before the NodePort had rules: %s", entries[0])

	svc := c.ctUDPService("ct-rec-np-early", "", np, harness.EchoPort)
	c.slice(svc, at(a, harness.NodeName))
	c.waitDNATs(svc, "udp", a)
	fresh := flow
	fresh.name, fresh.srcPort = "a new flow", 0
	c.ctEach("the NodePort serves", []ctFlow{fresh}, ctAnsweredBy(a.Name))
	c.ctEach("the early flow reaches the endpoint", []ctFlow{flow}, ctAnsweredBy(a.Name))
	t.Logf("RESULT UDP from %s:%d to NodePort %s, first sent before the Service existed: now answered by %s",
		harness.ExtAllowedIP, flow.srcPort, flow.target, a.Name)
}

// ctPinned makes a UDP NodePort Service at a and two flows pinned to it,
// from source ports base+1 and base+2: from the client pod to the ClusterIP
// and from outside to the NodePort.
func (c *tc) ctPinned(name string, a *harness.Pod, base int) (*v1.Service, []ctFlow) {
	c.Helper()
	if err := env.SetupExternalClients(c.ctx); err != nil {
		c.Fatal(err)
	}
	svc := c.ctUDPService(name, "", 0, harness.EchoPort)
	c.slice(svc, at(a, harness.NodeName))
	c.waitDNATs(svc, "udp", a)
	flows := []ctFlow{
		{"ClusterIP from a pod", client, net.JoinHostPort(svc.Spec.ClusterIP, "80"), base + 1},
		{"NodePort from outside", nil, nodePortTarget(svc), base + 2},
	}
	c.ctEach("pinned to "+a.Name, flows, ctAnsweredBy(a.Name))
	return svc, flows
}

// TestConntrackReconcileZeroEndpoints: flows pinned to endpoint a while a's
// server keeps running; the Service goes to zero endpoints. The flows must
// be rejected as new ones are, not keep reaching a through their entries.
// Back at one endpoint (b), they reach b.
func TestConntrackReconcileZeroEndpoints(t *testing.T) {
	c := begin(t)
	a, b := backends[0], backends[1]
	svc, flows := c.ctPinned("ct-rec-zero", a, 40420)

	c.slice(svc)
	fresh := ctFlow{"a new flow", client, flows[0].target, 0}
	c.ctEach("the Service rejects new flows", []ctFlow{fresh}, ctUnanswered("refused"))
	c.ctEach("with zero endpoints, the pinned flow is rejected", flows, ctUnanswered("refused"))

	c.slice(svc, at(b, harness.NodeName))
	c.waitDNATs(svc, "udp", b)
	c.ctEach("back at one endpoint, the pinned flow reaches it", flows, ctAnsweredBy(b.Name))
	t.Logf("RESULT UDP flows pinned to %s (ClusterIP from %s, NodePort from outside): refused at zero endpoints, then answered by %s",
		a.Name, client.Name, b.Name)
}

// ctWhileStopped runs f while svcproxy is stopped (its rules stay in the
// kernel), then starts it and waits until it has synced.
func (c *tc) ctWhileStopped(f func()) {
	c.Helper()
	start := func() error {
		if _, err := env.StartSvcproxy(context.Background()); err != nil {
			return err
		}
		return env.WaitSvcproxySynced(context.Background(), 30*time.Second)
	}
	stopSvcproxy(c)
	c.Cleanup(func() {
		if exited, _ := env.Svcproxy().Exited(); exited {
			if err := start(); err != nil {
				c.Errorf("start svcproxy again: %v", err)
			}
		}
	})
	f()
	t := time.Now()
	if err := start(); err != nil {
		c.Fatalf("start svcproxy again: %v", err)
	}
	c.since("svcproxy started again and synced", t)
}

// TestConntrackReconcileZeroEndpointsAcrossRestart: flows pinned to a; the
// Service goes to zero endpoints while svcproxy is stopped. The restarted
// svcproxy never saw the endpoint leave, so only the Service's state now
// (no serving endpoint) can tell it that the flows' entries are stale.
func TestConntrackReconcileZeroEndpointsAcrossRestart(t *testing.T) {
	c := begin(t)
	a := backends[0]
	svc, flows := c.ctPinned("ct-rec-zero-rs", a, 40450)
	c.ctWhileStopped(func() {
		c.slice(svc)
		c.ctEach("svcproxy stopped: the pinned flow still reaches "+a.Name, flows, ctAnsweredBy(a.Name))
	})
	c.ctEach("restarted with zero endpoints, the pinned flow is rejected", flows, ctUnanswered("refused"))
	t.Logf("RESULT UDP flows pinned to %s, Service at zero endpoints across a svcproxy restart: refused", a.Name)
}

// TestConntrackReconcileDeletedService: flows pinned to endpoint a while a's
// server keeps running; the Service is deleted, its EndpointSlice left for
// later (as the garbage collector does it after the Service). The flows
// must stop reaching a. Recreated with the same ClusterIP and NodePort at
// b, they reach b.
func TestConntrackReconcileDeletedService(t *testing.T) {
	c := begin(t)
	a, b := backends[0], backends[1]
	svc, flows := c.ctPinned("ct-rec-deleted", a, 40430)

	if err := env.Client.CoreV1().Services(svc.Namespace).Delete(c.ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh := ctFlow{"a new flow", client, flows[0].target, 0}
	c.ctEach("the deleted Service's ClusterIP serves nothing", []ctFlow{fresh}, ctUnanswered(""))
	c.ctEach("after the delete, the pinned flow", flows, ctUnanswered(""))
	if err := env.DeleteService(c.ctx, svc.Namespace, svc.Name); err != nil {
		t.Fatal(err)
	}

	again := c.ctUDPService(svc.Name, svc.Spec.ClusterIP, svc.Spec.Ports[0].NodePort, harness.EchoPort)
	c.slice(again, at(b, harness.NodeName))
	c.waitDNATs(again, "udp", b)
	c.ctEach("recreated at b, the pinned flow reaches it", flows, ctAnsweredBy(b.Name))
	t.Logf("RESULT UDP flows pinned to %s: unanswered once the Service was deleted, then answered by %s when recreated at %s",
		a.Name, b.Name, svc.Spec.ClusterIP)
}

// TestConntrackReconcileTargetPort: flows pinned to a:8080; the Service's
// targetPort (and so its slice's port) changes to 8081, where a second
// echo server in a answers under another name. The flows must reach the
// new port although the endpoint IP is the same.
func TestConntrackReconcileTargetPort(t *testing.T) {
	c := begin(t)
	a := backends[0]
	const newPort = harness.EchoPort + 1
	newName := fmt.Sprintf("%s-%d", a.Name, newPort)
	proc, err := env.StartProcess(a.NS, "echo-"+newName, env.Bins.Echo, "serve", "--name", newName, "--port", strconv.Itoa(newPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Stop(syscall.SIGTERM, 2*time.Second) })
	direct := ctFlow{"the second server, directly", client, net.JoinHostPort(a.IP, strconv.Itoa(newPort)), 0}
	c.ctEach("second echo server up", []ctFlow{direct}, ctAnsweredBy(newName))

	svc, flows := c.ctPinned("ct-rec-port", a, 40440)
	svc.Spec.Ports[0].TargetPort = intstr.FromInt32(newPort)
	svc, err = env.Client.CoreV1().Services(svc.Namespace).Update(c.ctx, svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.slice(svc, at(a, harness.NodeName))
	want := net.JoinHostPort(a.IP, strconv.Itoa(newPort))
	if _, err := env.WaitForServiceDNATs(c.ctx, 20*time.Second, svc.Namespace, svc.Name, "udp", want); err != nil {
		t.Fatalf("rules never DNATed to %s: %v", want, err)
	}
	c.ctEach("after the targetPort change, the pinned flow reaches the new port", flows, ctAnsweredBy(newName))
	t.Logf("RESULT UDP flows pinned to %s:%d: answered on %d after the targetPort change", a.IP, harness.EchoPort, newPort)
}
