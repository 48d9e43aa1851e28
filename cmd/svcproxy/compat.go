package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
)

// kube-proxy's flags that cannot apply to svcproxy: accepted with
// kube-proxy's types and defaults, so its arguments parse, and named in one
// warning at start when given.
var inapplicableFlags = map[string]string{
	"bind-address-hard-fail":          "svcproxy logs a server that cannot bind and keeps running",
	"boot-id-file":                    "kube-proxy's machine-info library reads it; svcproxy does not",
	"machine-id-file":                 "kube-proxy's machine-info library reads it; svcproxy does not",
	"ipvs-exclude-cidrs":              "ipvs mode only",
	"ipvs-min-sync-period":            "ipvs mode only",
	"ipvs-scheduler":                  "ipvs mode only",
	"ipvs-strict-arp":                 "ipvs mode only",
	"ipvs-sync-period":                "ipvs mode only",
	"ipvs-tcp-timeout":                "ipvs mode only",
	"ipvs-tcpfin-timeout":             "ipvs mode only",
	"ipvs-udp-timeout":                "ipvs mode only",
	"show-hidden-metrics-for-version": "svcproxy hides no metrics",
}

// addInapplicable defines inapplicableFlags on fs; their values are dropped.
func addInapplicable(fs *pflag.FlagSet) {
	help := func(name, what string) string { return what + " Ignored: " + inapplicableFlags[name] + "." }
	fs.Bool("bind-address-hard-fail", false, help("bind-address-hard-fail", "kube-proxy: exit when a server cannot bind."))
	fs.String("boot-id-file", "/proc/sys/kernel/random/boot_id", help("boot-id-file", "kube-proxy: files to read the boot ID from."))
	fs.String("machine-id-file", "/etc/machine-id,/var/lib/dbus/machine-id", help("machine-id-file", "kube-proxy: files to read the machine ID from."))
	fs.StringSlice("ipvs-exclude-cidrs", nil, help("ipvs-exclude-cidrs", "kube-proxy: CIDRs whose IPVS rules cleanup leaves."))
	fs.Duration("ipvs-min-sync-period", defaultMinSyncPeriod, help("ipvs-min-sync-period", "kube-proxy: minimum interval between IPVS syncs."))
	fs.String("ipvs-scheduler", "", help("ipvs-scheduler", "kube-proxy: the IPVS scheduler."))
	fs.Bool("ipvs-strict-arp", false, help("ipvs-strict-arp", "kube-proxy: set arp_ignore and arp_announce for IPVS."))
	fs.Duration("ipvs-sync-period", defaultSyncPeriod, help("ipvs-sync-period", "kube-proxy: interval of periodic IPVS syncs."))
	fs.Duration("ipvs-tcp-timeout", 0, help("ipvs-tcp-timeout", "kube-proxy: IPVS idle TCP timeout."))
	fs.Duration("ipvs-tcpfin-timeout", 0, help("ipvs-tcpfin-timeout", "kube-proxy: IPVS TCP timeout after a FIN."))
	fs.Duration("ipvs-udp-timeout", 0, help("ipvs-udp-timeout", "kube-proxy: IPVS UDP timeout."))
	fs.String("show-hidden-metrics-for-version", "", help("show-hidden-metrics-for-version", "kube-proxy: show the metrics a release hid."))
}

// deprecatedFlags are the notices of kube-proxy's deprecated flags, logged
// when one is given.
var deprecatedFlags = map[string]string{
	"healthz-port": "--healthz-port is deprecated (as in kube-proxy): use --healthz-bind-address",
	"metrics-port": "--metrics-port is deprecated (as in kube-proxy): use --metrics-bind-address",
}

// inapplicableGiven lists, for the warning, the flags of set (the flags
// given on the command line) that cannot apply, and the feature gates
// given that svcproxy does not know.
func inapplicableGiven(set map[string]bool, unknownGates []string) []string {
	var out []string
	for name := range set {
		if inapplicableFlags[name] != "" {
			out = append(out, "--"+name+" ("+inapplicableFlags[name]+")")
		}
	}
	slices.Sort(out)
	if len(unknownGates) > 0 {
		out = append(out, "--feature-gates "+strings.Join(unknownGates, ",")+" (no such svcproxy gate)")
	}
	return out
}

// newGatesValue is --feature-gates: key=bool pairs, comma-separated or in
// repeated flags, as kube-proxy parses them.
func newGatesValue(m *map[string]bool) pflag.Value { return cliflag.NewMapStringBool(m) }

// versionValue is --version: true, false, raw, or a version (vX.Y.Z...)
// to report, as kube-proxy's; without a value it is true.
type versionValue struct{ v *string }

func (x versionValue) String() string {
	if *x.v == "" {
		return "false"
	}
	return *x.v
}

func (x versionValue) Set(s string) error {
	if _, err := strconv.ParseBool(s); err != nil && s != "raw" && !strings.HasPrefix(s, "v") {
		return fmt.Errorf("%q is neither true, false, raw nor a version vX.Y.Z", s)
	}
	if b, err := strconv.ParseBool(s); err == nil {
		s = strconv.FormatBool(b)
	}
	*x.v = s
	return nil
}

func (versionValue) Type() string { return "version" }

// buildVersion is svcproxy's version; the build may set it with
// -ldflags "-X main.buildVersion=v1.2.3", else the module's is used.
var buildVersion = ""

// versionText is what --version prints: "svcproxy VERSION", and for
// --version=raw the build's details too.
func versionText(raw bool) string {
	v := buildVersion
	info, ok := debug.ReadBuildInfo()
	if v == "" && ok {
		v = info.Main.Version
	}
	if v == "" {
		v = "(unknown)"
	}
	if !raw {
		return "svcproxy " + v + "\n"
	}
	s := fmt.Sprintf("svcproxy %s\ngo: %s %s/%s\n", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if ok {
		for _, d := range info.Deps {
			if d.Path == "k8s.io/kube-proxy" || d.Path == "k8s.io/client-go" {
				s += d.Path + ": " + d.Version + "\n"
			}
		}
		for _, kv := range info.Settings {
			if strings.HasPrefix(kv.Key, "vcs.") {
				s += kv.Key + ": " + kv.Value + "\n"
			}
		}
	}
	return s
}
