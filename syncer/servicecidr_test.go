package syncer

import (
	"context"
	"fmt"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/svcproxy/svcproxy/proxier"
)

func TestServiceCIDRsOf(t *testing.T) {
	now := metav1.Now()
	objs := []*networkingv1.ServiceCIDR{
		{Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.97.0.0/24", "fd00:10:96::/112"}}},
		{Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16", "bogus", "10.97.0.0/24"}}},
		{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.98.0.0/24"}}},
	}
	if got := fmt.Sprint(serviceCIDRsOf(objs, proxier.IPv4)); got != "[10.96.0.0/16 10.97.0.0/24 10.98.0.0/24]" {
		t.Errorf("IPv4: %s", got)
	}
	if got := fmt.Sprint(serviceCIDRsOf(objs, proxier.IPv6)); got != "[fd00:10:96::/112]" {
		t.Errorf("IPv6: %s", got)
	}
}

func serviceCIDR(name string, cidrs ...string) *networkingv1.ServiceCIDR {
	return &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.ServiceCIDRSpec{CIDRs: cidrs}}
}

// TestRunServiceCIDRs: the State carries every ServiceCIDR's CIDRs of its
// family from the first sync on, and a ServiceCIDR created, changed or
// deleted triggers a sync with the new list; a status-only update does not.
func TestRunServiceCIDRs(t *testing.T) {
	client := fake.NewClientset(append(testObjects(), serviceCIDR("kubernetes", "10.96.0.0/16", "fd00:10:96::/112"))...)
	v4 := &fakeProxier{family: proxier.IPv4}
	v6 := &fakeProxier{family: proxier.IPv6}
	s, err := New(client, Options{NodeName: "node-a", SyncPeriod: time.Hour}, v4, v6)
	if err != nil {
		t.Fatal(err)
	}
	runSyncer(t, s)
	cidrs := func(st *proxier.State) string { return fmt.Sprint(st.ServiceCIDRs) }
	st := v4.waitState(t, "initial", func(*proxier.State) bool { return true })
	if v4.calls() != 1 || cidrs(st) != "[10.96.0.0/16]" {
		t.Errorf("first IPv4 sync (of %d) has ServiceCIDRs %s, want [10.96.0.0/16]", v4.calls(), cidrs(st))
	}
	v6.waitState(t, "initial IPv6 CIDRs", func(st *proxier.State) bool { return cidrs(st) == "[fd00:10:96::/112]" })

	ctx := context.Background()
	scs := client.NetworkingV1().ServiceCIDRs()
	extra, err := scs.Create(ctx, serviceCIDR("extra", "10.97.0.0/24"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v4.waitState(t, "created ServiceCIDR", func(st *proxier.State) bool { return cidrs(st) == "[10.96.0.0/16 10.97.0.0/24]" })
	if got := cidrs(v6.last()); got != "[fd00:10:96::/112]" {
		t.Errorf("IPv6 ServiceCIDRs after an IPv4 one was added: %s", got)
	}

	// A status change is not a change of the rules.
	n := v4.calls()
	extra.ResourceVersion = "2"
	extra.Status.Conditions = []metav1.Condition{{Type: networkingv1.ServiceCIDRConditionReady, Status: metav1.ConditionTrue, Reason: "Ready", LastTransitionTime: metav1.Now()}}
	if extra, err = scs.UpdateStatus(ctx, extra, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	extra.Spec.CIDRs = []string{"10.97.0.0/23"}
	extra.ResourceVersion = "3"
	if _, err := scs.Update(ctx, extra, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	v4.waitState(t, "updated ServiceCIDR", func(st *proxier.State) bool { return cidrs(st) == "[10.96.0.0/16 10.97.0.0/23]" })
	if got := v4.calls() - n; got != 1 {
		t.Errorf("%d syncs for a status update and a spec update, want 1", got)
	}

	if err := scs.Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	v4.waitState(t, "deleted ServiceCIDR", func(st *proxier.State) bool { return cidrs(st) == "[10.96.0.0/16]" })
}

// TestRunServiceCIDRsUnavailable: when the API does not serve ServiceCIDRs
// or RBAC forbids listing them, the first sync is not held up by their cache
// and its State has no ServiceCIDRs (the proxier uses its flag's).
func TestRunServiceCIDRsUnavailable(t *testing.T) {
	gr := schema.GroupResource{Group: "networking.k8s.io", Resource: "servicecidrs"}
	for name, apiErr := range map[string]error{
		"not served": apierrors.NewNotFound(gr, ""),
		"forbidden":  apierrors.NewForbidden(gr, "", fmt.Errorf("RBAC: not allowed")),
	} {
		t.Run(name, func(t *testing.T) {
			client := fake.NewClientset(append(testObjects(), serviceCIDR("kubernetes", "10.96.0.0/16"))...)
			client.PrependReactor("list", "servicecidrs", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apiErr
			})
			v4 := &fakeProxier{family: proxier.IPv4}
			s, err := New(client, Options{SyncPeriod: time.Hour}, v4)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			runSyncer(t, s)
			st := v4.waitState(t, "initial", func(*proxier.State) bool { return true })
			if took := time.Since(start); took > cidrSyncTimeout/2 {
				t.Errorf("first sync after %v: waited for the ServiceCIDR cache", took)
			}
			if st.ServiceCIDRs != nil || len(st.Services) != 3 {
				t.Errorf("first State: ServiceCIDRs %v (want nil), %d services (want 3)", st.ServiceCIDRs, len(st.Services))
			}
			select {
			case <-s.caches.cidrsGone:
			default:
				t.Errorf("ServiceCIDRs not recorded as unavailable")
			}
		})
	}
}

func TestSnapshotServiceCIDRs(t *testing.T) {
	client := fake.NewClientset(append(testObjects(), serviceCIDR("kubernetes", "10.96.0.0/16", "fd00:10:96::/112"), serviceCIDR("b", "10.97.0.0/24"))...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	states, err := Snapshot(ctx, client, "node-a", proxier.IPv4, proxier.IPv6)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(states[proxier.IPv4].ServiceCIDRs, states[proxier.IPv6].ServiceCIDRs); got != "[10.96.0.0/16 10.97.0.0/24] [fd00:10:96::/112]" {
		t.Errorf("ServiceCIDRs: %s", got)
	}
}
