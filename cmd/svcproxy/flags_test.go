package main

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/svcproxy/svcproxy/proxier/conntrack"
)

// parseCase is parseFlags given args: it fails with an error (one line)
// naming wantErr, or succeeds and check holds.
type parseCase struct {
	name    string
	args    []string
	wantErr string // substring; "" means success
	check   func(*testing.T, *options)
}

func runParseCases(t *testing.T, cases []parseCase) {
	for _, tc := range cases {
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

func TestParseFlags(t *testing.T) {
	runParseCases(t, []parseCase{
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
	})
}

// kubeProxyFlags are every flag of kube-proxy v1.36.3 on Linux (its
// command's flags, the logging flags k8s.io/component-base adds, and the
// machine-ID flags of the Go flag set), with its type and default as
// kube-proxy's --help shows them, and a value to give it.
var kubeProxyFlags = []struct{ name, typ, def, value string }{
	{"bind-address", "ip", "0.0.0.0", "10.0.0.1"},
	{"bind-address-hard-fail", "bool", "false", "true"},
	{"boot-id-file", "string", "/proc/sys/kernel/random/boot_id", "/boot-id"},
	{"cleanup", "bool", "false", "true"},
	{"cluster-cidr", "string", "", "10.244.0.0/16"},
	{"config", "string", "", ""},
	{"config-sync-period", "duration", "15m0s", "1m"},
	{"conntrack-max-per-core", "int32", "32768", "0"},
	{"conntrack-min", "int32", "131072", "1"},
	{"conntrack-tcp-be-liberal", "bool", "false", "true"},
	{"conntrack-tcp-timeout-close-wait", "duration", "1h0m0s", "1h"},
	{"conntrack-tcp-timeout-established", "duration", "24h0m0s", "2h"},
	{"conntrack-udp-timeout", "duration", "0s", "30s"},
	{"conntrack-udp-timeout-stream", "duration", "0s", "2m"},
	{"detect-local-mode", "LocalMode", "", "ClusterCIDR"},
	{"feature-gates", "mapStringBool", "", "AllAlpha=false"},
	{"healthz-bind-address", "ipport", "0.0.0.0:10256", "0.0.0.0:10256"},
	{"healthz-port", "int32", "10256", "10256"},
	{"help", "bool", "false", ""},
	{"hostname-override", "string", "", "node-1"},
	{"init-only", "bool", "false", "true"},
	{"iptables-localhost-nodeports", "bool", "true", "false"},
	{"iptables-masquerade-bit", "int32", "14", "14"},
	{"iptables-min-sync-period", "duration", "1s", "1s"},
	{"iptables-sync-period", "duration", "30s", "30s"},
	{"ipvs-exclude-cidrs", "stringSlice", "[]", "10.0.0.0/8"},
	{"ipvs-min-sync-period", "duration", "1s", "1s"},
	{"ipvs-scheduler", "string", "", "rr"},
	{"ipvs-strict-arp", "bool", "false", "true"},
	{"ipvs-sync-period", "duration", "30s", "30s"},
	{"ipvs-tcp-timeout", "duration", "0s", "1s"},
	{"ipvs-tcpfin-timeout", "duration", "0s", "1s"},
	{"ipvs-udp-timeout", "duration", "0s", "1s"},
	{"kube-api-burst", "int32", "10", "20"},
	{"kube-api-content-type", "string", "application/vnd.kubernetes.protobuf", "application/json"},
	{"kube-api-qps", "float32", "5", "10"},
	{"kubeconfig", "string", "", "/kubeconfig"},
	{"log-flush-frequency", "duration", "5s", "1s"},
	{"log-json-info-buffer-size", "quantity", "0", "0"},
	{"log-json-split-stream", "bool", "false", "false"},
	{"log-text-info-buffer-size", "quantity", "0", "0"},
	{"log-text-split-stream", "bool", "false", "false"},
	{"logging-format", "string", "text", "json"},
	{"machine-id-file", "string", "/etc/machine-id,/var/lib/dbus/machine-id", "/machine-id"},
	{"masquerade-all", "bool", "false", "true"},
	{"master", "string", "", "https://10.0.0.1:6443"},
	{"metrics-bind-address", "ipport", "127.0.0.1:10249", "0.0.0.0:10249"},
	{"metrics-port", "int32", "10249", "10249"},
	{"nodeport-addresses", "stringSlice", "[]", "primary"},
	{"oom-score-adj", "int32", "-999", "-998"},
	{"pod-bridge-interface", "string", "", "cbr0"},
	{"pod-interface-name-prefix", "string", "", "veth"},
	{"profiling", "bool", "false", "true"},
	{"proxy-mode", "ProxyMode", "", "nftables"},
	{"show-hidden-metrics-for-version", "string", "", "1.35"},
	{"v", "Level", "0", "2"},
	{"version", "version", "false", "false"},
	{"vmodule", "pattern=N,...", "", "proxier*=4"},
	{"write-config-to", "string", "", ""},
}

// kubeProxyDefaults are the flags whose default svcproxy shows otherwise
// than kube-proxy, for the same effect: kube-proxy resolves its "" later.
var kubeProxyDefaults = map[string]string{"detect-local-mode": "ClusterCIDR", "proxy-mode": "iptables"}

// TestKubeProxyFlags: every kube-proxy flag is accepted, in both forms,
// with kube-proxy's default, and alone it parses without error.
func TestKubeProxyFlags(t *testing.T) {
	fs, _ := newFlagSet(&options{})
	for _, f := range kubeProxyFlags {
		pf := fs.Lookup(f.name)
		if pf == nil {
			t.Errorf("--%s (kube-proxy %s) is not accepted", f.name, f.typ)
			continue
		}
		want := f.def
		if d, ok := kubeProxyDefaults[f.name]; ok {
			want = d
		}
		if pf.DefValue != want {
			t.Errorf("--%s: default %q, kube-proxy's is %q", f.name, pf.DefValue, f.def)
		}
		if f.name == "help" || f.value == "" {
			continue
		}
		for _, args := range [][]string{{"--" + f.name + "=" + f.value}, {"--" + f.name, f.value}} {
			if (f.typ == "bool" || f.typ == "version") && len(args) == 2 {
				if f.value != "true" {
					continue
				}
				args = args[:1] // a bool flag takes no separate value
			}
			if _, err := parseFlags(args); err != nil {
				t.Errorf("%q: %v", args, err)
			}
		}
	}
	if len(kubeProxyFlags) != 59 {
		t.Errorf("%d kube-proxy flags listed, want 59", len(kubeProxyFlags))
	}
	for _, short := range []string{"-v=3", "-v"} {
		args := []string{short}
		if short == "-v" {
			args = append(args, "3")
		}
		if o, err := parseFlags(args); err != nil || o.logging.Verbosity != 3 {
			t.Errorf("%q: %v", args, err)
		}
	}
}

func TestKubeProxyFlagValues(t *testing.T) {
	pfx := netip.MustParsePrefix
	runParseCases(t, []parseCase{
		{name: "repeated --nodeport-addresses append", args: []string{"--nodeport-addresses=10.0.0.0/8", "--nodeport-addresses", "192.168.0.0/16,fd00::/64"},
			check: func(t *testing.T, o *options) {
				if want := []netip.Prefix{pfx("10.0.0.0/8"), pfx("192.168.0.0/16"), pfx("fd00::/64")}; !slices.Equal(o.nodePortAddresses, want) {
					t.Errorf("node port addresses %v, want %v", o.nodePortAddresses, want)
				}
			}},
		{name: "repeated --cluster-cidr: the last wins, as in kube-proxy", args: []string{"--cluster-cidr=10.0.0.0/8", "--cluster-cidr=10.244.0.0/16"},
			check: func(t *testing.T, o *options) {
				if !slices.Equal(o.clusterCIDRs, []netip.Prefix{pfx("10.244.0.0/16")}) {
					t.Errorf("cluster CIDRs %v", o.clusterCIDRs)
				}
			}},
		{name: "underscores read as dashes", args: []string{"--conntrack_min=7", "--hostname_override", "n1"},
			check: func(t *testing.T, o *options) {
				if o.conntrack.min != 7 || o.hostnameOverride != "n1" {
					t.Errorf("conntrack min %d, hostname %q", o.conntrack.min, o.hostnameOverride)
				}
			}},
		{name: "conntrack flags", args: []string{"--conntrack-max-per-core=0", "--conntrack-min", "10", "--conntrack-tcp-timeout-established=1h",
			"--conntrack-tcp-timeout-close-wait", "0s", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=15s", "--conntrack-udp-timeout-stream=3m"},
			check: func(t *testing.T, o *options) {
				want := conntrack.Tuning{Min: 10, TCPEstablishedTimeout: time.Hour, TCPBeLiberal: true, UDPTimeout: 15 * time.Second, UDPStreamTimeout: 3 * time.Minute}
				if got := o.conntrackTuning(); got != want {
					t.Errorf("tuning %+v, want %+v", got, want)
				}
			}},
		{name: "conntrack defaults are kube-proxy's", check: func(t *testing.T, o *options) {
			if got := o.conntrackTuning(); got != conntrack.DefaultTuning {
				t.Errorf("tuning %+v, want %+v", got, conntrack.DefaultTuning)
			}
			if o.oomScoreAdj != -999 || o.kubeAPI != (apiClient{clientContentType, clientAccept, 5, 10}) {
				t.Errorf("OOM score %d, API client %+v", o.oomScoreAdj, o.kubeAPI)
			}
		}},
		{name: "API client", args: []string{"--kube-api-qps=20.5", "--kube-api-burst", "40", "--kube-api-content-type=application/json"},
			check: func(t *testing.T, o *options) {
				if o.kubeAPI != (apiClient{"application/json", clientAccept, 20.5, 40}) {
					t.Errorf("API client %+v", o.kubeAPI)
				}
			}},
		{name: "deprecated ports: a bare IP takes the port", args: []string{"--healthz-bind-address=10.0.0.1", "--healthz-port=1234", "--metrics-bind-address", "::1"},
			check: func(t *testing.T, o *options) {
				if o.healthzAddr != "10.0.0.1:1234" || o.metricsAddr != "[::1]:10249" {
					t.Errorf("healthz %q, metrics %q", o.healthzAddr, o.metricsAddr)
				}
				if want := []string{deprecatedFlags["healthz-port"]}; !slices.Equal(o.deprecated, want) {
					t.Errorf("deprecation notices %q, want %q", o.deprecated, want)
				}
			}},
		{name: "deprecated ports: 0 turns a server off, an address with a port keeps it", args: []string{"--metrics-port=0", "--healthz-port=1234"},
			check: func(t *testing.T, o *options) {
				if o.metricsAddr != "" || o.healthzAddr != "0.0.0.0:10256" {
					t.Errorf("healthz %q, metrics %q", o.healthzAddr, o.metricsAddr)
				}
			}},
		{name: "inapplicable flags: one warning names them", args: []string{"--ipvs-scheduler=rr", "--ipvs_strict_arp", "--bind-address-hard-fail",
			"--feature-gates=LoggingBetaOptions=true,TopologyAwareHints=false", "--feature-gates", "AllAlpha=false,KubeProxyDrainingTerminatingNodes=true", "--profiling"},
			check: func(t *testing.T, o *options) {
				want := []string{
					"--bind-address-hard-fail (svcproxy logs a server that cannot bind and keeps running)",
					"--ipvs-scheduler (ipvs mode only)",
					"--ipvs-strict-arp (ipvs mode only)",
					"--feature-gates KubeProxyDrainingTerminatingNodes,TopologyAwareHints (no such svcproxy gate)",
				}
				if !slices.Equal(o.inapplicable, want) {
					t.Errorf("inapplicable %q,\nwant %q", o.inapplicable, want)
				}
				if !o.gates.Enabled("LoggingBetaOptions") || len(o.featureGates) != 4 {
					t.Errorf("gates %v", o.featureGates)
				}
			}},
		{name: "no warning without inapplicable flags", args: []string{"--proxy-mode=nftables", "--conntrack-min=1"},
			check: func(t *testing.T, o *options) {
				if len(o.inapplicable) != 0 || len(o.deprecated) != 0 {
					t.Errorf("inapplicable %q, deprecated %q", o.inapplicable, o.deprecated)
				}
			}},
		{name: "version", args: []string{"--version"}, check: func(t *testing.T, o *options) {
			if o.version != "true" {
				t.Errorf("version %q", o.version)
			}
		}},
		{name: "version raw", args: []string{"--version=raw"}, check: func(t *testing.T, o *options) {
			if o.version != "raw" {
				t.Errorf("version %q", o.version)
			}
		}},
		{name: "version to report", args: []string{"--version=v1.36.3"}, check: func(t *testing.T, o *options) {
			if o.version != "v1.36.3" {
				t.Errorf("version %q", o.version)
			}
		}},
		{name: "json logging", args: []string{"--logging-format=json", "-v=4"}, check: func(t *testing.T, o *options) {
			if o.logging.Format != "json" || o.logging.Verbosity != 4 || len(o.klogFlags) != 0 {
				t.Errorf("logging %+v, klog flags %v", o.logging, o.klogFlags)
			}
		}},
		{name: "split stream with the alpha gate", args: []string{"--log-text-split-stream", "--feature-gates=LoggingAlphaOptions=true"},
			check: func(t *testing.T, o *options) {
				if !o.logging.Options.Text.SplitStream {
					t.Errorf("logging %+v", o.logging)
				}
			}},
		{name: "version garbage", args: []string{"--version=yes please"}, wantErr: "--version"},
		{name: "bad feature gate pair", args: []string{"--feature-gates=AllAlpha"}, wantErr: "feature-gates"},
		{name: "bad feature gate value", args: []string{"--feature-gates=AllAlpha=maybe"}, wantErr: "feature-gates"},
		{name: "split stream without the alpha gate", args: []string{"--log-text-split-stream"}, wantErr: "--log-text-split-stream: Forbidden"},
		{name: "unknown log format", args: []string{"--logging-format=xml"}, wantErr: "--logging-format: Invalid value"},
		{name: "json with vmodule", args: []string{"--logging-format=json", "--vmodule=a=1"}, wantErr: "--vmodule"},
		{name: "json with klog's own output", args: []string{"--logging-format=json", "--alsologtostderr=false"}, wantErr: "--logging-format: \"json\" does not honour klog's own [--alsologtostderr]"},
		{name: "negative conntrack max", args: []string{"--conntrack-max-per-core=-1"}, wantErr: "--conntrack-max-per-core: -1 is negative"},
		{name: "negative udp timeout", args: []string{"--conntrack-udp-timeout=-1s"}, wantErr: "--conntrack-udp-timeout: -1s is negative"},
		{name: "OOM score out of range", args: []string{"--oom-score-adj=1001"}, wantErr: "--oom-score-adj: 1001 is not in -1000..1000"},
		{name: "negative burst", args: []string{"--kube-api-burst=-1"}, wantErr: "--kube-api-burst: -1 is negative"},
		{name: "bad qps", args: []string{"--kube-api-qps=lots"}, wantErr: "--kube-api-qps"},
		{name: "init-only with dry-run", args: []string{"--init-only", "--dry-run"}, wantErr: "--init-only"},
		{name: "bool flags take no separate value", args: []string{"--masquerade-all", "false"}, wantErr: "unexpected argument \"false\""},
		{name: "single-dash long flags are not kube-proxy's", args: []string{"-kubeconfig=/k"}, wantErr: "-k"},
	})
	if _, err := parseFlags([]string{"-h"}); !errors.Is(err, pflag.ErrHelp) {
		t.Errorf("-h: err = %v, want pflag.ErrHelp", err)
	}
}

// TestInstallerArgs: the argument lists installers give kube-proxy parse,
// with their meaning (each list as the installer writes it; paths of
// --config are this test's).
func TestInstallerArgs(t *testing.T) {
	config := writeConfig(t, kubeadmConfig)
	for _, tc := range []struct {
		name  string
		args  []string
		check func(*testing.T, *options)
	}{
		// kubeadm's DaemonSet (cmd/kubeadm/app/phases/addons/proxy).
		{"kubeadm", []string{"--config=" + config, "--hostname-override=node-1"}, func(t *testing.T, o *options) {
			if o.hostnameOverride != "node-1" || o.conntrack.tcpEstablished != 2*time.Hour {
				t.Errorf("parsed %+v", o)
			}
		}},
		// kops's static pod (nodeup, behind go-runner's own --log-file).
		{"kops", []string{"--cluster-cidr=100.96.0.0/11", "--conntrack-max-per-core=131072", "--hostname-override=i-0e30debd74ba1ecdd",
			"--kubeconfig=/var/lib/kube-proxy/kubeconfig", "--master=https://api.internal.minimal.example.com", "--oom-score-adj=-998", "--v=2"},
			func(t *testing.T, o *options) {
				if o.conntrack.maxPerCore != 131072 || o.oomScoreAdj != -998 || o.logging.Verbosity != 2 || len(o.clusterCIDRs) != 1 {
					t.Errorf("parsed %+v", o)
				}
			}},
		// k3s's embedded kube-proxy (pkg/daemons/agent, with its
		// --v, --vmodule, --log_file and --alsologtostderr options).
		{"k3s", []string{"--cluster-cidr=10.42.0.0/16", "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-close-wait=0s",
			"--conntrack-tcp-timeout-established=0s", "--healthz-bind-address=127.0.0.1", "--hostname-override=k3s-node",
			"--kubeconfig=/var/lib/rancher/k3s/agent/kubeproxy.kubeconfig", "--proxy-mode=iptables", "--v=2", "--vmodule=proxier*=4", "--log_file=",
			"--alsologtostderr=false"},
			func(t *testing.T, o *options) {
				if o.conntrackTuning() != (conntrack.Tuning{Min: 131072}) || o.healthzAddr != "127.0.0.1:10256" || len(o.klogFlags) != 2 {
					t.Errorf("parsed %+v", o)
				}
			}},
		// Kubernetes' GCE scripts (cluster/gce/gci/configure-helper.sh),
		// as managed GCE clusters run it, in both modes.
		{"gce iptables", []string{"--master=https://kubernetes-master", "--kubeconfig=/var/lib/kube-proxy/kubeconfig", "--cluster-cidr=10.64.0.0/14",
			"--oom-score-adj=-998", "--v=2", "--feature-gates=AllAlpha=false", "--proxy-mode=iptables", "--iptables-sync-period=1m",
			"--iptables-min-sync-period=10s", "--detect-local-mode=NodeCIDR"},
			func(t *testing.T, o *options) {
				if o.syncPeriod != time.Minute || o.minSyncPeriod != 10*time.Second || o.detectLocalMode != "NodeCIDR" || len(o.inapplicable) != 0 {
					t.Errorf("parsed %+v", o)
				}
			}},
		{"gce nftables", []string{"--master=https://kubernetes-master", "--kubeconfig=/var/lib/kube-proxy/kubeconfig", "--cluster-cidr=10.64.0.0/14",
			"--oom-score-adj=-998", "--v=2", "--proxy-mode=nftables", "--conntrack-tcp-be-liberal"},
			func(t *testing.T, o *options) {
				if o.proxyMode != "nftables" || !o.conntrack.tcpBeLiberal || !o.nodePortPrimary {
					t.Errorf("parsed %+v", o)
				}
			}},
		// EKS's DaemonSet, and its Bottlerocket variant.
		{"eks", []string{"--v=2", "--config=" + config, "--hostname-override=ip-10-42-11-122.us-west-2.compute.internal"}, nil},
		{"eks bottlerocket", []string{"--v=2", "--config=" + config, "--conntrack-max-per-core=0", "--conntrack-min=0"}, func(t *testing.T, o *options) {
			// --config wins over the conntrack flags, as in kube-proxy.
			if o.conntrack.maxPerCore != 32768 || !slices.Equal(o.ignoredFlags, []string{"--conntrack-max-per-core", "--conntrack-min"}) {
				t.Errorf("parsed %+v", o)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, o)
			}
		})
	}
}
