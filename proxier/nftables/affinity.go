package nftables

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/proxier"
)

// Session affinity entries live in dynamic maps the packet path fills
// (client . service address . port → endpoint address . port), so a sync
// does not know them. When a Service with affinity loses an endpoint, the
// clients pinned to that endpoint would go on being sent to it until their
// entry times out (3 hours by default); kube-proxy instead forgets them
// with the endpoint. After such a sync the proxier reads the affinity maps
// concerned and deletes the entries whose endpoint is no longer one the
// Service balances over. Syncs that remove no affinity endpoint never read
// anything.

// staleAffinity names entries to forget: those of map whose service address
// and port is in dests and whose endpoint is not in live.
type staleAffinity struct {
	mapName string
	dests   map[netip.AddrPort]bool // service address, port
	live    map[netip.AddrPort]bool // endpoint address, port
}

// affinityEndpoints is every endpoint a rendered service balances over.
func affinityEndpoints(r *svcRender) map[netip.AddrPort]bool {
	out := map[netip.AddrPort]bool{}
	for _, eps := range [][]proxier.Endpoint{r.plan.InternalEndpoints, r.plan.ClusterEndpoints, r.plan.LocalEndpoints} {
		for _, e := range eps {
			out[netip.AddrPortFrom(e.IP, uint16(e.Port))] = true
		}
	}
	return out
}

// staleAffinityOf compares a service's render before and after a sync (after
// is nil when the service went away) and returns what to forget (in its
// map and in the local pools' map), or nil.
func staleAffinityOf(before, after *svcRender) []*staleAffinity {
	if before == nil || before.affinity == nil {
		return nil
	}
	dests, live := map[netip.AddrPort]bool{}, map[netip.AddrPort]bool{}
	for _, d := range before.affDests {
		dests[d] = true
	}
	if after != nil && after.affinity != nil && *after.affinity == *before.affinity {
		live = affinityEndpoints(after)
	}
	for ep := range affinityEndpoints(before) {
		if !live[ep] {
			a := before.affinity
			return []*staleAffinity{
				{mapName: affinityMap(a.proto, a.timeout), dests: dests, live: live},
				{mapName: affinityLocalMap(a.proto, a.timeout), dests: dests, live: live},
			}
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

// byAffinityMap groups stale by map.
func byAffinityMap(stale []*staleAffinity) map[string][]*staleAffinity {
	byMap := map[string][]*staleAffinity{}
	for _, s := range stale {
		byMap[s.mapName] = append(byMap[s.mapName], s)
	}
	return byMap
}

// A full sync replaces the whole table, dynamic maps included. So that
// session affinity survives it (and a restart of svcproxy, which starts
// with one), the full sync reads the affinity maps first and writes back,
// with their remaining time, the entries whose service still has affinity
// in the same map and whose endpoint it still balances over.

// affinityEntry is one entry read from an affinity map.
type affinityEntry struct {
	client   netip.Addr
	dest     netip.AddrPort // service address, port
	endpoint netip.AddrPort
	expires  int // seconds left
}

// affinityTargets is, per affinity map, per service address and port, the
// endpoints the service balances over.
type affinityTargets map[string]map[netip.AddrPort]map[netip.AddrPort]bool

func (t affinityTargets) valid(mapName string, e affinityEntry) bool {
	return t[mapName][e.dest][e.endpoint]
}

// validAffinity is what affinity entries may point to under renders.
func validAffinity(renders map[*proxier.Service]*svcRender) affinityTargets {
	byMap := affinityTargets{}
	for _, r := range renders {
		if r.affinity == nil {
			continue
		}
		live := affinityEndpoints(r)
		for _, name := range []string{affinityMap(r.affinity.proto, r.affinity.timeout), affinityLocalMap(r.affinity.proto, r.affinity.timeout)} {
			if byMap[name] == nil {
				byMap[name] = map[netip.AddrPort]map[netip.AddrPort]bool{}
			}
			for _, d := range r.affDests {
				byMap[name][d] = live
			}
		}
	}
	return byMap
}
