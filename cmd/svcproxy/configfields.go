package main

import (
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/proxier/conntrack"
)

// The KubeProxyConfiguration sections beyond the proxy rules: conntrack
// tuning and logging, as flag values (see configSettings).

// conntrackSettings maps the conntrack section onto --conntrack-*: an
// absent field is kube-proxy's default, an explicit 0 leaves the sysctl.
func conntrackSettings(c v1alpha1.KubeProxyConntrackConfiguration, add func(flag, field, value string)) {
	d := conntrack.DefaultTuning
	add("conntrack-max-per-core", "conntrack.maxPerCore", strconv.Itoa(int(ptrOr(c.MaxPerCore, int32(d.MaxPerCore)))))
	add("conntrack-min", "conntrack.min", strconv.Itoa(int(ptrOr(c.Min, int32(d.Min)))))
	add("conntrack-tcp-timeout-established", "conntrack.tcpEstablishedTimeout", ptrOr(c.TCPEstablishedTimeout, metav1.Duration{Duration: d.TCPEstablishedTimeout}).Duration.String())
	add("conntrack-tcp-timeout-close-wait", "conntrack.tcpCloseWaitTimeout", ptrOr(c.TCPCloseWaitTimeout, metav1.Duration{Duration: d.TCPCloseWaitTimeout}).Duration.String())
	add("conntrack-tcp-be-liberal", "conntrack.tcpBeLiberal", strconv.FormatBool(c.TCPBeLiberal))
	add("conntrack-udp-timeout", "conntrack.udpTimeout", c.UDPTimeout.Duration.String())
	add("conntrack-udp-timeout-stream", "conntrack.udpStreamTimeout", c.UDPStreamTimeout.Duration.String())
}

// loggingSettings maps the logging section onto the logging flags; a zero
// field is the flag's default, so it is left out.
func loggingSettings(l logsapi.LoggingConfiguration, add func(flag, field, value string)) {
	if l.Format != "" {
		add("logging-format", "logging.format", l.Format)
	}
	if l.Verbosity != 0 {
		add("v", "logging.verbosity", strconv.FormatUint(uint64(l.Verbosity), 10))
	}
	if len(l.VModule) > 0 {
		add("vmodule", "logging.vmodule", logsapi.VModuleConfigurationPflag(&l.VModule).String())
	}
	if d := l.FlushFrequency.Duration.Duration; d != 0 {
		add("log-flush-frequency", "logging.flushFrequency", d.String())
	}
	for _, o := range []struct {
		name string
		opt  logsapi.OutputRoutingOptions
	}{{"text", l.Options.Text.OutputRoutingOptions}, {"json", l.Options.JSON.OutputRoutingOptions}} {
		if o.opt.SplitStream {
			add("log-"+o.name+"-split-stream", "logging.options."+o.name+".splitStream", "true")
		}
		if !o.opt.InfoBufferSize.IsZero() {
			add("log-"+o.name+"-info-buffer-size", "logging.options."+o.name+".infoBufferSize", o.opt.InfoBufferSize.String())
		}
	}
}

// newGates is svcproxy's feature gate: the logging API's gates, the only
// ones of kube-proxy's that change what svcproxy does.
func newGates() featuregate.MutableVersionedFeatureGate {
	fg := featuregate.NewFeatureGate()
	if err := logsapi.AddFeatureGates(fg); err != nil {
		panic(err) // only on a name registered twice
	}
	return fg
}

// knownGate reports whether svcproxy has the feature gate name.
func knownGate(name string) bool {
	_, ok := newGates().GetAll()[featuregate.Feature(name)]
	return ok
}

// ptrOr is *p, or def when p is nil.
func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// orDefault is v, or def when v is zero.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
