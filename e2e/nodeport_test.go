package e2e

import (
	"net"
	"strconv"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// NodePorts: from outside, on which node addresses, on localhost.

func TestNodePortFromOutside(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "nodeport"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	var rs []harness.Reply
	c.eventually("NodePort answers from outside", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 30, time.Second)
		if m := landed(rs, backends, "", harness.ExtAllowedIP); m != "" {
			return m
		}
		return allReached(rs, backends)
	})
	t.Logf("RESULT NodePort (externalTrafficPolicy Cluster) from %s: %s, sources seen %s (masqueraded)",
		harness.ExtAllowedIP, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

// TestNodePortAddresses: with --nodeport-addresses, NodePorts answer only
// on the selected node addresses. Without it they answer on every local
// address in iptables mode and on the node IP only in nftables mode
// (kube-proxy's defaults: all, and primary).
func TestNodePortAddresses(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "np-addresses"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	c.slice(svc, at(backends[0], harness.NodeName))
	port := strconv.Itoa(int(svc.Spec.Ports[0].NodePort))
	onNodeIP := net.JoinHostPort(harness.NodeIP, port)
	onBridge := net.JoinHostPort(harness.BridgeIP, port)
	cases := []struct {
		flag          string // "": the running svcproxy's default
		bridgeAnswers bool
	}{{"", env.ProxyMode == "iptables"}, {"--nodeport-addresses=192.0.2.0/24", false}, {"--nodeport-addresses=primary", false}}
	if env.ProxyMode == "nftables" {
		cases = append(cases, struct {
			flag          string
			bridgeAnswers bool
		}{"--nodeport-addresses=0.0.0.0/0", true})
	}
	for _, cs := range cases {
		name := cs.flag
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			c := &tc{T: t, ctx: c.ctx, start: time.Now()}
			if cs.flag != "" {
				c.restartSvcproxy(cs.flag)
			}
			c.eventually("NodePort on the node IP", func() string {
				return landed(c.connect(client, harness.ClientOptions{Target: onNodeIP, Count: 2}), backends[:1], "", "")
			})
			if cs.bridgeAnswers {
				c.eventually("NodePort on the bridge address", func() string {
					return landed(c.connect(client, harness.ClientOptions{Target: onBridge, Count: 2}), backends[:1], "", "")
				})
				t.Logf("RESULT %s: %s and %s answer", name, onNodeIP, onBridge)
				return
			}
			rs := c.connect(client, harness.ClientOptions{Target: onBridge, Count: 2, Timeout: 500 * time.Millisecond})
			for _, r := range rs {
				if r.Err == "" {
					t.Errorf("%s: NodePort answered on %s (%s)", name, onBridge, r.Line)
				}
			}
			t.Logf("RESULT %s: %s answers, %s does not (%s)", name, onNodeIP, onBridge, harness.FormatTally(harness.Tally(rs)))
		})
	}
}

// TestLocalhostNodePorts (iptables mode): a process on the node reaches a
// NodePort at 127.0.0.1, unless --iptables-localhost-nodeports=false.
func TestLocalhostNodePorts(t *testing.T) {
	c := begin(t, true)
	if env.ProxyMode != "iptables" {
		t.Skip("localhost NodePorts are an iptables-mode feature (as in kube-proxy)")
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "np-localhost"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))
	var rs []harness.Reply
	c.eventually("NodePort on 127.0.0.1", func() string {
		rs = c.connectFrom(env.Node, target, 10, time.Second)
		return landed(rs, backends[:2], "", "")
	})
	t.Logf("RESULT node to %s: %s, source %s", target, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
	c.restartSvcproxy("--iptables-localhost-nodeports=false")
	c.eventually("no NodePort on 127.0.0.1", func() string {
		for _, r := range c.connectFrom(env.Node, target, 2, 500*time.Millisecond) {
			if r.Err == "" {
				return "answered: " + r.Line
			}
		}
		return ""
	})
}
