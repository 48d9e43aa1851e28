package syncer

import (
	"net/netip"
	"reflect"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// source is where a familyState reads the current API objects from: the
// informer caches in production, maps in tests.
type source interface {
	// service returns the Service, or nil when it does not exist.
	service(nn types.NamespacedName) *v1.Service
	// endpointSlices returns the slices labelled with the Service's name.
	endpointSlices(nn types.NamespacedName) []*discovery.EndpointSlice
	// serviceNames lists every Service.
	serviceNames() []types.NamespacedName
}

// familyState keeps what was handed to one family's proxier, so the next
// State can be built from it by rebuilding only the Services that changed.
type familyState struct {
	family proxier.IPFamily
	// byService holds each Service's ports, sorted by name; absent when the
	// Service has none in this family.
	byService map[types.NamespacedName][]*proxier.Service
	// services is the sorted list handed over last time; never modified.
	services  []*proxier.Service
	endpoints int
}

func newFamilyState(f proxier.IPFamily) *familyState {
	return &familyState{family: f, byService: map[types.NamespacedName][]*proxier.Service{}}
}

// buildResult is one State and what it took to build it.
type buildResult struct {
	state *proxier.State
	// changed counts the Services whose ports differ from the previous State.
	changed int
	// changedNames are the first logNames of those Services, sorted, as
	// "namespace/name".
	changedNames []string
	// endpoints is the total number of endpoints in state;
	// changedEndpoints how many endpoints of service ports were added or
	// removed, one whose conditions or node changed counting as both.
	endpoints        int
	changedEndpoints int
}

// update rebuilds the Services named in changed (all Services when full is
// set) and returns the next State. Unchanged Services keep the very same
// *proxier.Service pointers as in the previous State, and so does a changed
// Service whose rebuilt ports are equal to the old ones; the cost is
// proportional to the number of changed Services plus one pass of pointer
// copying to assemble the sorted list.
func (fs *familyState) update(src source, changed map[types.NamespacedName]struct{}, full bool, nodeName, zone string, r reporter) buildResult {
	if full {
		changed = make(map[types.NamespacedName]struct{}, len(fs.byService))
		for nn := range fs.byService {
			changed[nn] = struct{}{}
		}
		for _, nn := range src.serviceNames() {
			changed[nn] = struct{}{}
		}
	}

	var fresh []*proxier.Service // ports of Services that really changed
	touched := map[types.NamespacedName]struct{}{}
	changedEndpoints := 0
	for nn := range changed {
		old := fs.byService[nn]
		var built []*proxier.Service
		if svc := src.service(nn); svc != nil {
			built = buildServicePorts(svc, src.endpointSlices(nn), fs.family, nodeName, r)
		}
		built, same := reuseEqual(old, built)
		if same {
			continue
		}
		touched[nn] = struct{}{}
		changedEndpoints += endpointChanges(old, built)
		fs.endpoints -= countEndpoints(old)
		fs.endpoints += countEndpoints(built)
		if len(built) == 0 {
			delete(fs.byService, nn)
		} else {
			fs.byService[nn] = built
		}
		fresh = append(fresh, built...)
	}

	if len(touched) > 0 {
		sortServices(fresh)
		fs.services = mergeServices(fs.services, fresh, touched)
	}
	return buildResult{
		state: &proxier.State{
			Family:   fs.family,
			NodeName: nodeName,
			NodeZone: zone,
			Services: fs.services,
		},
		changed:          len(touched),
		changedNames:     firstNames(touched, logNames),
		endpoints:        fs.endpoints,
		changedEndpoints: changedEndpoints,
	}
}

// endpointChanges counts the endpoints of old's and now's service ports
// that the other lacks: an endpoint is its port's name, address, node and
// conditions.
func endpointChanges(old, now []*proxier.Service) int {
	// A Service that appears or goes (every one, on a full build) changes
	// all its endpoints.
	if len(old) == 0 || len(now) == 0 {
		return countEndpoints(old) + countEndpoints(now)
	}
	type key struct {
		port        proxier.ServicePortName
		ip          netip.Addr
		num         int32
		node        string
		ready, serv bool
		term        bool
	}
	keys := func(ss []*proxier.Service) map[key]bool {
		m := map[key]bool{}
		for _, s := range ss {
			for _, e := range s.Endpoints {
				m[key{s.Name, e.IP, e.Port, e.NodeName, e.Ready, e.Serving, e.Terminating}] = true
			}
		}
		return m
	}
	a, b := keys(old), keys(now)
	n := 0
	for k := range a {
		if !b[k] {
			n++
		}
	}
	for k := range b {
		if !a[k] {
			n++
		}
	}
	return n
}

// logNames is how many changed Services a sync's log line names.
const logNames = 5

// firstNames are the first n of names in order, as "namespace/name". It
// keeps only n at a time, so a large burst costs no sort of it.
func firstNames(names map[types.NamespacedName]struct{}, n int) []string {
	less := func(a, b types.NamespacedName) bool {
		return a.Namespace < b.Namespace || a.Namespace == b.Namespace && a.Name < b.Name
	}
	if n <= 0 {
		return nil
	}
	first := make([]types.NamespacedName, 0, min(n, len(names)))
	for nn := range names {
		if len(first) == n && !less(nn, first[n-1]) {
			continue
		}
		i := len(first)
		for i > 0 && less(nn, first[i-1]) {
			i--
		}
		if len(first) == n {
			first = first[:n-1]
		}
		first = slices.Insert(first, i, nn)
	}
	out := make([]string, len(first))
	for i, nn := range first {
		out[i] = nn.String()
	}
	return out
}

// reuseEqual replaces each port in built by its equal counterpart in old, so
// that an unchanged port keeps its pointer. same reports that nothing differs.
func reuseEqual(old, built []*proxier.Service) (result []*proxier.Service, same bool) {
	same = len(old) == len(built)
	for i, b := range built {
		reused := false
		for _, o := range old {
			if o.Name == b.Name {
				if reflect.DeepEqual(o, b) {
					built[i] = o
					reused = true
				}
				break
			}
		}
		if !reused {
			same = false
		}
	}
	return built, same
}

func countEndpoints(ss []*proxier.Service) int {
	n := 0
	for _, s := range ss {
		n += len(s.Endpoints)
	}
	return n
}

func sortServices(ss []*proxier.Service) {
	slices.SortFunc(ss, func(a, b *proxier.Service) int { return compareNames(a.Name, b.Name) })
}

// mergeServices returns a new sorted list: prev without the ports of the
// touched Services, merged with fresh (sorted). prev is not modified.
func mergeServices(prev, fresh []*proxier.Service, touched map[types.NamespacedName]struct{}) []*proxier.Service {
	out := make([]*proxier.Service, 0, len(prev)+len(fresh))
	i, j := 0, 0
	for i < len(prev) || j < len(fresh) {
		if i < len(prev) {
			p := prev[i]
			if _, gone := touched[types.NamespacedName{Namespace: p.Name.Namespace, Name: p.Name.Name}]; gone {
				i++
				continue
			}
			if j >= len(fresh) || p.Name.Less(fresh[j].Name) {
				out = append(out, p)
				i++
				continue
			}
		}
		out = append(out, fresh[j])
		j++
	}
	return out
}
