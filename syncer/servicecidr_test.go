package syncer

import (
	"fmt"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
