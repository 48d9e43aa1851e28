package e2e

import (
	"net"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestIPv6 (dual-stack node): an IPv6 Service works through its ClusterIP
// from a pod (not masqueraded) and through its NodePort from outside
// (masqueraded), with the IPv6 proxier next to the IPv4 one.
func TestIPv6(t *testing.T) {
	c := begin(t)
	svc := c.createService("ipv6", v1.ServiceSpec{
		Type:           v1.ServiceTypeNodePort,
		IPFamilyPolicy: ptr.To(v1.IPFamilyPolicySingleStack),
		IPFamilies:     []v1.IPFamily{v1.IPv6Protocol},
	})
	var eps []discovery.Endpoint
	for _, p := range backends {
		eps = append(eps, readyEndpoint(p.IP6, harness.NodeName))
	}
	c.writeSlice(svc, discovery.AddressTypeIPv6, eps)
	if net.ParseIP(svc.Spec.ClusterIP).To4() != nil {
		t.Fatalf("ClusterIP %s is not IPv6", svc.Spec.ClusterIP)
	}
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	var rs []harness.Reply
	c.eventually("IPv6 ClusterIP from a pod", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: clusterIP, Count: 30})
		return exactly(rs, backends, client.IP6, "")
	})
	t.Logf("RESULT IPv6 ClusterIP %s from pod %s: %s, source kept", clusterIP, client.IP6, harness.FormatTally(harness.Tally(rs)))

	nodePort := net.JoinHostPort(harness.NodeIP6, strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
	c.eventually("IPv6 NodePort from outside", func() string {
		var err error
		rs, err = env.ExternalConnect(c.ctx, harness.ClientOptions{Proto: "tcp", Target: nodePort, Count: 30, Timeout: time.Second})
		if err != nil {
			return err.Error()
		}
		return exactly(rs, backends, "", harness.GatewayIP6)
	})
	t.Logf("RESULT IPv6 NodePort %s from outside (%s): %s, seen from %s (masqueraded)", nodePort, harness.GatewayIP6, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}
