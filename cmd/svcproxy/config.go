package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/kube-proxy/config/v1alpha1"
	netutils "k8s.io/utils/net"
	sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The --config file is kube-proxy's KubeProxyConfiguration
// (kubeproxy.config.k8s.io/v1alpha1, the only version kube-proxy reads), as
// kubeadm's kube-proxy DaemonSet passes it:
//
//	kube-proxy --config=/var/lib/kube-proxy/config.conf --hostname-override=$(NODE_NAME)
//
// As in kube-proxy (cmd/kube-proxy/app/options.go, Complete), the file
// replaces every setting it covers: a flag for one of them is ignored
// (svcproxy logs it; kube-proxy is silent), except --hostname-override,
// which wins over the file's hostnameOverride when non-empty, and the
// logging flags, which win over the file's logging section (--vmodule's
// patterns come before the file's).
// Flags the file has no field for (--master, --cleanup, --dry-run and
// svcproxy's own) keep working. Zero values in the file mean kube-proxy's
// defaults (its SetDefaults_KubeProxyConfiguration), so kubeadm's file,
// which spells out every field with zero values, gives the defaults.
//
// The file becomes flag values, which then go through the flags' own
// checks; their errors name the file's field. Fields that no Linux proxy
// of the chosen mode reads, or that svcproxy cannot apply, are accepted and
// logged as ignored.

// configSetting is one flag value a KubeProxyConfiguration file gives.
type configSetting struct {
	flag  string // the flag it stands for
	field string // the file's field, for messages
	value string
}

// configFlags are the flags a --config file replaces (kube-proxy's, with
// the file's field for each; a mode-dependent field is named for iptables).
var configFlags = map[string]string{
	"kubeconfig":                   "clientConnection.kubeconfig",
	"hostname-override":            "hostnameOverride",
	"proxy-mode":                   "mode",
	"cluster-cidr":                 "clusterCIDR",
	"masquerade-all":               "iptables.masqueradeAll",
	"iptables-masquerade-bit":      "iptables.masqueradeBit",
	"iptables-min-sync-period":     "iptables.minSyncPeriod",
	"iptables-sync-period":         "iptables.syncPeriod",
	"iptables-localhost-nodeports": "iptables.localhostNodePorts",
	"config-sync-period":           "configSyncPeriod",
	"metrics-bind-address":         "metricsBindAddress",
	"healthz-bind-address":         "healthzBindAddress",
	"bind-address":                 "bindAddress",
	"nodeport-addresses":           "nodePortAddresses",
	"detect-local-mode":            "detectLocalMode",
	"pod-bridge-interface":         "detectLocal.bridgeInterface",
	"pod-interface-name-prefix":    "detectLocal.interfaceNamePrefix",
	"kube-api-content-type":        "clientConnection.contentType",
	"kube-api-qps":                 "clientConnection.qps",
	"kube-api-burst":               "clientConnection.burst",
	"profiling":                    "enableProfiling",
	"oom-score-adj":                "oomScoreAdj",
	"feature-gates":                "featureGates",

	"conntrack-max-per-core":            "conntrack.maxPerCore",
	"conntrack-min":                     "conntrack.min",
	"conntrack-tcp-timeout-established": "conntrack.tcpEstablishedTimeout",
	"conntrack-tcp-timeout-close-wait":  "conntrack.tcpCloseWaitTimeout",
	"conntrack-tcp-be-liberal":          "conntrack.tcpBeLiberal",
	"conntrack-udp-timeout":             "conntrack.udpTimeout",
	"conntrack-udp-timeout-stream":      "conntrack.udpStreamTimeout",
}

// kube-proxy's defaults for what a KubeProxyConfiguration leaves zero
// (pkg/proxy/apis/config/v1alpha1/defaults.go, pkg/cluster/ports,
// pkg/kubelet/qos); the conntrack ones are conntrack.DefaultTuning.
const (
	defaultMasqueradeBit    = 14
	defaultSyncPeriod       = 30 * time.Second
	defaultMinSyncPeriod    = time.Second
	defaultConfigSyncPeriod = 15 * time.Minute
	defaultOOMScoreAdj      = -999
	healthzPort             = 10256
	metricsPort             = 10249
	clientContentType       = "application/vnd.kubernetes.protobuf"
	clientQPS               = 5
	clientBurst             = 10
)

// clientAccept is what svcproxy's API client accepts unless
// clientConnection.acceptContentTypes says otherwise.
const clientAccept = "application/vnd.kubernetes.protobuf,application/json"

// applyConfigFile reads the KubeProxyConfiguration --config names and sets
// the flags it covers in fs (set: the flags given on the command line;
// raw: where fs keeps some of them), recording in o.fromFile the file's
// field for each flag it set.
func applyConfigFile(o *options, fs *pflag.FlagSet, set map[string]bool, raw *rawFlags) error {
	path := o.configFile
	prefix := "--config " + path + ": "
	data, err := os.ReadFile(path)
	if err != nil {
		return errors.New("--config: " + oneLine(err))
	}
	cfg, lenient, err := decodeConfig(data)
	if err != nil {
		return errors.New(prefix + oneLine(err))
	}
	o.lenientFields = lenient
	settings, ignored, err := configSettings(cfg)
	if err != nil {
		return errors.New(prefix + oneLine(err))
	}
	for name := range configFlags {
		if set[name] && name != "hostname-override" {
			o.ignoredFlags = append(o.ignoredFlags, "--"+name)
		}
	}
	slices.Sort(o.ignoredFlags)
	// The file replaces, rather than adds to, the lists the command line gave.
	raw.npa, o.featureGates = nil, nil
	for _, s := range settings {
		switch {
		case s.flag == "hostname-override" && o.hostnameOverride != "":
			continue // kube-proxy's processHostnameOverrideFlag: the flag wins
		case s.flag != "vmodule" && set[s.flag] && isLoggingFlag(s.flag):
			continue // kube-proxy's copyLogsFromFlags: logging flags win
		}
		if err := fs.Set(s.flag, s.value); err != nil {
			return fmt.Errorf("%s%s: %s", prefix, s.field, oneLine(err))
		}
		o.fromFile[s.flag] = s.field
	}
	if a := cfg.ClientConnection.AcceptContentTypes; a != "" {
		o.kubeAPI.accept = a
	}
	o.ignoredFields = ignored
	return nil
}

// decodeConfig decodes a KubeProxyConfiguration as kube-proxy's codec does:
// strictly first, and when only unknown or duplicate fields fail that,
// leniently (unknown fields dropped, the last of duplicates kept), with
// what strict decoding found returned in lenient for the log. A file
// written for a newer kube-proxy thus keeps working, as with kube-proxy.
func decodeConfig(data []byte) (cfg *v1alpha1.KubeProxyConfiguration, lenient []string, err error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		// Duplicate keys, or not YAML at all.
		if j, err = yaml.YAMLToJSON(data); err != nil {
			return nil, nil, fmt.Errorf("not valid YAML: %w", err)
		}
		_, serr := yaml.YAMLToJSONStrict(data)
		lenient = append(lenient, oneLine(serr))
	}
	cfg = &v1alpha1.KubeProxyConfiguration{}
	strict, err := sjson.UnmarshalStrict(j, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot decode: %w", err)
	}
	if want := v1alpha1.SchemeGroupVersion.String(); cfg.APIVersion != want || cfg.Kind != "KubeProxyConfiguration" {
		return nil, nil, fmt.Errorf("apiVersion %q, kind %q: want apiVersion %s, kind KubeProxyConfiguration", cfg.APIVersion, cfg.Kind, want)
	}
	for _, e := range strict {
		lenient = append(lenient, e.Error())
	}
	return cfg, lenient, nil
}

// configSettings maps a KubeProxyConfiguration onto flag values, with
// kube-proxy's defaults for zero values. ignored lists the fields that are
// set but that svcproxy (like kube-proxy in that mode, or on Linux) does not
// use; an error names a field set to what svcproxy cannot honour.
func configSettings(cfg *v1alpha1.KubeProxyConfiguration) (settings []configSetting, ignored []string, err error) {
	add := func(flag, field, value string) {
		settings = append(settings, configSetting{flag, field, value})
	}
	dur := func(d, def time.Duration) string {
		if d == 0 {
			d = def
		}
		return d.String()
	}

	// mode picks the section the masquerade and sync settings come from
	// (kube-proxy's conversion to its internal config).
	mode := string(cfg.Mode)
	add("proxy-mode", "mode", mode)
	sec, other := "iptables", "nftables"
	masqAll, bit, minSync, sync := cfg.IPTables.MasqueradeAll, cfg.IPTables.MasqueradeBit, cfg.IPTables.MinSyncPeriod, cfg.IPTables.SyncPeriod
	otherFields := setFields("nftables.", cfg.NFTables)
	if mode == "nftables" {
		sec, other = "nftables", "iptables"
		masqAll, bit, minSync, sync = cfg.NFTables.MasqueradeAll, cfg.NFTables.MasqueradeBit, cfg.NFTables.MinSyncPeriod, cfg.NFTables.SyncPeriod
		otherFields = setFields("iptables.", cfg.IPTables)
		// kube-proxy validates iptables.masqueradeBit in every mode.
		if b := cfg.IPTables.MasqueradeBit; b != nil && (*b < 0 || *b > 31) {
			return nil, nil, fmt.Errorf("iptables.masqueradeBit: %d is not in 0..31", *b)
		}
	}
	for _, f := range otherFields {
		ignored = append(ignored, f+" ("+other+" mode only)")
	}
	add("masquerade-all", sec+".masqueradeAll", strconv.FormatBool(masqAll))
	add("iptables-masquerade-bit", sec+".masqueradeBit", strconv.Itoa(int(ptrOr(bit, defaultMasqueradeBit))))
	add("iptables-min-sync-period", sec+".minSyncPeriod", dur(minSync.Duration, defaultMinSyncPeriod))
	add("iptables-sync-period", sec+".syncPeriod", dur(sync.Duration, defaultSyncPeriod))
	lnp := cfg.IPTables.LocalhostNodePorts == nil || *cfg.IPTables.LocalhostNodePorts
	add("iptables-localhost-nodeports", "iptables.localhostNodePorts", strconv.FormatBool(lnp))

	cc := cfg.ClientConnection
	add("kubeconfig", "clientConnection.kubeconfig", cc.Kubeconfig)
	add("kube-api-content-type", "clientConnection.contentType", orDefault(cc.ContentType, clientContentType))
	add("kube-api-qps", "clientConnection.qps", strconv.FormatFloat(float64(orDefault(cc.QPS, clientQPS)), 'g', -1, 32))
	add("kube-api-burst", "clientConnection.burst", strconv.Itoa(int(orDefault(cc.Burst, clientBurst))))
	add("hostname-override", "hostnameOverride", cfg.HostnameOverride)

	// bindAddress's family picks the defaults of the two server addresses;
	// a bare IP gets the default port (kube-proxy's AppendPortIfNeeded).
	bind := cfg.BindAddress
	if bind == "" {
		bind = "0.0.0.0"
	}
	add("bind-address", "bindAddress", bind)
	healthzHost, metricsHost := "0.0.0.0", "127.0.0.1"
	if netutils.ParseIPSloppy(bind).To4() == nil {
		healthzHost, metricsHost = "::", "::1"
	}
	add("healthz-bind-address", "healthzBindAddress", hostPort(cfg.HealthzBindAddress, healthzHost, healthzPort))
	add("metrics-bind-address", "metricsBindAddress", hostPort(cfg.MetricsBindAddress, metricsHost, metricsPort))
	if cfg.BindAddressHardFail {
		ignored = append(ignored, "bindAddressHardFail ("+inapplicableFlags["bind-address-hard-fail"]+")")
	}
	add("profiling", "enableProfiling", strconv.FormatBool(cfg.EnableProfiling))
	add("oom-score-adj", "oomScoreAdj", strconv.Itoa(int(ptrOr(cfg.OOMScoreAdj, defaultOOMScoreAdj))))
	conntrackSettings(cfg.Conntrack, add)

	add("cluster-cidr", "clusterCIDR", cfg.ClusterCIDR)
	add("nodeport-addresses", "nodePortAddresses", strings.Join(cfg.NodePortAddresses, ","))
	add("detect-local-mode", "detectLocalMode", string(cfg.DetectLocalMode))
	add("pod-bridge-interface", "detectLocal.bridgeInterface", cfg.DetectLocal.BridgeInterface)
	add("pod-interface-name-prefix", "detectLocal.interfaceNamePrefix", cfg.DetectLocal.InterfaceNamePrefix)
	add("config-sync-period", "configSyncPeriod", dur(cfg.ConfigSyncPeriod.Duration, defaultConfigSyncPeriod))

	loggingSettings(cfg.Logging, add)
	var gates []string
	for _, name := range slices.Sorted(maps.Keys(cfg.FeatureGates)) {
		if knownGate(name) {
			gates = append(gates, name+"="+strconv.FormatBool(cfg.FeatureGates[name]))
		} else {
			ignored = append(ignored, "featureGates ("+name+": no such svcproxy gate)")
		}
	}
	add("feature-gates", "featureGates", strings.Join(gates, ","))
	for _, f := range setFields("ipvs.", cfg.IPVS) {
		ignored = append(ignored, f+" (ipvs mode only)")
	}
	for _, f := range setFields("winkernel.", cfg.Winkernel) {
		ignored = append(ignored, f+" (Windows only)")
	}
	if cfg.WindowsRunAsService {
		ignored = append(ignored, "windowsRunAsService (Windows only)")
	}
	if cfg.PortRange != "" {
		ignored = append(ignored, "portRange (unused, as in kube-proxy)")
	}
	if cfg.ShowHiddenMetricsForVersion != "" {
		ignored = append(ignored, "showHiddenMetricsForVersion (svcproxy hides no metrics)")
	}
	return settings, ignored, nil
}

// setFields are the JSON names, after prefix, of the fields of struct v that
// are set (not zero; empty lists count as unset).
func setFields(prefix string, v any) []string {
	rv := reflect.ValueOf(v)
	var out []string
	for i := range rv.NumField() {
		f := rv.Field(i)
		zero := f.IsZero()
		if k := f.Kind(); k == reflect.Slice || k == reflect.Map {
			zero = f.Len() == 0
		}
		if !zero {
			out = append(out, prefix+strings.Split(rv.Type().Field(i).Tag.Get("json"), ",")[0])
		}
	}
	return out
}

// hostPort is a KubeProxyConfiguration server address: host:port with the
// default host and port when empty, a bare IP with the default port.
func hostPort(addr, defHost string, port int32) string {
	if addr == "" {
		addr = defHost
	}
	return appendPort(addr, port) // what is neither, the flags' check reports
}

// oneLine is err's message on one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
