package main

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// kubeadmConfig is a config.conf as kubeadm writes it into the kube-proxy
// ConfigMap (every field spelt out, zero meaning the default), for a
// dual-stack cluster, with what operators typically edit: mode,
// metricsBindAddress for Prometheus, a conntrack timeout.
const kubeadmConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: 2h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: 0.0.0.0:10249
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`

// edit returns kubeadmConfig with each "old" line (exact, with its
// indentation) replaced by "new" (which may be several lines); it panics
// when a line is missing, so a case cannot silently test the unedited file.
func edit(pairs ...string) string {
	s := "\n" + kubeadmConfig
	for i := 0; i < len(pairs); i += 2 {
		old := "\n" + pairs[i] + "\n"
		if !strings.Contains(s, old) {
			panic("kubeadmConfig has no line " + pairs[i])
		}
		s = strings.Replace(s, old, "\n"+pairs[i+1]+"\n", 1)
	}
	return s[1:]
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.conf")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigFile(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		name    string
		config  string   // the file's content
		args    []string // besides --config
		wantErr string   // substrings, "|"-separated; "" means success
		check   func(*testing.T, *options)
	}{
		{name: "kubeadm DaemonSet", config: kubeadmConfig, args: []string{"--hostname-override=Node-1"}, check: func(t *testing.T, o *options) {
			if o.kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || o.hostnameOverride != "Node-1" || o.proxyMode != "iptables" {
				t.Errorf("kubeconfig %q, hostname %q, mode %q", o.kubeconfig, o.hostnameOverride, o.proxyMode)
			}
			if want := []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10:244::/56")}; !slices.Equal(o.clusterCIDRs, want) {
				t.Errorf("cluster CIDRs %v, want %v", o.clusterCIDRs, want)
			}
			if o.metricsAddr != "0.0.0.0:10249" || o.healthzAddr != "0.0.0.0:10256" {
				t.Errorf("metrics %q, healthz %q", o.metricsAddr, o.healthzAddr)
			}
			// Zero values are kube-proxy's defaults.
			if o.masqueradeAll || o.masqueradeBit != 14 || o.minSyncPeriod != time.Second || o.syncPeriod != 30*time.Second ||
				o.configSyncPeriod != 15*time.Minute || !o.localhostNodePorts || o.detectLocalMode != "ClusterCIDR" ||
				o.bindAddress.IsValid() || o.nodePortPrimary || len(o.nodePortAddresses) != 0 || o.ruleCheckInterval != time.Second {
				t.Errorf("defaults not applied: %+v", o)
			}
			if len(o.ignoredFlags) != 0 {
				t.Errorf("ignored flags %v: --hostname-override applies with --config", o.ignoredFlags)
			}
			if len(o.ignoredFields) != 0 {
				t.Errorf("ignored fields %q, want none", o.ignoredFields)
			}
			// The conntrack section applies: its timeout, and kube-proxy's
			// defaults for the fields left null.
			want := conntrackFlags{maxPerCore: 32768, min: 131072, tcpEstablished: 2 * time.Hour, tcpCloseWait: time.Hour}
			if o.conntrack != want {
				t.Errorf("conntrack %+v, want %+v", o.conntrack, want)
			}
			if o.oomScoreAdj != -999 || o.kubeAPI != (apiClient{clientContentType, clientAccept, 5, 10}) || o.profiling || o.logging.Format != "text" {
				t.Errorf("OOM score %d, API client %+v, profiling %v, log format %q", o.oomScoreAdj, o.kubeAPI, o.profiling, o.logging.Format)
			}
		}},
		{name: "hostnameOverride from the file without the flag", config: edit(`hostnameOverride: ""`, `hostnameOverride: node-2`), check: func(t *testing.T, o *options) {
			if o.hostnameOverride != "node-2" {
				t.Errorf("hostname %q", o.hostnameOverride)
			}
		}},
		{name: "--hostname-override wins over the file", config: edit(`hostnameOverride: ""`, `hostnameOverride: node-2`), args: []string{"--hostname-override", "node-1"},
			check: func(t *testing.T, o *options) {
				if o.hostnameOverride != "node-1" {
					t.Errorf("hostname %q", o.hostnameOverride)
				}
			}},
		{name: "flags the file covers are ignored", config: kubeadmConfig,
			args: []string{"--proxy-mode=nftables", "--cluster-cidr=10.0.0.0/8", "--metrics-bind-address=", "--iptables-sync-period=1m", "--kubeconfig=/other"},
			check: func(t *testing.T, o *options) {
				if o.proxyMode != "iptables" || len(o.clusterCIDRs) != 2 || o.metricsAddr != "0.0.0.0:10249" || o.syncPeriod != 30*time.Second ||
					o.kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" {
					t.Errorf("a flag won over the file: %+v", o)
				}
				want := []string{"--cluster-cidr", "--iptables-sync-period", "--kubeconfig", "--metrics-bind-address", "--proxy-mode"}
				if !slices.Equal(o.ignoredFlags, want) {
					t.Errorf("ignored flags %v, want %v", o.ignoredFlags, want)
				}
			}},
		{name: "flags the file has no field for still apply", config: kubeadmConfig,
			args: []string{"--master=https://10.0.0.1:6443", "--dry-run", "--service-cluster-ip-range=10.96.0.0/12", "--rule-check-interval=5s"},
			check: func(t *testing.T, o *options) {
				if o.master != "https://10.0.0.1:6443" || !o.dryRun || len(o.serviceCIDRs) != 1 || o.ruleCheckInterval != 5*time.Second || len(o.ignoredFlags) != 0 {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "nftables takes the nftables section", config: edit(
			"mode: iptables", "mode: nftables",
			"  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:",
			"  masqueradeAll: false\n  masqueradeBit: 9\n  minSyncPeriod: 3s\n  syncPeriod: 10s\nipvs:",
			"nftables:\n  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s",
			"nftables:\n  masqueradeAll: true\n  masqueradeBit: 12\n  minSyncPeriod: 250ms\n  syncPeriod: 1m"),
			args: []string{"--cleanup-kube-proxy"},
			check: func(t *testing.T, o *options) {
				if o.proxyMode != "nftables" || !o.masqueradeAll || o.masqueradeBit != 12 || o.minSyncPeriod != 250*time.Millisecond ||
					o.syncPeriod != time.Minute || !o.cleanupKubeProxy || o.ruleCheckInterval != nftablesRuleCheckInterval {
					t.Errorf("parsed %+v", o)
				}
				for _, f := range []string{"iptables.masqueradeBit", "iptables.minSyncPeriod", "iptables.syncPeriod"} {
					if !slices.Contains(o.ignoredFields, f+" (iptables mode only)") {
						t.Errorf("ignored fields %q lack %s", o.ignoredFields, f)
					}
				}
			}},
		{name: "iptables takes the iptables section", config: edit(
			"  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:",
			"  masqueradeAll: true\n  masqueradeBit: 9\n  minSyncPeriod: 3s\n  syncPeriod: 10s\nipvs:",
			"  localhostNodePorts: null", "  localhostNodePorts: false",
			"nftables:\n  masqueradeAll: false\n  masqueradeBit: null",
			"nftables:\n  masqueradeAll: false\n  masqueradeBit: 12"),
			check: func(t *testing.T, o *options) {
				if !o.masqueradeAll || o.masqueradeBit != 9 || o.minSyncPeriod != 3*time.Second || o.syncPeriod != 10*time.Second || o.localhostNodePorts {
					t.Errorf("parsed %+v", o)
				}
				if !slices.Contains(o.ignoredFields, "nftables.masqueradeBit (nftables mode only)") {
					t.Errorf("ignored fields %q", o.ignoredFields)
				}
			}},
		{name: "empty mode is iptables", config: edit("mode: iptables", `mode: ""`), check: func(t *testing.T, o *options) {
			if o.proxyMode != "iptables" {
				t.Errorf("mode %q", o.proxyMode)
			}
		}},
		{name: "node and local-traffic settings", config: edit(
			"bindAddress: 0.0.0.0", "bindAddress: 192.168.1.10",
			"nodePortAddresses: null", "nodePortAddresses:\n- primary\n- 10.1.0.0/16",
			`detectLocalMode: ""`, "detectLocalMode: BridgeInterface",
			`  bridgeInterface: ""`, "  bridgeInterface: cbr0",
			"configSyncPeriod: 0s", "configSyncPeriod: 5m",
			"metricsBindAddress: 0.0.0.0:10249", "metricsBindAddress: 0.0.0.0",
			`healthzBindAddress: ""`, "healthzBindAddress: 192.168.1.10"),
			check: func(t *testing.T, o *options) {
				if o.bindAddress != netip.MustParseAddr("192.168.1.10") || !o.nodePortPrimary || !slices.Equal(o.nodePortAddresses, []netip.Prefix{pfx("10.1.0.0/16")}) ||
					o.detectLocalMode != "BridgeInterface" || o.bridgeInterface != "cbr0" || o.configSyncPeriod != 5*time.Minute {
					t.Errorf("parsed %+v", o)
				}
				// A bare IP gets the default port, as kube-proxy's AppendPortIfNeeded.
				if o.metricsAddr != "0.0.0.0:10249" || o.healthzAddr != "192.168.1.10:10256" {
					t.Errorf("metrics %q, healthz %q", o.metricsAddr, o.healthzAddr)
				}
			}},
		{name: "IPv6 bindAddress: IPv6 server defaults", config: edit("bindAddress: 0.0.0.0", "bindAddress: fd00::10", "metricsBindAddress: 0.0.0.0:10249", `metricsBindAddress: ""`),
			check: func(t *testing.T, o *options) {
				// An empty metricsBindAddress is the default, not "off": as in kube-proxy.
				if o.metricsAddr != "[::1]:10249" || o.healthzAddr != "[::]:10256" || o.bindAddress != netip.MustParseAddr("fd00::10") {
					t.Errorf("metrics %q, healthz %q, bind %v", o.metricsAddr, o.healthzAddr, o.bindAddress)
				}
			}},
		{name: "interface prefix", config: edit(`detectLocalMode: ""`, "detectLocalMode: InterfaceNamePrefix", `  interfaceNamePrefix: ""`, "  interfaceNamePrefix: veth"),
			check: func(t *testing.T, o *options) {
				if o.detectLocalMode != "InterfaceNamePrefix" || o.interfacePrefix != "veth" {
					t.Errorf("parsed %+v", o)
				}
			}},
		{name: "accepted and ignored", config: edit(
			`  scheduler: ""`, "  scheduler: rr",
			"bindAddressHardFail: false", "bindAddressHardFail: true",
			"kind: KubeProxyConfiguration", "kind: KubeProxyConfiguration\nfeatureGates:\n  SomeGate: true\n  LoggingAlphaOptions: true",
			`portRange: ""`, "portRange: 30000-32767"),
			check: func(t *testing.T, o *options) {
				for _, f := range []string{"ipvs.scheduler", "featureGates", "bindAddressHardFail", "portRange"} {
					if !slices.ContainsFunc(o.ignoredFields, func(s string) bool { return strings.HasPrefix(s, f+" (") }) {
						t.Errorf("ignored fields %q lack %s", o.ignoredFields, f)
					}
				}
				// Known gates apply; the file's unknown ones are named
				// among its ignored fields, not the flags' warning.
				if !o.gates.Enabled("LoggingAlphaOptions") || len(o.inapplicable) != 0 {
					t.Errorf("gates %v, inapplicable %q", o.featureGates, o.inapplicable)
				}
			}},
		{name: "what svcproxy honours beyond the rules", config: edit(
			"oomScoreAdj: null", "oomScoreAdj: -500",
			"  maxPerCore: null", "  maxPerCore: 0",
			"  min: null", "  min: 4096",
			"  tcpBeLiberal: false", "  tcpBeLiberal: true",
			"  tcpCloseWaitTimeout: null", "  tcpCloseWaitTimeout: 0s",
			"  udpStreamTimeout: 0s", "  udpStreamTimeout: 2m",
			"  udpTimeout: 0s", "  udpTimeout: 30s",
			"enableProfiling: false", "enableProfiling: true",
			"  qps: 0", "  qps: 50.5",
			"  burst: 0", "  burst: 100",
			`  contentType: ""`, "  contentType: application/json",
			`  acceptContentTypes: ""`, "  acceptContentTypes: application/json",
			"logging:", "logging:\n  format: json"),
			args: []string{"--conntrack-min=1", "--oom-score-adj=0", "--kube-api-qps=1"},
			check: func(t *testing.T, o *options) {
				want := conntrackFlags{min: 4096, tcpEstablished: 2 * time.Hour, tcpBeLiberal: true, udpTimeout: 30 * time.Second, udpStreamTimeout: 2 * time.Minute}
				if o.conntrack != want {
					t.Errorf("conntrack %+v, want %+v", o.conntrack, want)
				}
				if o.oomScoreAdj != -500 || !o.profiling || o.kubeAPI != (apiClient{"application/json", "application/json", 50.5, 100}) || o.logging.Format != "json" {
					t.Errorf("OOM score %d, profiling %v, API client %+v, log format %q", o.oomScoreAdj, o.profiling, o.kubeAPI, o.logging.Format)
				}
				if want := []string{"--conntrack-min", "--kube-api-qps", "--oom-score-adj"}; !slices.Equal(o.ignoredFlags, want) {
					t.Errorf("ignored flags %v, want %v", o.ignoredFlags, want)
				}
				if o.at("conntrack-min") != "--config "+o.configFile+": conntrack.min" {
					t.Errorf("conntrack-min comes from %q", o.at("conntrack-min"))
				}
			}},
		{name: "logging flags win over the file's, vmodule adds to it", config: edit("logging:", "logging:\n  format: json\n  vmodule:\n  - filePattern: a\n    verbosity: 1", "  verbosity: 0", "  verbosity: 3",
			"  flushFrequency: 0", "  flushFrequency: 2s"),
			args: []string{"--logging-format=text", "--vmodule=b=2"},
			check: func(t *testing.T, o *options) {
				l := o.logging
				if l.Format != "text" || l.Verbosity != 3 || l.FlushFrequency.Duration.Duration != 2*time.Second || len(l.VModule) != 2 ||
					l.VModule[0].FilePattern != "b" || l.VModule[1].FilePattern != "a" {
					t.Errorf("logging %+v", l)
				}
			}},
		{name: "JSON works too", config: `{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "nftables"}`,
			check: func(t *testing.T, o *options) {
				if o.proxyMode != "nftables" || o.metricsAddr != "127.0.0.1:10249" || o.minSyncPeriod != time.Second {
					t.Errorf("parsed %+v", o)
				}
			}},

		{name: "ipvs", config: edit("mode: iptables", "mode: ipvs"), wantErr: "config.conf: mode: ipvs mode is not supported"},
		{name: "unknown mode", config: edit("mode: iptables", "mode: kernelspace"), wantErr: "mode: unknown mode \"kernelspace\""},
		// Unknown and duplicate fields: decoded leniently, as kube-proxy
		// does, and named for the log.
		{name: "unknown field", config: edit("  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:",
			"  masqueradeAll: false\n  masqueradeBits: 3\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:"),
			check: lenientCheck(`unknown field "iptables.masqueradeBits"`, func(o *options) bool { return o.masqueradeBit == 14 })},
		{name: "top-level masqueradeAll is not v1alpha1", config: edit("mode: iptables", "mode: iptables\nmasqueradeAll: true\nsyncPeriod: 1s"),
			check: lenientCheck(`unknown field "masqueradeAll"`, func(o *options) bool { return !o.masqueradeAll })},
		{name: "duplicate field", config: edit("mode: iptables", "mode: iptables\nmode: nftables"),
			check: lenientCheck(`"mode"`, func(o *options) bool { return o.proxyMode == "nftables" })},
		{name: "wrong version", config: edit("apiVersion: kubeproxy.config.k8s.io/v1alpha1", "apiVersion: kubeproxy.config.k8s.io/v1alpha2"), wantErr: "v1alpha2"},
		{name: "wrong kind", config: edit("kind: KubeProxyConfiguration", "kind: KubeletConfiguration"), wantErr: "KubeletConfiguration"},
		{name: "not a config", config: "just: [text", wantErr: "config.conf: not valid YAML"},
		{name: "wrong type", config: edit("  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:", "  masqueradeBit: fourteen\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:"),
			wantErr: "masqueradeBit"},
		{name: "bad cluster CIDR names the field", config: edit("clusterCIDR: 10.244.0.0/16,fd00:10:244::/56", "clusterCIDR: 10.244.0.0/33"), wantErr: `config.conf: clusterCIDR: "10.244.0.0/33" is not a CIDR`},
		{name: "bad bit names the field", config: edit("  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:", "  masqueradeBit: 32\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:"),
			wantErr: "config.conf: iptables.masqueradeBit: 32 is not in 0..31"},
		{name: "iptables bit is validated in nftables mode too", config: edit("mode: iptables", "mode: nftables",
			"  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:", "  masqueradeBit: 40\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:"), wantErr: "iptables.masqueradeBit: 40"},
		{name: "nftables min above max", config: edit("mode: iptables", "mode: nftables",
			"nftables:\n  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s", "nftables:\n  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 2m"),
			wantErr: "nftables.minSyncPeriod: 2m0s is longer than nftables.syncPeriod 30s"},
		{name: "negative sync period", config: edit("  minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:", "  minSyncPeriod: 0s\n  syncPeriod: -1s\nipvs:"), wantErr: "iptables.syncPeriod: -1s must be positive"},
		{name: "bridge mode needs the bridge", config: edit(`detectLocalMode: ""`, "detectLocalMode: BridgeInterface"), wantErr: "detectLocal.bridgeInterface: required with detectLocalMode=BridgeInterface"},
		{name: "bad detect mode", config: edit(`detectLocalMode: ""`, "detectLocalMode: Magic"), wantErr: "detectLocalMode: unknown mode"},
		{name: "bad node port address", config: edit("nodePortAddresses: null", "nodePortAddresses: [eth0]"), wantErr: "nodePortAddresses: \"eth0\""},
		{name: "bad bind address", config: edit("bindAddress: 0.0.0.0", "bindAddress: node-1"), wantErr: "bindAddress: \"node-1\" is not an IP address"},
		{name: "bad metrics address", config: edit("metricsBindAddress: 0.0.0.0:10249", "metricsBindAddress: localhost:10249"), wantErr: "metricsBindAddress: \"localhost\" is not an IP address"},
		{name: "cleanup-kube-proxy needs nftables in the file", config: kubeadmConfig, args: []string{"--cleanup-kube-proxy", "--proxy-mode=nftables"},
			wantErr: "--cleanup-kube-proxy: only with mode: nftables in"},
		{name: "negative conntrack min", config: edit("  min: null", "  min: -1"), wantErr: "conntrack.min: -1 is negative"},
		{name: "negative close-wait timeout", config: edit("  tcpCloseWaitTimeout: null", "  tcpCloseWaitTimeout: -1s"), wantErr: "conntrack.tcpCloseWaitTimeout: -1s is negative"},
		{name: "OOM score out of range", config: edit("oomScoreAdj: null", "oomScoreAdj: -1001"), wantErr: "oomScoreAdj: -1001 is not in -1000..1000"},
		{name: "negative burst", config: edit("  burst: 0", "  burst: -3"), wantErr: "clientConnection.burst: -3 is negative"},
		{name: "unknown log format", config: edit("logging:", "logging:\n  format: xml"), wantErr: "logging.format: Invalid value: \"xml\": Unsupported log format"},
		{name: "split stream needs the alpha gate", config: edit("    text:\n      infoBufferSize: \"0\"", "    text:\n      splitStream: true\n      infoBufferSize: \"0\""),
			wantErr: "logging.options.text.splitStream"},
		{name: "json log format with klog's own flags", config: edit("logging:", "logging:\n  format: json"), args: []string{"--log-file="}, // klog's defaults are global: keep them
			wantErr: "logging.format: \"json\" does not honour klog's own [--log-file]"},
		{name: "blank --hostname-override", config: kubeadmConfig, args: []string{"--hostname-override= "}, wantErr: "--hostname-override"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.config)
			o, err := parseFlags(append([]string{"--config", path}, tc.args...))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("no error, want one naming %q", tc.wantErr)
				}
				for _, w := range strings.Split(tc.wantErr, "|") {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("err = %v, want one naming %q", err, w)
					}
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				if !strings.HasPrefix(tc.wantErr, "--") && !strings.HasPrefix(err.Error(), "--config "+path+": ") {
					t.Errorf("error does not start with --config and the file: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
	if _, err := parseFlags([]string{"--config", filepath.Join(t.TempDir(), "missing.conf")}); err == nil || !strings.Contains(err.Error(), "missing.conf") {
		t.Errorf("missing file: err = %v", err)
	}
}

// TestConfigLogging: the file's verbosity and vmodule become -v and
// --vmodule (-v given on the command line wins; --vmodule's patterns come
// first).
func TestConfigLogging(t *testing.T) {
	cfg, _, err := decodeConfig([]byte(edit("  verbosity: 0", "  verbosity: 4\n  vmodule:\n  - filePattern: proxier*\n    verbosity: 6")))
	if err != nil {
		t.Fatal(err)
	}
	settings, _, err := configSettings(cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range settings {
		got[s.flag] = s.value
	}
	if got["v"] != "4" || got["vmodule"] != "proxier*=6" {
		t.Errorf("v %q, vmodule %q", got["v"], got["vmodule"])
	}
	// Every flag the file stands for gets a value, so no command-line
	// value of one survives.
	for name := range configFlags {
		if _, ok := got[name]; !ok {
			t.Errorf("the file sets no value for --%s", name)
		}
	}
}

// TestHelp: --help lists every flag with its help text and default, and
// explains --config.
func TestHelp(t *testing.T) {
	out := usage()
	if !strings.HasPrefix(out, "Usage: svcproxy [flags]\n") {
		t.Errorf("no usage line:\n%s", out)
	}
	fs, _ := newFlagSet(&options{})
	n := 0
	fs.VisitAll(func(f *pflag.Flag) {
		n++
		_, help := pflag.UnquoteUsage(f)
		i := -1
		for _, pfx := range []string{"\n  --", "\n  -" + f.Shorthand + ", --"} {
			for _, end := range []string{" ", "\n"} {
				if j := strings.Index(out, pfx+f.Name+end); j >= 0 && i < 0 {
					i = j + 1
				}
			}
		}
		if i < 0 {
			t.Errorf("--%s is not listed", f.Name)
			return
		}
		entry := out[i:]
		if j := strings.Index(entry, "\n  -"); j >= 0 {
			entry = entry[:j]
		}
		if !strings.Contains(entry, help) || !strings.Contains(entry, "(default ") || !strings.Contains(entry, strings.Trim(f.DefValue, "[]")) {
			t.Errorf("--%s lacks its help text or default %q:\n%s", f.Name, f.DefValue, entry)
		}
	})
	if n < 30 {
		t.Errorf("only %d flags", n)
	}
	for _, want := range []string{`--metrics-bind-address string`, `(default "127.0.0.1:10249")`, "--config string", "KubeProxyConfiguration", "-v, --v Level",
		"-h, --help", "--conntrack-max-per-core int32", "(default 32768)", "--nodeport-addresses strings", "--version version", "--logging-format string"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

// TestHelpExit runs main with --help: the usage on stdout, nothing on
// stderr, exit status 0.
func TestHelpExit(t *testing.T) {
	if os.Getenv("SVCPROXY_TEST_MAIN") == "1" {
		os.Args = []string{"svcproxy", "--help"}
		main()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelpExit$")
	cmd.Env = append(os.Environ(), "SVCPROXY_TEST_MAIN=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("svcproxy --help: %v; stderr:\n%s", err, stderr.String())
	}
	if string(out) != usage() {
		t.Errorf("stdout is not the usage:\n%s", out)
	}
	if stderr.Len() > 0 {
		t.Errorf("stderr: %s", stderr.String())
	}
}

// TestDeployConfigFile: the example in deploy/config-file parses, with the
// settings the base DaemonSet gives as flags.
func TestDeployConfigFile(t *testing.T) {
	o, err := parseFlags([]string{"--config", "../../deploy/config-file/config.conf", "--hostname-override=n1"})
	if err != nil {
		t.Fatal(err)
	}
	if o.proxyMode != "iptables" || o.metricsAddr != "0.0.0.0:10249" || o.healthzAddr != "0.0.0.0:10256" || o.hostnameOverride != "n1" || len(o.ignoredFields) != 0 {
		t.Errorf("parsed %+v", o)
	}
}

// lenientCheck checks that --config was decoded leniently, strict decoding
// having found want, and that ok holds of the result.
func lenientCheck(want string, ok func(*options) bool) func(*testing.T, *options) {
	return func(t *testing.T, o *options) {
		if !slices.ContainsFunc(o.lenientFields, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("lenient decoding errors %q lack %s", o.lenientFields, want)
		}
		if !ok(o) {
			t.Errorf("leniently decoded options %+v", o)
		}
	}
}
