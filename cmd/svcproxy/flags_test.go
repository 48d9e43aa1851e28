package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"
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
