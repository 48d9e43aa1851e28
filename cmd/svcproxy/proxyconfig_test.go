package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/syncer"
)

func mustParse(t *testing.T, args ...string) *options {
	t.Helper()
	o, err := parseFlags(args)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// describe is every field of a familyConfig, on one line.
func describe(fc familyConfig) string {
	d := fc.LocalDetector
	return fmt.Sprintf("ips %v npa %v local %q %v %q masq %v/%d localhost %v hc %v svc %v",
		fc.NodeIPs, fc.NodePortAddresses, d.Mode, d.CIDRs, d.Interface, fc.MasqueradeAll, fc.MasqueradeBit,
		fc.LocalhostNodePorts, fc.HealthCheckAddrs, fc.ServiceClusterIPRange)
}

// TestProxyConfigs: the mapping from options to each family's config.
// The node IPs that let the node through a source-range firewall are
// kube-proxy's node IPs (--bind-address, else the Node's addresses), not
// every local address; "primary" uses them; a Node that cannot be read
// makes "primary" an error instead of every address. Local traffic is told
// by every CIDR of the family; health-check ports listen where NodePorts do.
func TestProxyConfigs(t *testing.T) {
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	local := []netip.Addr{a("127.0.0.1"), a("192.168.1.2"), a("10.0.0.5"), a("172.17.0.1"), a("::1"), a("fd00::2")}
	node := syncer.NodeInfo{InternalIPs: []netip.Addr{a("192.168.1.2"), a("fd00::2")},
		PodCIDRs: []netip.Prefix{p("10.244.1.0/24"), p("fd00:244:1::/64")}}
	const plain4 = `local "" [] "" masq false/14 localhost true hc [] svc []`
	const plain6 = `local "" [] "" masq false/14 localhost false hc [] svc []`
	for _, tc := range []struct {
		name    string
		args    []string
		node    *syncer.NodeInfo // nil: node
		f       proxier.IPFamily
		want    string // describe's line; with wantErr, unused
		wantErr string
	}{
		{name: "default: node IPs only, NodePorts everywhere", f: proxier.IPv4,
			want: "ips [192.168.1.2] npa [] " + plain4},
		{name: "default IPv6", f: proxier.IPv6,
			want: "ips [fd00::2] npa [] " + plain6},
		{name: "--bind-address overrides its family", args: []string{"--bind-address=10.0.0.5"}, f: proxier.IPv4,
			want: "ips [10.0.0.5] npa [] " + plain4},
		{name: "--bind-address leaves the other family", args: []string{"--bind-address=10.0.0.5"}, f: proxier.IPv6,
			want: "ips [fd00::2] npa [] " + plain6},
		{name: "CIDRs add the local addresses inside them", args: []string{"--nodeport-addresses=10.0.0.0/8,172.16.0.0/12"}, f: proxier.IPv4,
			want: `ips [192.168.1.2 10.0.0.5 172.17.0.1] npa [10.0.0.0/8 172.16.0.0/12] local "" [] "" masq false/14 localhost true hc [10.0.0.5 172.17.0.1] svc []`},
		{name: "CIDRs of the other family only: NodePorts everywhere", args: []string{"--nodeport-addresses=fd00::/64"}, f: proxier.IPv4,
			want: "ips [192.168.1.2] npa [] " + plain4},
		{name: "0.0.0.0/0: every address, health checks on all", args: []string{"--nodeport-addresses=0.0.0.0/0"}, f: proxier.IPv4,
			want: `ips [192.168.1.2 127.0.0.1 10.0.0.5 172.17.0.1] npa [0.0.0.0/0] ` + plain4},
		{name: "primary", args: []string{"--nodeport-addresses=primary"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [192.168.1.2/32] local "" [] "" masq false/14 localhost true hc [192.168.1.2] svc []`},
		{name: "primary IPv6", args: []string{"--nodeport-addresses=primary"}, f: proxier.IPv6,
			want: `ips [fd00::2] npa [fd00::2/128] local "" [] "" masq false/14 localhost false hc [fd00::2] svc []`},
		{name: "primary by default in nftables mode", args: []string{"--proxy-mode=nftables"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [192.168.1.2/32] local "" [] "" masq false/14 localhost true hc [192.168.1.2] svc []`},
		{name: "primary, Node unreadable, --bind-address", args: []string{"--nodeport-addresses=primary", "--bind-address=10.0.0.5"},
			node: &syncer.NodeInfo{}, f: proxier.IPv4,
			want: `ips [10.0.0.5] npa [10.0.0.5/32] local "" [] "" masq false/14 localhost true hc [10.0.0.5] svc []`},
		{name: "primary, no IPv6 node IP: IPv6 NodePorts everywhere, as kube-proxy", args: []string{"--nodeport-addresses=primary"},
			node: &syncer.NodeInfo{InternalIPs: []netip.Addr{a("192.168.1.2")}}, f: proxier.IPv6,
			want: "ips [] npa [] " + plain6},
		{name: "primary, Node unreadable: refused", args: []string{"--nodeport-addresses=primary"}, node: &syncer.NodeInfo{},
			wantErr: `--nodeport-addresses=primary: cannot determine this node's IP (Node "n1"`},
		{name: "primary, loopback --bind-address only: refused", args: []string{"--nodeport-addresses=primary", "--bind-address=127.0.0.1"},
			node: &syncer.NodeInfo{}, wantErr: "--nodeport-addresses=primary"},
		{name: "no primary, Node unreadable", node: &syncer.NodeInfo{}, f: proxier.IPv4,
			want: "ips [] npa [] " + plain4},
		{name: "ClusterCIDR", args: []string{"--cluster-cidr=10.244.0.0/16,fd00:10::/56"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [] local "ClusterCIDR" [10.244.0.0/16] "" masq false/14 localhost true hc [] svc []`},
		{name: "ClusterCIDR IPv6", args: []string{"--cluster-cidr=10.244.0.0/16,fd00:10::/56"}, f: proxier.IPv6,
			want: `ips [fd00::2] npa [] local "ClusterCIDR" [fd00:10::/56] "" masq false/14 localhost false hc [] svc []`},
		{name: "ClusterCIDR without one of the family", args: []string{"--cluster-cidr=10.244.0.0/16"}, f: proxier.IPv6,
			want: "ips [fd00::2] npa [] " + plain6},
		{name: "NodeCIDR", args: []string{"--detect-local-mode=NodeCIDR"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [] local "NodeCIDR" [10.244.1.0/24] "" masq false/14 localhost true hc [] svc []`},
		{name: "NodeCIDR IPv6", args: []string{"--detect-local-mode=NodeCIDR"}, f: proxier.IPv6,
			want: `ips [fd00::2] npa [] local "NodeCIDR" [fd00:244:1::/64] "" masq false/14 localhost false hc [] svc []`},
		{name: "NodeCIDR: every pod CIDR of the family", args: []string{"--detect-local-mode=NodeCIDR"},
			node: &syncer.NodeInfo{PodCIDRs: []netip.Prefix{p("10.244.1.0/24"), p("fd00:244:1::/64"), p("10.245.1.0/24")}}, f: proxier.IPv4,
			want: `ips [] npa [] local "NodeCIDR" [10.244.1.0/24 10.245.1.0/24] "" masq false/14 localhost true hc [] svc []`},
		{name: "NodeCIDR, no pod CIDRs yet", args: []string{"--detect-local-mode=NodeCIDR"},
			node: &syncer.NodeInfo{InternalIPs: node.InternalIPs}, f: proxier.IPv4,
			want: "ips [192.168.1.2] npa [] " + plain4},
		{name: "BridgeInterface", args: []string{"--detect-local-mode=BridgeInterface", "--pod-bridge-interface=cbr0"}, f: proxier.IPv6,
			want: `ips [fd00::2] npa [] local "BridgeInterface" [] "cbr0" masq false/14 localhost false hc [] svc []`},
		{name: "InterfaceNamePrefix", args: []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [] local "InterfaceNamePrefix" [] "veth" masq false/14 localhost true hc [] svc []`},
		{name: "masquerade", args: []string{"--masquerade-all", "--iptables-masquerade-bit=3"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [] local "" [] "" masq true/3 localhost true hc [] svc []`},
		{name: "no localhost NodePorts", args: []string{"--iptables-localhost-nodeports=false"}, f: proxier.IPv4,
			want: `ips [192.168.1.2] npa [] local "" [] "" masq false/14 localhost false hc [] svc []`},
		{name: "service CIDRs of the family", args: []string{"--service-cluster-ip-range=10.96.0.0/16,fd00:96::/112"}, f: proxier.IPv6,
			want: `ips [fd00::2] npa [] local "" [] "" masq false/14 localhost false hc [] svc [fd00:96::/112]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := node
			if tc.node != nil {
				n = *tc.node
			}
			cfgs, err := proxyConfigs(mustParse(t, tc.args...), host{Name: "n1", Node: n, Local: local,
				Families: []proxier.IPFamily{proxier.IPv4, proxier.IPv6}})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cfgs) != 2 || cfgs[0].Family != proxier.IPv4 || cfgs[1].Family != proxier.IPv6 {
				t.Fatalf("configs for %v, want IPv4 and IPv6", cfgs)
			}
			fc := cfgs[0]
			if tc.f == proxier.IPv6 {
				fc = cfgs[1]
			}
			if got := describe(fc); got != tc.want {
				t.Errorf("%v config:\n got %s\nwant %s", tc.f, got, tc.want)
			}
		})
	}
}

// TestNodeWait: the Node is waited for longer when the configuration
// depends on it, and for its pod CIDRs with NodeCIDR detection.
func TestNodeWait(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		want     time.Duration
		needed   bool
		podCIDRs bool
	}{
		{nil, 5 * time.Second, false, false},
		{[]string{"--nodeport-addresses=primary"}, 30 * time.Second, true, false},
		{[]string{"--proxy-mode=nftables"}, 30 * time.Second, true, false},
		{[]string{"--detect-local-mode=NodeCIDR"}, 30 * time.Second, true, true},
	} {
		wait, needed, podCIDRs := nodeWait(mustParse(t, tc.args...))
		if wait != tc.want || needed != tc.needed || podCIDRs != tc.podCIDRs {
			t.Errorf("%v: nodeWait = %v %v %v, want %v %v %v", tc.args, wait, needed, podCIDRs, tc.want, tc.needed, tc.podCIDRs)
		}
	}
}

// TestDualStackConfig: --dry-run proxies IPv6 when a pod or service range
// is IPv6.
func TestDualStackConfig(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--cluster-cidr=10.244.0.0/16", "--service-cluster-ip-range=10.96.0.0/16"}, false},
		{[]string{"--cluster-cidr=10.244.0.0/16,fd00:10::/56"}, true},
		{[]string{"--service-cluster-ip-range=fd00:96::/112"}, true},
	} {
		if got := dualStackConfig(mustParse(t, tc.args...)); got != tc.want {
			t.Errorf("%v: dualStackConfig = %v, want %v", tc.args, got, tc.want)
		}
	}
}
