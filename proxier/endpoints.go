package proxier

import "slices"

// categorize splits svc's endpoints into the cluster and local sets, applying
// topology and the terminating-endpoint fallback as kube-proxy does.
func categorize(st *State, svc *Service) (cluster, local, all []Endpoint) {
	if svc.UsesClusterEndpoints() {
		useTopology := topologyFilter(st, svc)
		cluster = filter(svc.Endpoints, func(e Endpoint) bool { return e.Ready && useTopology(e) })
		if len(cluster) == 0 {
			cluster = filter(svc.Endpoints, func(e Endpoint) bool { return e.Serving && e.Terminating })
		}
	}
	if svc.UsesLocalEndpoints() {
		local = filter(svc.Endpoints, func(e Endpoint) bool { return e.IsLocal && e.Ready })
		if len(local) == 0 {
			local = filter(svc.Endpoints, func(e Endpoint) bool { return e.IsLocal && e.Serving && e.Terminating })
		}
	}
	switch {
	case len(local) == 0:
		all = cluster
	case len(cluster) == 0:
		all = local
	default:
		all = append(slices.Clone(cluster), local...)
		slices.SortFunc(all, compareEndpoints)
		all = slices.CompactFunc(all, func(a, b Endpoint) bool { return compareEndpoints(a, b) == 0 })
	}
	return cluster, local, all
}

// topologyFilter returns the predicate cluster endpoints must pass under the
// service's topology hints: same node when every ready endpoint carries node
// hints and one names this node; else same zone when every ready endpoint
// carries zone hints and one names this node's zone; else everything.
func topologyFilter(st *State, svc *Service) func(Endpoint) bool {
	all := func(Endpoint) bool { return true }
	var ready int
	allNode, anyNode, allZone, anyZone := true, false, true, false
	for _, e := range svc.Endpoints {
		if !e.Ready {
			continue
		}
		ready++
		if len(e.NodeHints) == 0 {
			allNode = false
		} else if slices.Contains(e.NodeHints, st.NodeName) {
			anyNode = true
		}
		if len(e.ZoneHints) == 0 {
			allZone = false
		} else if st.NodeZone != "" && slices.Contains(e.ZoneHints, st.NodeZone) {
			anyZone = true
		}
	}
	if ready == 0 {
		return all
	}
	if allNode && anyNode {
		return func(e Endpoint) bool { return slices.Contains(e.NodeHints, st.NodeName) }
	}
	if allZone && anyZone {
		return func(e Endpoint) bool { return slices.Contains(e.ZoneHints, st.NodeZone) }
	}
	return all
}

func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var out []Endpoint
	for _, e := range eps {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func compareEndpoints(a, b Endpoint) int {
	if c := a.IP.Compare(b.IP); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}
