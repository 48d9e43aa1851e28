package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/conntrack"
	"github.com/svcproxy/svcproxy/proxier/iptables"
)

// What kube-proxy does around the proxy itself: --version, logging and the
// start-up warnings, --write-config-to, the node's conntrack sysctls and
// OOM score, --init-only, --profiling.

// prepare does what comes before the proxy. done means main exits then
// (with err): --version, --write-config-to and --init-only end there.
func prepare(ctx context.Context, o *options) (done bool, err error) {
	switch o.version {
	case "true", "raw":
		fmt.Print(versionText(o.version == "raw"))
		return true, nil
	}
	if err := applyLogging(o); err != nil {
		return true, fmt.Errorf("logging: %w", err)
	}
	logStartup(o)
	switch {
	case o.writeConfigTo != "":
		return true, writeConfigFile(o)
	case o.initOnly && !o.cleanup:
		return true, initOnly(ctx, o)
	}
	return false, nil
}

// logStartup logs the version and what the command line and --config
// file asked for that svcproxy does not do, once logging is set up.
func logStartup(o *options) {
	v := strings.TrimPrefix(strings.TrimSpace(versionText(false)), "svcproxy ")
	if strings.HasPrefix(o.version, "v") {
		v = o.version
	}
	klog.InfoS("Version info", "version", v)
	for _, d := range o.deprecated {
		klog.Warning(d)
	}
	if len(o.inapplicable) > 0 {
		klog.Warningf("kube-proxy flags accepted but without effect in svcproxy: %s", strings.Join(o.inapplicable, ", "))
	}
	if len(o.lenientFields) > 0 {
		klog.ErrorS(nil, "Using lenient decoding as strict decoding failed (as kube-proxy does): these fields are not used", "config", o.configFile, "errors", o.lenientFields)
	}
	if len(o.ignoredFlags) > 0 {
		klog.InfoS("Flags ignored: --config gives these settings", "config", o.configFile, "flags", o.ignoredFlags)
	}
	if len(o.ignoredFields) > 0 {
		klog.InfoS("KubeProxyConfiguration fields ignored by svcproxy", "config", o.configFile, "fields", o.ignoredFields)
	}
}

// conntrackTuning is the conntrack tuning the options ask for.
func (o *options) conntrackTuning() conntrack.Tuning {
	c := o.conntrack
	return conntrack.Tuning{
		MaxPerCore: int(c.maxPerCore), Min: int(c.min),
		TCPEstablishedTimeout: c.tcpEstablished, TCPCloseWaitTimeout: c.tcpCloseWait, TCPBeLiberal: c.tcpBeLiberal,
		UDPTimeout: c.udpTimeout, UDPStreamTimeout: c.udpStreamTimeout,
	}
}

// tuneNode sets the conntrack sysctls and the OOM score under root ("/"),
// as kube-proxy does at start; the sysctls come before the proxiers, which
// read tcp_be_liberal. What cannot be set is a warning.
func tuneNode(o *options, root string) {
	tuneConntrack(o, root)
	setOOMScoreAdj(o, root)
}

func tuneConntrack(o *options, root string) []conntrack.Result {
	t := o.conntrackTuning()
	if t.MaxPerCore == 0 {
		klog.InfoS("Leaving nf_conntrack_max as it is", "because", o.ref("conntrack-max-per-core")+" is 0")
	}
	return conntrack.Apply(root, conntrack.Sysctls(t, conntrack.NumCPU(root)))
}

// setOOMScoreAdj writes --oom-score-adj to the process's oom_score_adj
// (lowering it needs CAP_SYS_RESOURCE); a failure is a warning.
func setOOMScoreAdj(o *options, root string) {
	path := filepath.Join(root, "proc/self/oom_score_adj")
	want := strconv.Itoa(int(o.oomScoreAdj))
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == want {
		return
	}
	if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
		klog.Warningf("Cannot set the OOM score adjustment to %s (%s): %v", want, o.ref("oom-score-adj"), err)
		return
	}
	klog.V(2).InfoS("Set the OOM score adjustment", "value", want)
}

// initOnly is --init-only: the setup that needs full privilege, as
// kube-proxy's: the conntrack sysctls and, in iptables mode when IPv4
// NodePorts answer on 127.0.0.1, route_localnet (which iptables.NewKernel
// sets). It reads no Node object: "primary" NodePort addresses never hold
// loopback.
func initOnly(ctx context.Context, o *options) error {
	tuneConntrack(o, "/")
	if o.proxyMode == "iptables" && !o.nodePortPrimary {
		cfgs, err := proxyConfigs(o, host{Local: localAddrs(), Families: []proxier.IPFamily{proxier.IPv4}})
		if err != nil {
			return err
		}
		if iptables.LocalhostNodePorts(cfgs[0].Config) {
			if _, err := iptables.NewKernel(ctx, cfgs[0].Config); err != nil {
				return err
			}
		}
	}
	klog.InfoS("Node set up; exiting (--init-only)")
	return nil
}

// addProfiling serves, as kube-proxy's --profiling, Go's profiles under
// /debug/pprof/ and /debug/flags/v, where a PUT of a number sets the log
// verbosity.
func addProfiling(mux *http.ServeMux) {
	mux.Handle("/debug/pprof", http.RedirectHandler("/debug/pprof/", http.StatusMovedPermanently))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/flags/v", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if r.Method != http.MethodPut {
			w.WriteHeader(http.StatusNotAcceptable)
			fmt.Fprintln(w, "unsupported http method")
			return
		}
		body, err := io.ReadAll(r.Body)
		msg := ""
		if err == nil {
			msg, err = logs.GlogSetter(strings.TrimSpace(string(body)))
		}
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			msg = err.Error()
		}
		fmt.Fprintln(w, msg)
	})
}
