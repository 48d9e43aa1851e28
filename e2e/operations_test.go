package e2e

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// restartSvcproxy restarts svcproxy with extra flags; when the test ends it
// is restarted with the usual ones.
func (c *tc) restartSvcproxy(extra ...string) {
	c.Helper()
	start := func(extra ...string) error {
		if err := env.StopSvcproxy(syscall.SIGTERM); err != nil && !strings.Contains(err.Error(), "exit status 0") {
			c.Logf("svcproxy stop: %v", err)
		}
		if _, err := env.StartSvcproxy(context.Background(), extra...); err != nil {
			return err
		}
		return env.WaitSvcproxySynced(context.Background(), 30*time.Second)
	}
	if err := start(extra...); err != nil {
		c.Fatalf("restart svcproxy with %v: %v", extra, err)
	}
	c.Cleanup(func() {
		if err := start(); err != nil {
			c.Errorf("restart svcproxy with its usual flags: %v", err)
		}
	})
}

func (c *tc) connectFrom(ns *harness.Netns, target string, n int, timeout time.Duration) []harness.Reply {
	c.Helper()
	rs, err := env.ConnectFrom(c.ctx, ns, harness.ClientOptions{Proto: "tcp", Target: target, Count: n, Timeout: timeout})
	if err != nil {
		c.Fatal(err)
	}
	return rs
}

// TestDetectLocalModes: in every --detect-local-mode, pod traffic to a
// ClusterIP keeps its source and traffic from outside the pod network (the
// external client, routed to the Service CIDR) is masqueraded.
func TestDetectLocalModes(t *testing.T) {
	c := begin(t, true)
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	if out, err := env.Ext.Run(c.ctx, "ip", "route", "replace", harness.ServiceCIDR, "via", harness.NodeIP); err != nil {
		t.Fatalf("route: %v: %s", err, out)
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "detect-local"}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	for _, mode := range [][]string{
		{"--detect-local-mode=ClusterCIDR"},
		{"--detect-local-mode=NodeCIDR"},
		{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=br0"},
		// Pods reach the node through the bridge, so br0 is the interface
		// their packets come in on.
		{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=br"},
	} {
		t.Run(strings.TrimPrefix(mode[0], "--detect-local-mode="), func(t *testing.T) {
			c := &tc{T: t, ctx: c.ctx, start: time.Now()}
			c.restartSvcproxy(mode...)
			var pod, ext []harness.Reply
			c.eventually("pod traffic not masqueraded", func() string {
				pod = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
				return landed(pod, backends[:2], client.IP, "")
			})
			c.eventually("outside traffic masqueraded", func() string {
				ext = c.external(harness.ExtAllowedIP, target, 10, time.Second)
				return landed(ext, backends[:2], "", harness.ExtAllowedIP)
			})
			t.Logf("RESULT %v: pod sources %s (kept), outside client's seen as %s (masqueraded)", mode, pod[0].SourceIP(), ext[0].SourceIP())
		})
	}
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

// TestForwardPolicyDrop (iptables mode): with the filter FORWARD policy at
// DROP, KUBE-FORWARD still lets Service traffic through.
func TestForwardPolicyDrop(t *testing.T) {
	c := begin(t, true)
	if env.ProxyMode != "iptables" {
		t.Skip("KUBE-FORWARD is iptables mode's")
	}
	if err := env.SetupExternalClients(c.ctx); err != nil {
		t.Fatal(err)
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "forward-drop"}, Spec: v1.ServiceSpec{Type: v1.ServiceTypeNodePort}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	if out, err := env.Node.Run(c.ctx, "iptables", "-P", "FORWARD", "DROP"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { env.Node.Run(context.Background(), "iptables", "-P", "FORWARD", "ACCEPT") })
	var rs []harness.Reply
	c.eventually("NodePort through a DROP forward policy", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
		return landed(rs, backends[:2], "", "")
	})
	t.Logf("RESULT FORWARD policy DROP, external to NodePort: %s", harness.FormatTally(harness.Tally(rs)))
}

// TestFlushDetection (iptables mode): another agent flushes the tables
// svcproxy uses or removes its jump rules; svcproxy notices and rewrites
// them, and traffic flows again within a few seconds.
func TestFlushDetection(t *testing.T) {
	c := begin(t, true)
	if env.ProxyMode != "iptables" {
		t.Skip("iptables flush detection; nftables mode has TestSelfRepair")
	}
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "flush"}})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	c.eventually("service works", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: target, Count: 3}), backends[:2], client.IP, "")
	})
	for _, damage := range [][]string{
		{"iptables", "-t", "nat", "-F"},
		{"iptables", "-t", "filter", "-F"},
		{"iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		{"nft", "flush", "ruleset"},
		// One top-level chain, and one service's own chain: neither
		// touches what kube-proxy's canary or the built-in jumps show.
		{"iptables", "-t", "nat", "-F", "KUBE-SERVICES"},
		{"iptables", "-t", "nat", "-F", "<KUBE-SVC chain of the Service>"},
	} {
		if damage[len(damage)-1] == "<KUBE-SVC chain of the Service>" {
			out, err := env.Node.Run(c.ctx, "iptables", "-t", "nat", "-S", "KUBE-SERVICES")
			if err != nil {
				t.Fatalf("iptables -S KUBE-SERVICES: %v: %s", err, out)
			}
			for _, line := range strings.Split(out, "\n") {
				if i := strings.Index(line, "-j KUBE-SVC-"); i >= 0 && strings.Contains(line, svc.Namespace+"/"+svc.Name) {
					damage[len(damage)-1] = strings.TrimSpace(line[i+3:])
				}
			}
			if strings.HasPrefix(damage[len(damage)-1], "<") {
				t.Fatalf("no KUBE-SVC chain for %s/%s in:\n%s", svc.Namespace, svc.Name, out)
			}
		}
		name := strings.Join(damage, " ")
		if out, err := env.Node.Run(c.ctx, damage...); err != nil {
			t.Errorf("%s: %v: %s", name, err, out)
			continue
		}
		start := time.Now()
		var back time.Duration
		for time.Since(start) < 10*time.Second {
			rs := c.connect(client, harness.ClientOptions{Target: target, Count: 1, Timeout: 300 * time.Millisecond})
			if landed(rs, backends[:2], client.IP, "") == "" {
				back = time.Since(start)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("RESULT after `%s`: traffic back in %v", name, back.Round(time.Millisecond))
		if back == 0 || back > 3*time.Second {
			t.Errorf("after `%s`: traffic not back within 3s (%v)", name, back)
		}
	}
}

// TestCleanup: `svcproxy --cleanup` removes every rule, chain and table it
// (or kube-proxy) made, and exits 0; traffic to Services then stops, and a
// restarted svcproxy brings it back.
func TestCleanup(t *testing.T) {
	c := begin(t, true)
	svc := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "cleanup"}})
	c.slice(svc, at(backends[0], harness.NodeName))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	c.eventually("service works", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: target, Count: 2}), backends[:1], client.IP, "")
	})
	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Logf("stop: %v", err)
	}
	t.Cleanup(func() {
		if _, err := env.StartSvcproxy(context.Background()); err != nil {
			t.Errorf("restart svcproxy: %v", err)
		} else if err := env.WaitSvcproxySynced(context.Background(), 30*time.Second); err != nil {
			t.Errorf("restart svcproxy: %v", err)
		}
	})
	out, err := env.Node.Command(c.ctx, env.Bins.Svcproxy, "--cleanup").CombinedOutput()
	if err != nil {
		t.Fatalf("svcproxy --cleanup: %v: %s", err, out)
	}
	for _, cmd := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "ruleset"}} {
		got, err := env.Node.Run(c.ctx, cmd...)
		if err != nil {
			if _, lookErr := exec.LookPath(cmd[0]); lookErr != nil {
				continue
			}
			t.Errorf("%s: %v", cmd[0], err)
		}
		for _, line := range strings.Split(got, "\n") {
			// KUBE-FIREWALL (the localnet martian guard) is shared with
			// kubelet; like kube-proxy, --cleanup leaves it.
			if strings.Contains(line, "KUBE-FIREWALL") {
				continue
			}
			if strings.Contains(line, "KUBE-") || strings.Contains(line, "svcproxy") {
				t.Errorf("%s after --cleanup still has %q", cmd[0], line)
			}
		}
	}
	rs := c.connect(client, harness.ClientOptions{Target: target, Count: 2, Timeout: 500 * time.Millisecond})
	for _, r := range rs {
		if r.Err == "" {
			t.Errorf("ClusterIP still answered after --cleanup: %s", r.Line)
		}
	}
	t.Logf("RESULT --cleanup: exit 0, no KUBE-* chain or svcproxy table left but the shared KUBE-FIREWALL, ClusterIP %s", harness.FormatTally(harness.Tally(rs)))
	if _, err := env.StartSvcproxy(c.ctx); err != nil {
		t.Fatal(err)
	}
	c.eventually("a restarted svcproxy brings the Service back", func() string {
		return landed(c.connect(client, harness.ClientOptions{Target: target, Count: 2}), backends[:1], client.IP, "")
	})
	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		t.Logf("stop: %v", err)
	}
}

// TestBadInput: malformed EndpointSlices and Services are skipped (counted
// in svcproxy_invalid_objects_total); svcproxy keeps running and every other
// Service keeps working.
func TestBadInput(t *testing.T) {
	c := begin(t, true)
	good := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "good"}})
	c.slice(good, at(backends[0], harness.NodeName))
	bad := c.createService(&v1.Service{ObjectMeta: metav1.ObjectMeta{Name: "bad"}, Spec: v1.ServiceSpec{
		// An IPv6 external IP on an IPv4 Service: the wrong family.
		ExternalIPs: []string{"2001:db8::1"}}})
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
	slices := env.Client.DiscoveryV1().EndpointSlices("features")
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
		if _, err := slices.Create(c.ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create EndpointSlice %s: %v", es.Name, err)
		}
		name := es.Name
		t.Cleanup(func() { slices.Delete(context.Background(), name, metav1.DeleteOptions{}) })
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
