package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// NodePorts: from outside (to endpoints on either node), on which node
// addresses, on localhost.

func TestNodePortFromOutside(t *testing.T) {
	c := begin(t)
	a, b, cc := backends[0], backends[1], backends[2]
	svc := c.createService("nodeport", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode), at(cc, otherNode))
	var rs []harness.Reply
	c.eventually("NodePort answers from outside", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 30, time.Second)
		return exactly(rs, backends, "", harness.ExtAllowedIP)
	})
	t.Logf("RESULT NodePort (externalTrafficPolicy Cluster) from %s: %s, sources seen %s (masqueraded)",
		harness.ExtAllowedIP, harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}

// TestNodePortAddresses: with --nodeport-addresses, NodePorts answer only
// on the selected node addresses. Without it they answer on every local
// address in iptables mode and on the node IP only in nftables mode
// (kube-proxy's defaults: all, and primary).
func TestNodePortAddresses(t *testing.T) {
	c := begin(t)
	svc := c.createService("np-addresses", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.slice(svc, at(backends[0], harness.NodeName))
	onNodeIP, onBridge := nodePortTarget(svc), nodePortOn(harness.BridgeIP, svc)
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

// TestLocalhostNodePorts: in iptables mode a process on the node reaches a
// NodePort at 127.0.0.1, unless --iptables-localhost-nodeports=false. In
// nftables mode, as in kube-proxy's, NodePorts never answer on loopback,
// even with 127.0.0.0/8 in --nodeport-addresses: a warning says so at
// start, and a connection to 127.0.0.1:<NodePort> is refused at once.
func TestLocalhostNodePorts(t *testing.T) {
	c := begin(t)
	svc := c.createService("np-localhost", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	target := nodePortOn("127.0.0.1", svc)
	if env.ProxyMode == "nftables" {
		c.localhostNodePortRefused(svc, target)
		return
	}
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

// localhostNodePortRefused is TestLocalhostNodePorts in nftables mode:
// with 127.0.0.0/8 and the node IP in --nodeport-addresses, svcproxy
// warns that it ignores loopback, the NodePort answers on the node IP,
// and every connection to target (127.0.0.1:<NodePort>) is refused within
// a second (nothing answers there, so the kernel resets it), not dropped.
func (c *tc) localhostNodePortRefused(svc *v1.Service, target string) {
	c.restartSvcproxy("--nodeport-addresses=127.0.0.0/8," + harness.NodeIP + "/32")
	log, err := os.ReadFile(env.Svcproxy().LogPath)
	if err != nil {
		c.Fatal(err)
	}
	if !strings.Contains(string(log), "nftables mode serves no NodePorts on loopback") {
		c.Errorf("svcproxy's log has no warning that loopback is ignored in --nodeport-addresses")
	}
	c.eventually("NodePort on the node IP", func() string {
		return landed(c.connectFrom(env.Node, nodePortTarget(svc), 4, time.Second), backends[:2], "", "")
	})
	start := time.Now()
	rs := c.connectFrom(env.Node, target, 5, time.Second)
	took := time.Since(start)
	for _, r := range rs {
		if r.Err != "refused" {
			c.Errorf("node to %s: %q, want refused within 1s", target, r.Line)
		}
	}
	if len(rs) != 5 {
		c.Errorf("node to %s: %d attempts reported, want 5", target, len(rs))
	}
	c.Logf("RESULT node to %s: %s in %v", target, harness.FormatTally(harness.Tally(rs)), took.Round(time.Millisecond))
}

// TestTwoNodes: a Service with one endpoint on this node and one on the
// second node (a routed pod subnet). From a pod, both are reached with the
// pod's own source; from outside through the NodePort both are reached,
// masqueraded; with externalTrafficPolicy Local only the local one is, with
// the client's source.
func TestTwoNodes(t *testing.T) {
	c := begin(t)
	remote := c.remotePod("remote")
	local := backends[0]
	both := []*harness.Pod{local, remote}
	svc := c.createService("two-nodes", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.slice(svc, at(local, harness.NodeName), at(remote, harness.Node2Name))
	var rs []harness.Reply
	c.eventually("pod reaches the local and the remote endpoint", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target(svc, 80), Count: 30})
		return exactly(rs, both, client.IP, "")
	})
	t.Logf("RESULT pod %s to ClusterIP, endpoints on node-1 and node-2: %s, source kept", client.IP, harness.FormatTally(harness.Tally(rs)))
	c.eventually("outside client reaches both through the NodePort", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 30, time.Second)
		return exactly(rs, both, "", harness.ExtAllowedIP)
	})
	sources := map[string]bool{}
	for _, r := range rs {
		sources[r.Backend+" saw "+r.SourceIP()] = true
	}
	t.Logf("RESULT outside %s to NodePort: %s, masqueraded (%v)", harness.ExtAllowedIP, harness.FormatTally(harness.Tally(rs)), sources)

	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	c.update(svc)
	c.eventually("externalTrafficPolicy Local: only the local endpoint", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 20, time.Second)
		return landed(rs, []*harness.Pod{local}, harness.ExtAllowedIP, "")
	})
	t.Logf("RESULT ETP Local, outside to NodePort: %s, source %s", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())
}
