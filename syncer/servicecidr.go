package syncer

import (
	"net/netip"
	"slices"
	"sort"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// serviceCIDRsOf returns the CIDRs of family f from ServiceCIDR objects'
// spec.cidrs, sorted and deduplicated; unparsable entries are skipped. A
// terminating ServiceCIDR still counts (its IPs may still be allocated), as in
// kube-proxy.
func serviceCIDRsOf(objs []*networkingv1.ServiceCIDR, f proxier.IPFamily) []netip.Prefix {
	seen := map[netip.Prefix]struct{}{}
	var out []netip.Prefix
	for _, o := range objs {
		if o == nil {
			continue
		}
		for _, c := range o.Spec.CIDRs {
			p, ok := parsePrefix(c)
			if !ok || !f.Matches(p.Addr()) {
				continue
			}
			if _, dup := seen[p]; dup {
				continue
			}
			seen[p] = struct{}{}
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return out
}

// sameServiceCIDRs reports an update of a ServiceCIDR that leaves its
// spec.cidrs alone, such as a status change or the start of its deletion (a
// terminating ServiceCIDR still counts): the rules do not depend on it.
func sameServiceCIDRs(old, cur any) bool {
	o, ok1 := old.(*networkingv1.ServiceCIDR)
	c, ok2 := cur.(*networkingv1.ServiceCIDR)
	return ok1 && ok2 && slices.Equal(o.Spec.CIDRs, c.Spec.CIDRs)
}
