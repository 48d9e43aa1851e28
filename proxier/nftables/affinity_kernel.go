package nftables

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strings"

	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
)

// The writer's part of session affinity: it reads the dynamic sets, deletes
// the entries a sync makes stale and carries the valid ones over a full
// sync that replaces the table (see affinity.go for what is stale and
// valid).

// forgetAffinity deletes the entries stale names, one transaction per set.
func (w *writer) forgetAffinity(ctx context.Context, stale []*staleAffinity) {
	for name, ss := range byAffinitySet(stale) {
		n, err := w.deleteEntries(ctx, name, func() ([]elem, error) { return w.staleEntries(ctx, name, ss) })
		if err != nil {
			klog.ErrorS(err, "Could not forget session affinity to removed endpoints", "family", w.family, "set", name)
			continue
		}
		if n > 0 {
			klog.V(2).InfoS("Forgot session affinity to removed endpoints", "family", w.family, "set", name, "entries", n)
		}
	}
}

// deleteEntries deletes from set name, in one transaction, the entries
// pick reads. An entry may time out between the read and the delete, which
// fails the transaction: it is then read and tried once more.
func (w *writer) deleteEntries(ctx context.Context, name string, pick func() ([]elem, error)) (int, error) {
	var err error
	for try := 0; try < 2; try++ {
		var es []elem
		if es, err = pick(); err != nil || len(es) == 0 {
			return 0, err
		}
		tx := w.nft.NewTransaction()
		for _, e := range es {
			tx.Delete(element(e))
		}
		if err = w.nft.Run(ctx, tx); err == nil {
			return len(es), nil
		}
		err = fmt.Errorf("delete %d entries: %w", len(es), err)
	}
	return 0, err
}

// staleEntries reads the affinity set name and returns the entries ss
// names.
func (w *writer) staleEntries(ctx context.Context, name string, ss []*staleAffinity) ([]elem, error) {
	elems, err := w.nft.ListElements(ctx, "set", name)
	if knftables.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var stale []elem
	for _, e := range elems {
		key, err := parseTuple(affinityKeyFields, e.Key)
		if err != nil {
			continue
		}
		dest, ep := addrPortOf(key[1], key[2]), addrPortOf(key[3], key[4])
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
	return netip.AddrPortFrom(addr.addr(), uint16(port.num))
}

// staleAffinityOps returns the deletion of the entries stale names, to go
// into the same netlink batch as the sync that removes their endpoints (so
// that no new connection follows an entry to an endpoint already gone). ok
// is false when a set could not be read.
func (w *writer) staleAffinityOps(ctx context.Context, stale []*staleAffinity) (ops []elemOp, ok bool) {
	bySet := byAffinitySet(stale)
	names := slices.Sorted(maps.Keys(bySet))
	for _, name := range names {
		stale, err := w.staleEntries(ctx, name, bySet[name])
		if err != nil {
			return nil, false
		}
		for _, e := range stale {
			ops = append(ops, elemOp{e: e})
		}
	}
	return ops, true
}

// affinityReader reads a dynamic affinity set's entries with their
// remaining time.
type affinityReader func(ctx context.Context, family, setName string) ([]affinityEntry, error)

// execReadAffinity reads through nft's JSON output (knftables does not
// report timeouts). Where the kernel holds a map of that name (the layout
// before affinity sets), its entries are read as such, so that affinity
// survives an upgrade.
func execReadAffinity(ctx context.Context, family, setName string) ([]affinityEntry, error) {
	out, err := exec.CommandContext(ctx, "nft", "--json", "list", "set", family, TableName, setName).Output()
	if err != nil {
		var merr error
		if out, merr = exec.CommandContext(ctx, "nft", "--json", "list", "map", family, TableName, setName).Output(); merr != nil {
			return nil, err
		}
	}
	return parseAffinityJSON(out)
}

// parseAffinityJSON reads the entries of `nft --json list set` output:
// keys of client . service address . port . endpoint address . port (or,
// of a map of the layout before, client . service address . port keys and
// endpoint address . port values).
func parseAffinityJSON(out []byte) ([]affinityEntry, error) {
	type members struct {
		Elem []json.RawMessage `json:"elem"`
	}
	var doc struct {
		Nftables []struct {
			Set *members `json:"set"`
			Map *members `json:"map"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	type concat struct {
		Concat []any `json:"concat"`
	}
	type keyed struct {
		Elem struct {
			Val     concat `json:"val"`
			Expires int    `json:"expires"`
		} `json:"elem"`
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
	entries := []affinityEntry{}
	add := func(k []any, expires int) {
		e := affinityEntry{client: addr(k[0]), dest: netip.AddrPortFrom(addr(k[1]), port(k[2])),
			endpoint: netip.AddrPortFrom(addr(k[3]), port(k[4])), expires: expires}
		if e.client.IsValid() && e.dest.Addr().IsValid() && e.endpoint.Addr().IsValid() {
			entries = append(entries, e)
		}
	}
	for _, o := range doc.Nftables {
		if o.Set != nil {
			for _, raw := range o.Set.Elem {
				var k keyed
				if json.Unmarshal(raw, &k) == nil && len(k.Elem.Val.Concat) == 5 {
					add(k.Elem.Val.Concat, k.Elem.Expires)
				}
			}
		}
		if o.Map != nil {
			for _, raw := range o.Map.Elem {
				var kv [2]json.RawMessage
				var k keyed
				var v concat
				if json.Unmarshal(raw, &kv) != nil || json.Unmarshal(kv[0], &k) != nil || json.Unmarshal(kv[1], &v) != nil ||
					len(k.Elem.Val.Concat) != 3 || len(v.Concat) != 2 {
					continue
				}
				add(append(slices.Clip(k.Elem.Val.Concat), v.Concat...), k.Elem.Expires)
			}
		}
	}
	return entries, nil
}

// carriedAffinity returns the add-element commands (nft -f syntax) that
// put back the affinity entries still valid under renders, read from the
// kernel's sets of the affinity keys in use. Errors only lose affinity:
// they are logged, not returned.
func (w *writer) carriedAffinity(ctx context.Context, renders map[*proxier.Service]*svcRender) []string {
	bySet := validAffinity(renders)
	names := slices.Sorted(maps.Keys(bySet))
	var lines []string
	for _, name := range names {
		entries, err := w.readAffinity(ctx, string(w.f.family), name)
		if err != nil {
			// Most often the set does not exist yet.
			klog.V(4).InfoS("Could not read an affinity set", "family", w.family, "set", name, "err", err)
			continue
		}
		var elems []string
		for _, e := range entries {
			if bySet.valid(name, e) && e.expires > 0 {
				elems = append(elems, fmt.Sprintf("%s . %s . %d . %s . %d timeout %ds",
					e.client, e.dest.Addr(), e.dest.Port(), e.endpoint.Addr(), e.endpoint.Port(), e.expires))
			}
		}
		for len(elems) > 0 {
			n := min(len(elems), maxGroup)
			lines = append(lines, fmt.Sprintf("add element %s %s %s { %s }", w.f.family, TableName, name, strings.Join(elems[:n], ", ")))
			elems = elems[n:]
		}
	}
	return lines
}

// key is the entry as its set's key.
func (e affinityEntry) key() tuple {
	return tupleOf(addrAtom(e.client), addrAtom(e.dest.Addr()), portAtom(int32(e.dest.Port())),
		addrAtom(e.endpoint.Addr()), portAtom(int32(e.endpoint.Port())))
}

// pruneAffinity deletes, after a full sync that kept the affinity sets
// (refill), the entries no longer valid under renders: those of services
// gone or without affinity, and those pinned to endpoints gone.
func (w *writer) pruneAffinity(ctx context.Context, renders map[*proxier.Service]*svcRender) {
	if w.shapes == nil {
		return
	}
	shape, err := w.shapes.Shape(ctx)
	if err != nil {
		klog.V(2).InfoS("Could not list sets to prune session affinity", "family", w.family, "err", err)
		return
	}
	bySet := validAffinity(renders)
	var names []string
	for name, kind := range shape.Sets {
		if !kind.IsMap() && isAffinitySet(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		invalid := func() ([]elem, error) {
			entries, err := w.readAffinity(ctx, string(w.f.family), name)
			var es []elem
			for _, e := range entries {
				if !bySet.valid(name, e) {
					es = append(es, elem{set: name, key: e.key()})
				}
			}
			return es, err
		}
		if _, err := w.deleteEntries(ctx, name, invalid); err != nil {
			klog.V(2).InfoS("Could not prune session affinity", "family", w.family, "set", name, "err", err)
		}
	}
}
