package e2e

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestBadInput: malformed EndpointSlices and Services are skipped (counted
// in svcproxy_invalid_objects_total); svcproxy keeps running and every other
// Service keeps working.
func TestBadInput(t *testing.T) {
	c := begin(t)
	good := c.createService("good", v1.ServiceSpec{})
	c.slice(good, at(backends[0], harness.NodeName))
	bad := c.createService("bad", v1.ServiceSpec{
		// An IPv6 external IP on an IPv4 Service: the wrong family.
		ExternalIPs: []string{"2001:db8::1"}})
	before := metricValue(c, "svcproxy_invalid_objects_total")
	// Each cause has its own series, so one cause cannot stand in for
	// another.
	series := map[string]string{
		"wrong-family external IP": `svcproxy_invalid_objects_total{kind="Service",reason="WrongFamilyExternalIP"}`,
		"slice without a label":    `svcproxy_invalid_objects_total{kind="EndpointSlice",reason="MissingServiceName"}`,
		"port without a number":    `svcproxy_invalid_objects_total{kind="EndpointSlice",reason="InvalidPort"}`,
	}
	was := map[string]float64{}
	for what, name := range series {
		was[what] = metricValue(c, name)
	}
	sliceClient := env.Client.DiscoveryV1().EndpointSlices("features")
	for _, es := range []*discovery.EndpointSlice{
		{ // no kubernetes.io/service-name label
			ObjectMeta:  metav1.ObjectMeta{Name: "no-label"},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   []discovery.Endpoint{{Addresses: []string{backends[1].IP}}},
			Ports:       []discovery.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To[int32](8080)}},
		},
		{ // a port without a number
			ObjectMeta:  metav1.ObjectMeta{Name: "no-port", Labels: map[string]string{discovery.LabelServiceName: bad.Name}},
			AddressType: discovery.AddressTypeIPv4,
			Endpoints:   []discovery.Endpoint{{Addresses: []string{backends[1].IP}}},
			Ports:       []discovery.EndpointPort{{Name: ptr.To("tcp")}},
		},
	} {
		if _, err := sliceClient.Create(c.ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create EndpointSlice %s: %v", es.Name, err)
		}
		name := es.Name
		t.Cleanup(func() { sliceClient.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	target := net.JoinHostPort(good.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("the good Service works", func() string {
		rs = c.connect(client, harness.ClientOptions{Target: target, Count: 5})
		return landed(rs, backends[:1], client.IP, "")
	})
	c.eventually("each bad input is counted under its own reason", func() string {
		var missing []string
		for what, name := range series {
			if v := metricValue(c, name); v <= was[what] {
				missing = append(missing, what+": "+name+" = "+strconv.FormatFloat(v, 'f', -1, 64))
			}
		}
		return strings.Join(missing, "; ")
	})
	if exited, err := env.Svcproxy().Exited(); exited {
		t.Fatalf("svcproxy exited: %v", err)
	}
	t.Logf("RESULT bad input (no-label slice, port without number, wrong-family external IP): good Service %s; svcproxy_invalid_objects_total %v -> %v",
		harness.FormatTally(harness.Tally(rs)), before, metricValue(c, "svcproxy_invalid_objects_total"))
}
