package nftables

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

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

// forgetAffinity deletes the entries stale names, one transaction per map.
// An entry may time out between the read and the delete, which fails the
// transaction: it is then read and tried once more.
func (p *Proxier) forgetAffinity(ctx context.Context, stale []*staleAffinity) {
	for name, ss := range byAffinityMap(stale) {
		var err error
		n := 0
		for try := 0; try < 2; try++ {
			if n, err = p.forgetAffinityOnce(ctx, name, ss); err == nil {
				break
			}
		}
		if err != nil {
			klog.ErrorS(err, "Could not forget session affinity to removed endpoints", "family", p.cfg.Family, "map", name)
			continue
		}
		if n > 0 {
			klog.V(2).InfoS("Forgot session affinity to removed endpoints", "family", p.cfg.Family, "map", name, "entries", n)
		}
	}
}

// byAffinityMap groups stale by map.
func byAffinityMap(stale []*staleAffinity) map[string][]*staleAffinity {
	byMap := map[string][]*staleAffinity{}
	for _, s := range stale {
		byMap[s.mapName] = append(byMap[s.mapName], s)
	}
	return byMap
}

// staleEntries reads the affinity map name and returns the entries ss
// names.
func (p *Proxier) staleEntries(ctx context.Context, name string, ss []*staleAffinity) ([]elem, error) {
	elems, err := p.nft.ListElements(ctx, "map", name)
	if knftables.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sp := mustSpec(name)
	var stale []elem
	for _, e := range elems {
		key, kerr := parseTuple(sp.key, e.Key)
		value, verr := parseTuple(sp.value, e.Value)
		if kerr != nil || verr != nil {
			continue
		}
		dest, ep := addrPortOf(key[1], key[2]), addrPortOf(value[0], value[1])
		for _, s := range ss {
			if s.dests[dest] && !s.live[ep] {
				stale = append(stale, elem{set: name, key: key})
				break
			}
		}
	}
	return stale, nil
}

// addrPortOf is an address and a port atom as one value.
func addrPortOf(addr, port atom) netip.AddrPort {
	return netip.AddrPortFrom(addr.addr, uint16(port.num))
}

// staleAffinityOps returns the deletion of the entries stale names, to go
// into the same netlink batch as the sync that removes their endpoints (so
// that no new connection follows an entry to an endpoint already gone). ok
// is false when a map could not be read.
func (p *Proxier) staleAffinityOps(ctx context.Context, stale []*staleAffinity) (ops []elemOp, ok bool) {
	byMap := byAffinityMap(stale)
	names := slices.Sorted(maps.Keys(byMap))
	for _, name := range names {
		stale, err := p.staleEntries(ctx, name, byMap[name])
		if err != nil {
			return nil, false
		}
		for _, e := range stale {
			ops = append(ops, elemOp{e: e})
		}
	}
	return ops, true
}

func (p *Proxier) forgetAffinityOnce(ctx context.Context, name string, ss []*staleAffinity) (int, error) {
	stale, err := p.staleEntries(ctx, name, ss)
	if err != nil || len(stale) == 0 {
		return 0, err
	}
	tx := p.nft.NewTransaction()
	for _, e := range stale {
		tx.Delete(p.element(e))
	}
	if err := p.nft.Run(ctx, tx); err != nil {
		return 0, fmt.Errorf("delete %d entries: %w", tx.NumOperations(), err)
	}
	return tx.NumOperations(), nil
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

// readAffinityMap reads a dynamic affinity map through nft's JSON output
// (knftables does not report timeouts).
type affinityReader func(ctx context.Context, family, mapName string) ([]affinityEntry, error)

func execReadAffinity(ctx context.Context, family, mapName string) ([]affinityEntry, error) {
	out, err := exec.CommandContext(ctx, "nft", "--json", "list", "map", family, TableName, mapName).Output()
	if err != nil {
		return nil, err
	}
	return parseAffinityJSON(out)
}

// parseAffinityJSON reads the entries of `nft --json list map` output.
func parseAffinityJSON(out []byte) ([]affinityEntry, error) {
	var doc struct {
		Nftables []struct {
			Map *struct {
				Elem [][2]json.RawMessage `json:"elem"`
			} `json:"map"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	type concat struct {
		Concat []any `json:"concat"`
	}
	// Addresses are strings, ports numbers.
	addr := func(v any) netip.Addr {
		s, _ := v.(string)
		a, _ := netip.ParseAddr(s)
		return a
	}
	port := func(v any) uint16 {
		f, _ := v.(float64)
		return uint16(f)
	}
	var entries []affinityEntry
	for _, o := range doc.Nftables {
		if o.Map == nil {
			continue
		}
		for _, kv := range o.Map.Elem {
			var k struct {
				Elem struct {
					Val     concat `json:"val"`
					Expires int    `json:"expires"`
				} `json:"elem"`
			}
			var v concat
			if json.Unmarshal(kv[0], &k) != nil || json.Unmarshal(kv[1], &v) != nil || len(k.Elem.Val.Concat) != 3 || len(v.Concat) != 2 {
				continue
			}
			key := k.Elem.Val.Concat
			e := affinityEntry{client: addr(key[0]), dest: netip.AddrPortFrom(addr(key[1]), port(key[2])),
				endpoint: netip.AddrPortFrom(addr(v.Concat[0]), port(v.Concat[1])), expires: k.Elem.Expires}
			if e.client.IsValid() && e.dest.Addr().IsValid() && e.endpoint.Addr().IsValid() {
				entries = append(entries, e)
			}
		}
	}
	return entries, nil
}

// carriedAffinity returns the add-element commands (nft -f syntax) that
// put back the affinity entries still valid under renders, read from the
// kernel's maps of the affinity keys in use. Errors only lose affinity:
// they are logged, not returned.
func (p *Proxier) carriedAffinity(ctx context.Context, renders map[*proxier.Service]*svcRender) []string {
	byMap := validAffinity(renders)
	names := make([]string, 0, len(byMap))
	for n := range byMap {
		names = append(names, n)
	}
	slices.Sort(names)
	var lines []string
	for _, name := range names {
		entries, err := p.readAffinity(ctx, string(p.f.family), name)
		if err != nil {
			// Most often the map does not exist yet.
			klog.V(4).InfoS("Could not read an affinity map", "family", p.cfg.Family, "map", name, "err", err)
			continue
		}
		var elems []string
		for _, e := range entries {
			if byMap.valid(name, e) && e.expires > 0 {
				elems = append(elems, fmt.Sprintf("%s . %s . %d timeout %ds : %s . %d",
					e.client, e.dest.Addr(), e.dest.Port(), e.expires, e.endpoint.Addr(), e.endpoint.Port()))
			}
		}
		for len(elems) > 0 {
			n := min(len(elems), maxGroup)
			lines = append(lines, fmt.Sprintf("add element %s %s %s { %s }", p.f.family, TableName, name, strings.Join(elems[:n], ", ")))
			elems = elems[n:]
		}
	}
	return lines
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

// pruneAffinity deletes, after a full sync that kept the affinity maps
// (refill), the entries no longer valid under renders: those of services
// gone or without affinity, and those pinned to endpoints gone.
func (p *Proxier) pruneAffinity(ctx context.Context, renders map[*proxier.Service]*svcRender) {
	if p.reader == nil {
		return
	}
	shape, err := p.reader.readShape(ctx)
	if err != nil {
		klog.V(2).InfoS("Could not list maps to prune session affinity", "family", p.cfg.Family, "err", err)
		return
	}
	byMap := validAffinity(renders)
	var names []string
	for name := range shape.sets {
		if shape.maps[name] && isAffinityMap(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		// An entry may expire between the read and the delete, failing
		// the transaction: it is then read and tried once more.
		var err error
		for try := 0; try < 2; try++ {
			var entries []affinityEntry
			if entries, err = p.readAffinity(ctx, string(p.f.family), name); err != nil {
				break
			}
			tx := p.nft.NewTransaction()
			for _, e := range entries {
				if !byMap.valid(name, e) {
					tx.Delete(&knftables.Element{Map: name, Key: []string{e.client.String(), e.dest.Addr().String(), strconv.Itoa(int(e.dest.Port()))}})
				}
			}
			if tx.NumOperations() == 0 {
				break
			}
			if err = p.nft.Run(ctx, tx); err == nil {
				break
			}
		}
		if err != nil {
			klog.V(2).InfoS("Could not prune session affinity", "family", p.cfg.Family, "map", name, "err", err)
		}
	}
}
