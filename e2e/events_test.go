package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestEvents: kube-proxy's Events reach the API server: "Starting" on this
// Node, and FailedToStartServiceHealthcheck on a Service whose health-check
// node port another process holds on the node. Once the port is free, the
// next sync opens it.
func TestEvents(t *testing.T) {
	c := begin(t)
	c.eventually("a Starting Event on the Node", func() string {
		return c.findEvent(metav1.NamespaceDefault, func(e *eventsv1.Event) bool {
			return e.Regarding.Kind == "Node" && e.Regarding.Name == harness.NodeName && e.Type == v1.EventTypeNormal &&
				e.Reason == "Starting" && e.Action == "StartKubeProxy" && e.ReportingController == "svcproxy"
		})
	})

	// A port of the NodePort range, held in the node namespace, and a
	// Service whose health-check node port it is.
	var ln net.Listener
	var svc *v1.Service
	for try := 0; svc == nil; try++ {
		port := 30000 + rand.IntN(2768)
		if err := env.Node.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
			if try < 10 {
				continue
			}
			t.Fatal(err)
		}
		s := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "features", Name: "hc-taken"}, Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: v1.ServiceExternalTrafficPolicyLocal,
			HealthCheckNodePort: int32(port), Ports: ports(harness.TCP)}}
		if err := env.EnsureNamespace(c.ctx, s.Namespace); err != nil {
			t.Fatal(err)
		}
		created, err := env.Client.CoreV1().Services(s.Namespace).Create(c.ctx, s, metav1.CreateOptions{})
		if err != nil {
			ln.Close()
			if try < 10 && strings.Contains(err.Error(), "allocated") {
				continue
			}
			t.Fatal(err)
		}
		c.deleteAtEnd(created)
		svc = created
	}
	defer ln.Close()
	c.slice(svc, at(backends[0], harness.NodeName))
	note := fmt.Sprintf("node %s failed to start healthcheck \"%s/%s\" on port %d: ", harness.NodeName, svc.Namespace, svc.Name, svc.Spec.HealthCheckNodePort)
	c.eventually("a FailedToStartServiceHealthcheck Event on the Service", func() string {
		return c.findEvent(svc.Namespace, func(e *eventsv1.Event) bool {
			return e.Regarding.Kind == "Service" && e.Regarding.Name == svc.Name && e.Type == v1.EventTypeWarning &&
				e.Reason == "FailedToStartServiceHealthcheck" && e.Action == "Listen" && strings.HasPrefix(e.Note, note)
		})
	})
	code, body, err := env.NodeHTTPGet(c.ctx, "http://"+harness.MetricsAddr+"/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	if n, _ := harness.MetricValue(body, "svcproxy_healthcheck_server_errors_total"); n == 0 {
		t.Errorf("svcproxy_healthcheck_server_errors_total is 0")
	}

	// Freed, the port is opened on the next sync (an endpoint change).
	ln.Close()
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], otherNode))
	c.waitHealthCheck("health check served once its port is free", svc, 200, 1)
}

// findEvent returns "" when an Event of namespace matches, else what it
// saw.
func (c *tc) findEvent(namespace string, match func(*eventsv1.Event) bool) string {
	c.Helper()
	list, err := env.Client.EventsV1().Events(namespace).List(c.ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var seen []string
	for i := range list.Items {
		e := &list.Items[i]
		if match(e) {
			c.Logf("RESULT Event %s %s on %s %s/%s by %s: %q", e.Type, e.Reason, e.Regarding.Kind, e.Regarding.Namespace, e.Regarding.Name, e.ReportingController, e.Note)
			return ""
		}
		seen = append(seen, e.Reason+" "+e.Regarding.Kind+" "+e.Regarding.Name)
	}
	return fmt.Sprintf("%d Events: %v", len(seen), seen)
}
