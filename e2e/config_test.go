package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// svcproxy configured as kube-proxy is: a KubeProxyConfiguration file,
// --detect-local-mode.

// TestConfigFile: svcproxy run as kubeadm runs kube-proxy, with --config (a
// KubeProxyConfiguration) and --hostname-override. The file's settings
// apply: its mode's section turns on masqueradeAll (no flag does), so a
// pod's connection to a ClusterIP arrives from the bridge address; the
// flag's node name wins over the file's hostnameOverride, so
// internalTrafficPolicy: Local picks this node's endpoint. The harness's
// usual flags for what the file covers are logged as ignored, and so is the
// conntrack section. svcproxy is restarted with its usual flags afterwards.
func TestConfigFile(t *testing.T) {
	c := begin(t)
	path := filepath.Join(env.WorkDir, "kube-proxy-config.conf")
	config := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: not-this-node
mode: %s
clusterCIDR: %s,%s
metricsBindAddress: %s
healthzBindAddress: %s
%s:
  masqueradeAll: true
  minSyncPeriod: 100ms
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 24h0m0s
`, env.Kubeconfig, env.ProxyMode, harness.ClusterCIDR, harness.ClusterCIDR6, harness.MetricsAddr, harness.HealthzAddr, env.ProxyMode)
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}

	a, b := backends[0], backends[1]
	svc := c.createService("config-file", v1.ServiceSpec{
		InternalTrafficPolicy: ptr.To(v1.ServiceInternalTrafficPolicyLocal)})
	c.slice(svc, at(a, harness.NodeName), at(b, otherNode))
	target := net.JoinHostPort(svc.Spec.ClusterIP, "80")

	c.restartSvcproxy("--config", path)
	var rs []harness.Reply
	c.eventually("with --config: local endpoint only, masqueraded", func() string {
		rs = c.connect(client, harness.ClientOptions{Proto: "tcp", Target: target, Count: 10})
		return landed(rs, []*harness.Pod{a}, harness.BridgeIP, "")
	})
	t.Logf("RESULT --config: %s, source %s", harness.FormatTally(harness.Tally(rs)), rs[0].SourceIP())

	log, err := os.ReadFile(env.Svcproxy().LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Flags ignored: --config gives these settings", `"--proxy-mode"`, "conntrack.maxPerCore"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("svcproxy's log lacks %q", want)
		}
	}
}

// TestDetectLocalModes: in every --detect-local-mode, pod traffic to a
// ClusterIP keeps its source and traffic from outside the pod network (the
// external client, routed to the Service CIDR) is masqueraded.
func TestDetectLocalModes(t *testing.T) {
	c := begin(t)
	mustRun(c, env.Ext, "ip", "route", "replace", harness.ServiceCIDR, "via", harness.NodeIP)
	t.Cleanup(func() { env.Ext.Run(context.Background(), "ip", "route", "del", harness.ServiceCIDR) })
	svc := c.createService("detect-local", v1.ServiceSpec{})
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
