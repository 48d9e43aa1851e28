package syncer

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// mapSource is a source backed by maps, counting how often each Service is
// read.
type mapSource struct {
	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName][]*discovery.EndpointSlice
	reads    map[types.NamespacedName]int
}

func newMapSource() *mapSource {
	return &mapSource{
		services: map[types.NamespacedName]*v1.Service{},
		slices:   map[types.NamespacedName][]*discovery.EndpointSlice{},
		reads:    map[types.NamespacedName]int{},
	}
}

func (m *mapSource) service(nn types.NamespacedName) *v1.Service {
	m.reads[nn]++
	return m.services[nn]
}

func (m *mapSource) endpointSlices(nn types.NamespacedName) []*discovery.EndpointSlice {
	return m.slices[nn]
}

func (m *mapSource) serviceNames() []types.NamespacedName {
	var out []types.NamespacedName
	for nn := range m.services {
		out = append(out, nn)
	}
	return out
}

// put adds Service ns/name with ClusterIP 172.30.<i>.<j> and ports 80 and
// 443, and one slice with the given endpoint IPs.
func (m *mapSource) put(ns, name string, n int, epIPs ...string) types.NamespacedName {
	nn := types.NamespacedName{Namespace: ns, Name: name}
	cip := fmt.Sprintf("172.30.%d.%d", n/250, n%250+1)
	m.services[nn] = svc(func(s *v1.Service) {
		s.Namespace, s.Name, s.ResourceVersion = ns, name, ""
		s.Spec.ClusterIP, s.Spec.ClusterIPs = cip, []string{cip}
		s.Spec.Ports = []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}, {Name: "https", Port: 443, Protocol: v1.ProtocolTCP}}
	})
	var eps []discovery.Endpoint
	for _, a := range epIPs {
		eps = append(eps, ep(a))
	}
	es := slice(name+"-x", discovery.AddressTypeIPv4, []discovery.EndpointPort{port("http", 8080, v1.ProtocolTCP), port("https", 8443, v1.ProtocolTCP)}, eps...)
	es.Namespace, es.ResourceVersion = ns, ""
	es.Labels[discovery.LabelServiceName] = name
	m.slices[nn] = []*discovery.EndpointSlice{es}
	return nn
}

func set(nns ...types.NamespacedName) map[types.NamespacedName]struct{} {
	m := map[types.NamespacedName]struct{}{}
	for _, nn := range nns {
		m[nn] = struct{}{}
	}
	return m
}

func checkSorted(t *testing.T, st *proxier.State) {
	t.Helper()
	if !slices.IsSortedFunc(st.Services, func(a, b *proxier.Service) int { return compareNames(a.Name, b.Name) }) {
		t.Errorf("services not sorted")
	}
}

func TestFamilyStateCostFollowsChange(t *testing.T) {
	src := newMapSource()
	var all []types.NamespacedName
	for i := range 100 {
		all = append(all, src.put(fmt.Sprintf("ns%d", i%7), fmt.Sprintf("svc%03d", i), i, "10.0.0.1", "10.0.0.2"))
	}
	fs := newFamilyState(proxier.IPv4)
	first := fs.update(src, nil, true, "node", "zone-a", nopReporter{})
	if got := len(first.state.Services); got != 200 {
		t.Fatalf("full build: %d service ports, want 200", got)
	}
	if first.changed != 100 || first.endpoints != 400 || first.changedEndpoints != 400 {
		t.Errorf("full build: changed=%d endpoints=%d changedEndpoints=%d, want 100, 400 and 400", first.changed, first.endpoints, first.changedEndpoints)
	}
	if first.state.NodeName != "node" || first.state.NodeZone != "zone-a" || first.state.Family != proxier.IPv4 {
		t.Errorf("state header = %+v", first.state)
	}
	checkSorted(t, first.state)

	// One Service gains an endpoint: only it is read, only its ports get new
	// pointers.
	clear(src.reads)
	changed := all[42]
	src.put(changed.Namespace, changed.Name, 42, "10.0.0.1", "10.0.0.2", "10.0.0.3")
	second := fs.update(src, set(changed), false, "node", "zone-a", nopReporter{})
	if len(src.reads) != 1 || src.reads[changed] != 1 {
		t.Errorf("reads = %v, want only %v once", src.reads, changed)
	}
	// The new address is an endpoint of both ports: two changes.
	if second.changed != 1 || second.endpoints != 402 || second.changedEndpoints != 2 {
		t.Errorf("changed=%d endpoints=%d changedEndpoints=%d, want 1, 402 and 2", second.changed, second.endpoints, second.changedEndpoints)
	}
	checkSorted(t, second.state)
	if len(second.state.Services) != len(first.state.Services) {
		t.Fatalf("%d ports, want %d", len(second.state.Services), len(first.state.Services))
	}
	for i, s := range second.state.Services {
		old := first.state.Services[i]
		isChanged := s.Name.Namespace == changed.Namespace && s.Name.Name == changed.Name
		if isChanged == (s == old) {
			t.Errorf("%v: pointer reused=%v, want %v", s.Name, s == old, !isChanged)
		}
		if isChanged && len(old.Endpoints) != 2 {
			t.Errorf("previous State was mutated: %v has %d endpoints", old.Name, len(old.Endpoints))
		}
	}

	// A change event that changes nothing keeps every pointer.
	third := fs.update(src, set(all[1], all[2]), false, "node", "zone-a", nopReporter{})
	if third.changed != 0 || third.changedEndpoints != 0 {
		t.Errorf("no-op change counted as %d changed services, %d endpoints", third.changed, third.changedEndpoints)
	}
	if &third.state.Services[0] != &second.state.Services[0] {
		t.Errorf("no-op change rebuilt the service list")
	}

	// Deletion removes both ports.
	delete(src.services, all[7])
	fourth := fs.update(src, set(all[7]), false, "node", "zone-b", nopReporter{})
	if len(fourth.state.Services) != 198 || fourth.changed != 1 || fourth.endpoints != 398 || fourth.changedEndpoints != 4 {
		t.Errorf("after delete: %d ports, changed=%d, endpoints=%d, changedEndpoints=%d", len(fourth.state.Services), fourth.changed, fourth.endpoints, fourth.changedEndpoints)
	}
	if fourth.state.NodeZone != "zone-b" {
		t.Errorf("zone not updated")
	}
	for _, s := range fourth.state.Services {
		if s.Name.Name == all[7].Name {
			t.Errorf("deleted service %v still present", s.Name)
		}
	}
	if len(second.state.Services) != 200 {
		t.Errorf("an earlier State changed length")
	}
}

// TestFamilyStateIncrementalMatchesFull applies random changes and checks
// that the incremental State always equals one built from scratch.
func TestFamilyStateIncrementalMatchesFull(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := newMapSource()
	fs := newFamilyState(proxier.IPv4)
	fs.update(src, nil, true, "n", "", nopReporter{})
	for round := range 200 {
		var touched []types.NamespacedName
		for range rng.IntN(5) + 1 {
			i := rng.IntN(40)
			ns, name := fmt.Sprintf("ns%d", i%3), fmt.Sprintf("s%02d", i)
			nn := types.NamespacedName{Namespace: ns, Name: name}
			switch rng.IntN(3) {
			case 0:
				delete(src.services, nn)
				delete(src.slices, nn)
			default:
				var ips []string
				for range rng.IntN(4) {
					ips = append(ips, fmt.Sprintf("10.1.%d.%d", rng.IntN(3), rng.IntN(3)+1))
				}
				src.put(ns, name, i, ips...)
			}
			touched = append(touched, nn)
		}
		inc := fs.update(src, set(touched...), false, "n", "", nopReporter{})
		full := newFamilyState(proxier.IPv4).update(src, nil, true, "n", "", nopReporter{})
		if !reflect.DeepEqual(inc.state, full.state) {
			t.Fatalf("round %d: incremental state differs from full rebuild:\n%s", round, cmp.Diff(full.state, inc.state, cmpAddrs))
		}
		if inc.endpoints != full.endpoints {
			t.Fatalf("round %d: endpoints %d, want %d", round, inc.endpoints, full.endpoints)
		}
	}
}

func TestMergeServices(t *testing.T) {
	mk := func(ns, name, port string) *proxier.Service {
		return &proxier.Service{Name: proxier.ServicePortName{Namespace: ns, Name: name, Port: port, Protocol: proxier.TCP}}
	}
	a1, a2, c1 := mk("a", "x", "1"), mk("a", "x", "2"), mk("c", "z", "1")
	prev := []*proxier.Service{a1, a2, c1}
	b1n, a1n := mk("b", "y", "1"), mk("a", "x", "1")
	got := mergeServices(prev, []*proxier.Service{a1n, b1n}, set(
		types.NamespacedName{Namespace: "a", Name: "x"},
		types.NamespacedName{Namespace: "b", Name: "y"}))
	want := []*proxier.Service{a1n, b1n, c1}
	if !slices.Equal(got, want) {
		t.Errorf("merge = %v, want %v", got, want)
	}
	if prev[0] != a1 || prev[1] != a2 || len(prev) != 3 {
		t.Errorf("prev modified")
	}

}
