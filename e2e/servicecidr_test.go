package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// The extra ServiceCIDR TestServiceCIDR creates: outside the API server's
// --service-cluster-ip-range (harness.ServiceCIDR), so only the ServiceCIDR
// object makes svcproxy treat it as a service range.
const (
	extraServiceCIDR = "10.97.0.0/24"
	// unallocatedIP is in extraServiceCIDR, held by no Service. Before the
	// ServiceCIDR exists it is an ordinary routed address: pod a has it.
	unallocatedIP = "10.97.0.99"
	// extraClusterIP is the ClusterIP of a Service allocated from
	// extraServiceCIDR.
	extraClusterIP = "10.97.0.10"
)

// TestServiceCIDR (nftables mode): a ServiceCIDR object extends the service
// ranges svcproxy guards. Traffic from a pod to an address in the new range
// that no Service holds reaches whoever has the address until the
// ServiceCIDR exists, and is dropped (a timeout, not a refusal) once
// svcproxy synced it; a Service allocated from the new range works, and a
// port it does not have is rejected. When the ServiceCIDR goes, the address
// is reachable again. None of it forces a full rewrite of the table.
func TestServiceCIDR(t *testing.T) {
	c := begin(t)
	c.onlyIn("nftables", "nftables mode only: the iptables backend has no unallocated-ClusterIP drop (kube-proxy's iptables mode has none either)")
	a, b, cc := backends[0], backends[1], backends[2]
	cidrs := env.Client.NetworkingV1().ServiceCIDRs()
	name := "e2e-" + strings.ToLower(env.Prefix)
	if _, err := cidrs.Get(c.ctx, name, metav1.GetOptions{}); err == nil || !apierrors.IsNotFound(err) {
		t.Fatalf("ServiceCIDR %s already there (or the API cannot say: %v)", name, err)
	}
	if out, _ := env.NFTList(c.ctx, "set", "ip", "svcproxy", "service-cidrs"); strings.Contains(out, extraServiceCIDR) {
		t.Fatalf("service-cidrs already holds %s:\n%s", extraServiceCIDR, out)
	}

	// Pod a has the address, and the node routes it there, as some other
	// part of the network might before the range is given to Services.
	mustRun(c, a.NS, "ip", "addr", "add", unallocatedIP+"/32", "dev", "lo")
	t.Cleanup(func() { a.NS.Run(context.Background(), "ip", "addr", "del", unallocatedIP+"/32", "dev", "lo") })
	mustRun(c, env.Node, "ip", "route", "replace", unallocatedIP+"/32", "via", a.IP, "dev", "br0")
	t.Cleanup(func() { env.Node.Run(context.Background(), "ip", "route", "del", unallocatedIP+"/32") })
	unallocated := net.JoinHostPort(unallocatedIP, strconv.Itoa(harness.EchoPort))
	reachesA := func(when string) {
		c.Helper()
		rs := c.connect(client, harness.ClientOptions{Target: unallocated, Count: 3, Timeout: 2 * time.Second})
		for _, r := range rs {
			if r.Backend != a.Name {
				t.Fatalf("%s: %s from client got %q, want pod %s's answer (svcproxy must not drop it)", when, unallocated, r.Line, a.Name)
			}
		}
	}
	reachesA("before the ServiceCIDR exists")
	// A full sync replaces the table, which gives it a new handle.
	tableHandle := func() string {
		out, err := env.Node.Run(c.ctx, "nft", "-a", "list", "table", "ip", "svcproxy")
		if err != nil {
			t.Fatalf("nft -a list table ip svcproxy: %v: %s", err, out)
		}
		first, _, _ := strings.Cut(out, "\n")
		return first
	}
	handleBefore := tableHandle()

	// The ServiceCIDR. With no controller-manager here, the test plays
	// its servicecidrs controller: it marks it Ready, and removes its
	// finalizer once the ServiceCIDR is deleted.
	start := time.Now()
	sc, err := cidrs.Create(c.ctx, &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: []string{extraServiceCIDR}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create ServiceCIDR %s: %v", extraServiceCIDR, err)
	}
	t.Cleanup(func() { deleteServiceCIDR(t, name) })
	c.waitNFT([]string{"set", "ip", "svcproxy", "service-cidrs"}, extraServiceCIDR)
	c.since("ServiceCIDR "+extraServiceCIDR+" in svcproxy's service-cidrs set", start)

	rs := c.connect(client, harness.ClientOptions{Target: unallocated, Count: 3, Timeout: time.Second})
	for _, r := range rs {
		if r.Err != "timeout" {
			t.Errorf("%s (unallocated, in ServiceCIDR %s) from client: %q, want a timeout (dropped)", unallocated, extraServiceCIDR, r.Line)
		}
	}

	// --dry-run prints the same set.
	out, stderr, err := env.DryRun(c.ctx)
	if err != nil {
		t.Fatalf("svcproxy --dry-run: %v\nstderr:\n%s", err, stderr)
	}
	if want := "add element ip svcproxy service-cidrs { " + harness.ServiceCIDR + ", " + extraServiceCIDR + " }"; !strings.Contains(out, want) {
		t.Errorf("dry-run output lacks %q:\n%s", want, out)
	}

	// A Service from the new range works; a port it lacks is rejected.
	sc.Status.Conditions = []metav1.Condition{{Type: networkingv1.ServiceCIDRConditionReady, Status: metav1.ConditionTrue,
		Reason: "e2e", Message: "marked ready by the e2e test", LastTransitionTime: metav1.Now()}}
	if _, err := cidrs.UpdateStatus(c.ctx, sc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("mark ServiceCIDR ready: %v", err)
	}
	svc := createServiceAt(c, "servicecidr", "extra", extraClusterIP)
	c.endpoints(svc, b, cc)
	c.waitDNATs(svc, "tcp", b, cc)
	rs = c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 20, Timeout: 2 * time.Second})
	c.checkSpread(rs, 20, []*harness.Pod{b, cc}, client.IP)
	for _, r := range c.connect(client, harness.ClientOptions{Target: target(svc, 81), Count: 2, Timeout: 2 * time.Second}) {
		if r.Err != "refused" {
			t.Errorf("%s:81 (a port the Service lacks): %q, want refused (rejected before the service-CIDR drop)", extraClusterIP, r.Line)
		}
	}

	// The ServiceCIDR goes (its Service first): the address is reachable
	// again.
	if err := env.DeleteService(c.ctx, svc.Namespace, svc.Name); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	deleteServiceCIDR(t, name)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := env.NFTList(c.ctx, "set", "ip", "svcproxy", "service-cidrs")
		if err == nil && !strings.Contains(out, extraServiceCIDR) && strings.Contains(out, harness.ServiceCIDR) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service-cidrs still holds %s (or lost %s) 20s after the ServiceCIDR was deleted (err %v):\n%s", extraServiceCIDR, harness.ServiceCIDR, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.since("ServiceCIDR "+extraServiceCIDR+" gone from svcproxy's service-cidrs set", start)
	reachesA("after the ServiceCIDR was deleted")

	if h := tableHandle(); h != handleBefore {
		t.Errorf("table replaced while ServiceCIDRs changed (%q, was %q): want element changes only", h, handleBefore)
	}
}

// createServiceAt creates a ClusterIP Service at clusterIP (port 80 to the
// echo port), retrying while the API server's allocator has not yet taken
// up a just-created ServiceCIDR, and deletes it when the test ends.
func createServiceAt(c *tc, namespace, name, clusterIP string) *v1.Service {
	c.Helper()
	if err := env.EnsureNamespace(c.ctx, namespace); err != nil {
		c.Fatal(err)
	}
	want := harness.NewService(namespace, name)
	want.Spec.ClusterIP = clusterIP
	deadline := time.Now().Add(20 * time.Second)
	for {
		svc, err := env.Client.CoreV1().Services(namespace).Create(c.ctx, want, metav1.CreateOptions{})
		if err == nil {
			c.deleteAtEnd(svc)
			return svc
		}
		if !apierrors.IsInvalid(err) || time.Now().After(deadline) {
			c.Fatalf("create Service %s/%s at %s: %v", namespace, name, clusterIP, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// deleteServiceCIDR deletes the ServiceCIDR and, as the controller-manager
// would once no Service uses it, removes its finalizer; it waits until the
// object is gone.
func deleteServiceCIDR(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cidrs := env.Client.NetworkingV1().ServiceCIDRs()
	if err := cidrs.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete ServiceCIDR %s: %v", name, err)
		return
	}
	for {
		sc, err := cidrs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		if err == nil && len(sc.Finalizers) > 0 {
			sc.Finalizers = nil
			_, err = cidrs.Update(ctx, sc, metav1.UpdateOptions{})
		}
		if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			t.Errorf("ServiceCIDR %s: %v", name, err)
			return
		}
		select {
		case <-ctx.Done():
			t.Errorf("ServiceCIDR %s not gone: %v", name, fmt.Sprint(ctx.Err()))
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}
