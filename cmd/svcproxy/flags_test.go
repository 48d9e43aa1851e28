package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/syncer"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // substring; "" means success
		check   func(*testing.T, *options)
	}{
		{name: "defaults", check: func(t *testing.T, o *options) {
			if o.proxyMode != "iptables" || o.masqueradeBit != 14 || o.minSyncPeriod != time.Second ||
				o.syncPeriod != 30*time.Second || o.metricsAddr != "127.0.0.1:10249" || o.healthzAddr != "0.0.0.0:10256" {
				t.Errorf("defaults differ from kube-proxy's: %+v", o)
			}
		}},
		{name: "kube-proxy style", args: []string{"--kubeconfig=/k", "--hostname-override", "n1", "--proxy-mode=iptables",
			"--cluster-cidr=10.244.0.0/16,fd00:10::/56", "--masquerade-all", "--iptables-min-sync-period=100ms", "-v=2"},
			check: func(t *testing.T, o *options) {
				want := []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10::/56")}
				if len(o.clusterCIDRs) != 2 || o.clusterCIDRs[0] != want[0] || o.clusterCIDRs[1] != want[1] {
					t.Errorf("cluster CIDRs = %v", o.clusterCIDRs)
				}
				if !o.masqueradeAll || o.minSyncPeriod != 100*time.Millisecond || o.kubeconfig != "/k" || o.hostnameOverride != "n1" {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "dry run", args: []string{"--dry-run"}, check: func(t *testing.T, o *options) {
			if !o.dryRun {
				t.Error("dry-run not set")
			}
		}},
		{name: "unknown flag", args: []string{"--no-such-flag"}, wantErr: "no-such-flag"},
		{name: "nftables", args: []string{"--proxy-mode=nftables", "--service-cluster-ip-range=10.96.0.0/16,fd00:96::/112", "--cleanup-kube-proxy"},
			check: func(t *testing.T, o *options) {
				if o.proxyMode != "nftables" || len(o.serviceCIDRs) != 2 || !o.cleanupKubeProxy || o.ruleCheckInterval != nftablesRuleCheckInterval {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "nftables explicit check interval", args: []string{"--proxy-mode=nftables", "--rule-check-interval=3s"},
			check: func(t *testing.T, o *options) {
				if o.ruleCheckInterval != 3*time.Second {
					t.Errorf("rule check interval %v", o.ruleCheckInterval)
				}
			}},
		{name: "cleanup-kube-proxy needs nftables", args: []string{"--cleanup-kube-proxy"}, wantErr: "--cleanup-kube-proxy"},
		{name: "cleanup with dry-run", args: []string{"--cleanup", "--dry-run"}, wantErr: "--cleanup"},
		{name: "bad service range", args: []string{"--service-cluster-ip-range=10.96.0.0"}, wantErr: "--service-cluster-ip-range"},
		{name: "bad mode", args: []string{"--proxy-mode=userspace"}, wantErr: "--proxy-mode"},
		{name: "ipvs mode", args: []string{"--proxy-mode=ipvs"}, wantErr: "--proxy-mode: ipvs mode is not supported"},
		{name: "blank hostname override", args: []string{"--hostname-override=  "}, wantErr: "--hostname-override"},
		{name: "bad cidr", args: []string{"--cluster-cidr=10.0.0.0/33"}, wantErr: "--cluster-cidr"},
		{name: "bad bit", args: []string{"--iptables-masquerade-bit=32"}, wantErr: "--iptables-masquerade-bit"},
		{name: "bad duration", args: []string{"--iptables-sync-period=soon"}, wantErr: "iptables-sync-period"},
		{name: "min above max", args: []string{"--iptables-min-sync-period=1m"}, wantErr: "--iptables-min-sync-period"},
		{name: "bad metrics addr", args: []string{"--metrics-bind-address=localhost"}, wantErr: "--metrics-bind-address"},
		{name: "bad healthz port", args: []string{"--healthz-bind-address=0.0.0.0:99999"}, wantErr: "--healthz-bind-address"},
		{name: "two v4 cluster cidrs", args: []string{"--cluster-cidr=10.0.0.0/8,192.168.0.0/16"}, wantErr: "--cluster-cidr"},
		{name: "nodeport addresses", args: []string{"--nodeport-addresses=primary, 192.168.0.0/24"}, check: func(t *testing.T, o *options) {
			if !o.nodePortPrimary || len(o.nodePortAddresses) != 1 || o.nodePortAddresses[0] != netip.MustParsePrefix("192.168.0.0/24") {
				t.Errorf("parsed %+v %v", o.nodePortPrimary, o.nodePortAddresses)
			}
		}},
		{name: "nodeport addresses default: all in iptables mode", check: func(t *testing.T, o *options) {
			if o.nodePortPrimary || len(o.nodePortAddresses) != 0 {
				t.Errorf("parsed %+v %v, want all addresses", o.nodePortPrimary, o.nodePortAddresses)
			}
		}},
		{name: "nodeport addresses default: primary in nftables mode", args: []string{"--proxy-mode=nftables"}, check: func(t *testing.T, o *options) {
			if !o.nodePortPrimary || len(o.nodePortAddresses) != 0 {
				t.Errorf("parsed %+v %v, want primary", o.nodePortPrimary, o.nodePortAddresses)
			}
		}},
		{name: "nodeport addresses in nftables mode", args: []string{"--proxy-mode=nftables", "--nodeport-addresses=192.168.0.0/24"}, check: func(t *testing.T, o *options) {
			if o.nodePortPrimary || len(o.nodePortAddresses) != 1 {
				t.Errorf("parsed %+v %v, want the CIDR only", o.nodePortPrimary, o.nodePortAddresses)
			}
		}},
		{name: "bad nodeport address", args: []string{"--nodeport-addresses=eth0"}, wantErr: "--nodeport-addresses"},
		{name: "bridge mode needs bridge", args: []string{"--detect-local-mode=BridgeInterface"}, wantErr: "--pod-bridge-interface"},
		{name: "prefix mode needs prefix", args: []string{"--detect-local-mode=InterfaceNamePrefix"}, wantErr: "--pod-interface-name-prefix"},
		{name: "bad detect mode", args: []string{"--detect-local-mode=Magic"}, wantErr: "--detect-local-mode"},
		{name: "bridge mode", args: []string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"}, check: func(t *testing.T, o *options) {
			if o.detectLocalMode != "BridgeInterface" || o.bridgeInterface != "cbr0" {
				t.Errorf("parsed %+v", o)
			}
		}},
		{name: "stray argument", args: []string{"extra"}, wantErr: "extra"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

// TestNodeAddrs: the node IPs that let the node through a source-range
// firewall are kube-proxy's node IPs (--bind-address, else the Node's
// addresses), not every local address; "primary" uses them; a Node that
// cannot be read makes "primary" an error instead of every address.
func TestNodeAddrs(t *testing.T) {
	a := netip.MustParseAddr
	local := []netip.Addr{a("127.0.0.1"), a("192.168.1.2"), a("10.0.0.5"), a("172.17.0.1"), a("::1"), a("fd00::2")}
	node := syncer.NodeInfo{InternalIPs: []netip.Addr{a("192.168.1.2"), a("fd00::2")}}
	parse := func(args ...string) *options {
		t.Helper()
		o, err := parseFlags(args)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	for _, tc := range []struct {
		name    string
		o       *options
		node    syncer.NodeInfo
		f       proxier.IPFamily
		wantIPs string
		wantNPA string
	}{
		{"default: node IPs only, NodePorts everywhere", parse(), node, proxier.IPv4, "[192.168.1.2]", "[]"},
		{"default IPv6", parse(), node, proxier.IPv6, "[fd00::2]", "[]"},
		{"--bind-address overrides its family", parse("--bind-address=10.0.0.5"), node, proxier.IPv4, "[10.0.0.5]", "[]"},
		{"--bind-address leaves the other family", parse("--bind-address=10.0.0.5"), node, proxier.IPv6, "[fd00::2]", "[]"},
		{"CIDRs add the local addresses inside them", parse("--nodeport-addresses=10.0.0.0/8,172.16.0.0/12"), node, proxier.IPv4,
			"[192.168.1.2 10.0.0.5 172.17.0.1]", "[10.0.0.0/8 172.16.0.0/12]"},
		{"primary", parse("--nodeport-addresses=primary"), node, proxier.IPv4, "[192.168.1.2]", "[192.168.1.2/32]"},
		{"primary IPv6", parse("--nodeport-addresses=primary"), node, proxier.IPv6, "[fd00::2]", "[fd00::2/128]"},
		{"primary, Node unreadable, --bind-address", parse("--nodeport-addresses=primary", "--bind-address=10.0.0.5"), syncer.NodeInfo{}, proxier.IPv4,
			"[10.0.0.5]", "[10.0.0.5/32]"},
		{"primary, no IPv6 node IP: IPv6 NodePorts everywhere, as kube-proxy", parse("--nodeport-addresses=primary"),
			syncer.NodeInfo{InternalIPs: []netip.Addr{a("192.168.1.2")}}, proxier.IPv6, "[]", "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ips, npa := nodeAddrs(tc.o, tc.f, nodeIPs(tc.o, tc.node), local)
			if got := fmt.Sprint(ips); got != tc.wantIPs {
				t.Errorf("NodeIPs = %s, want %s", got, tc.wantIPs)
			}
			if got := fmt.Sprint(npa); got != tc.wantNPA {
				t.Errorf("NodePortAddresses = %s, want %s", got, tc.wantNPA)
			}
		})
	}
	if err := checkPrimary(parse("--nodeport-addresses=primary"), syncer.NodeInfo{}, "n1"); err == nil {
		t.Error("primary with an unreadable Node and no --bind-address: no error; NodePorts would open on every address")
	}
	if err := checkPrimary(parse("--nodeport-addresses=primary", "--bind-address=10.0.0.5"), syncer.NodeInfo{}, "n1"); err != nil {
		t.Errorf("primary with --bind-address: %v", err)
	}
	if err := checkPrimary(parse(), syncer.NodeInfo{}, "n1"); err != nil {
		t.Errorf("no primary: %v", err)
	}
}

// TestWatchNode: like kube-proxy's NodeManager, a change of this node's IPs
// ends svcproxy (the restart reads them anew); other Node updates do not.
func TestWatchNode(t *testing.T) {
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: "192.168.1.2"}}}}
	client := fake.NewSimpleClientset(node)
	start := syncer.NodeInfoOf(node)
	ctx, stop := context.WithCancelCause(context.Background())
	defer stop(nil)
	done := make(chan struct{})
	go func() { watchNode(ctx, client, "n1", start, false, 0, stop); close(done) }()
	update := func(mod func(*v1.Node)) {
		t.Helper()
		n, err := client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mod(n)
		if _, err := client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	update(func(n *v1.Node) { n.Labels = map[string]string{"topology.kubernetes.io/zone": "z1"} })
	time.Sleep(300 * time.Millisecond)
	if err := context.Cause(ctx); err != nil {
		t.Fatalf("a label change ended svcproxy: %v", err)
	}
	update(func(n *v1.Node) { n.Status.Addresses[0].Address = "192.168.1.3" })
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a node IP change did not end svcproxy")
	}
	if err := context.Cause(ctx); err == nil || !strings.Contains(err.Error(), "192.168.1.3") {
		t.Errorf("cause = %v, want the IP change", err)
	}
	<-done
}
