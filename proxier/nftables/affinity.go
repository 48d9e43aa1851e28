package nftables

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/proxier"
)

// Session affinity entries live in dynamic sets the packet path fills
// (client . service address . port . endpoint address . port), so a sync
// does not know them. The pick chains never follow an entry to an
// endpoint the Service no longer balances over, but kube-proxy forgets
// such entries with the endpoint (an endpoint that comes back starts
// afresh), and they would take room until they time out (3 hours by
// default). After a sync that removes an affinity endpoint the proxier
// reads the affinity sets concerned and deletes the entries whose endpoint
// is no longer one the Service balances over. Syncs that remove no
// affinity endpoint never read anything.

// staleAffinity names entries to forget: those of set setName whose
// service address and port is in dests and whose endpoint is not in live.
type staleAffinity struct {
	setName string
	dests   map[netip.AddrPort]bool // service address, port
	live    map[netip.AddrPort]bool // endpoint address, port
}

// affinityEndpoints is every endpoint a service port's plan balances over.
func affinityEndpoints(sp *proxier.ServicePlan) map[netip.AddrPort]bool {
	out := map[netip.AddrPort]bool{}
	for _, eps := range [][]proxier.Endpoint{sp.InternalEndpoints, sp.ClusterEndpoints, sp.ExternalEndpoints, sp.LocalEndpoints} {
		for _, e := range eps {
			out[netip.AddrPortFrom(e.IP, uint16(e.Port))] = true
		}
	}
	return out
}

// staleAffinityOf compares a service's render before and after a sync (after
// is nil when the service went away) and returns what to forget, or nil.
func staleAffinityOf(before, after *svcRender) []*staleAffinity {
	if before == nil || before.affinity == nil {
		return nil
	}
	dests, live := map[netip.AddrPort]bool{}, map[netip.AddrPort]bool{}
	for _, d := range before.affDests {
		dests[d] = true
	}
	if after != nil && after.affinity != nil && *after.affinity == *before.affinity {
		live = affinityEndpoints(&after.plan)
	}
	for ep := range affinityEndpoints(&before.plan) {
		if !live[ep] {
			a := before.affinity
			return []*staleAffinity{{setName: affinitySet(a.proto, a.timeout), dests: dests, live: live}}
		}
	}
	return nil
}

// staleAffinities is what a partial sync has to forget: removed are the
// renders of services no longer in the State (a changed service is a new
// *Service, so its old render is among them), changed the services rendered
// anew.
func staleAffinities(removed []*svcRender, changed []*proxier.Service, renders map[*proxier.Service]*svcRender) []*staleAffinity {
	before := map[proxier.ServicePortName]*svcRender{}
	for _, r := range removed {
		if r.affinity != nil {
			before[r.plan.Svc.Name] = r
		}
	}
	if len(before) == 0 {
		return nil
	}
	var out []*staleAffinity
	for _, svc := range changed {
		if old, ok := before[svc.Name]; ok {
			out = append(out, staleAffinityOf(old, renders[svc])...)
			delete(before, svc.Name)
		}
	}
	for _, old := range before {
		out = append(out, staleAffinityOf(old, nil)...)
	}
	return out
}

// byAffinitySet groups stale by set.
func byAffinitySet(stale []*staleAffinity) map[string][]*staleAffinity {
	bySet := map[string][]*staleAffinity{}
	for _, s := range stale {
		bySet[s.setName] = append(bySet[s.setName], s)
	}
	return bySet
}

// A full sync replaces the whole table, dynamic sets included. So that
// session affinity survives it (and a restart of svcproxy, which starts
// with one), the full sync reads the affinity sets first and writes back,
// with their remaining time, the entries whose service still has affinity
// in the same set and whose endpoint it still balances over.

// affinityEntry is one entry read from an affinity set.
type affinityEntry struct {
	client   netip.Addr
	dest     netip.AddrPort // service address, port
	endpoint netip.AddrPort
	expires  int // seconds left
}

// affinityTargets is, per affinity set, per service address and port, the
// endpoints the service balances over.
type affinityTargets map[string]map[netip.AddrPort]map[netip.AddrPort]bool

func (t affinityTargets) valid(setName string, e affinityEntry) bool {
	return t[setName][e.dest][e.endpoint]
}

// validAffinity is what affinity entries may point to under renders.
func validAffinity(renders map[*proxier.Service]*svcRender) affinityTargets {
	bySet := affinityTargets{}
	for _, r := range renders {
		if r.affinity == nil {
			continue
		}
		live := affinityEndpoints(&r.plan)
		name := affinitySet(r.affinity.proto, r.affinity.timeout)
		if bySet[name] == nil {
			bySet[name] = map[netip.AddrPort]map[netip.AddrPort]bool{}
		}
		for _, d := range r.affDests {
			bySet[name][d] = live
		}
	}
	return bySet
}
