package main

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/svcproxy/svcproxy/proxier/conntrack"
)

// TestWriteConfig: --write-config-to writes what kube-proxy v1.36.3 writes
// for the same flags (testdata holds its output), and --config reads it
// back to the same settings.
func TestWriteConfig(t *testing.T) {
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"write-config-nftables.yaml", []string{"--proxy-mode", "nftables", "--conntrack-min", "5", "--iptables-sync-period", "10s", "--feature-gates", "AllAlpha=false", "--healthz-port=0"}},
		{"write-config-iptables.yaml", strings.Fields("--proxy-mode iptables --cluster-cidr 10.244.0.0/16,fd00::/56 --nodeport-addresses 10.0.0.0/8 " +
			"--nodeport-addresses 192.168.0.0/16 --masquerade-all --conntrack-tcp-be-liberal --conntrack-udp-timeout 30s --oom-score-adj -500 " +
			"--kube-api-qps 20.5 --kube-api-burst 40 --profiling --logging-format json -v 3 --bind-address 10.1.2.3 --metrics-bind-address 0.0.0.0:10249 " +
			"--detect-local-mode NodeCIDR --hostname-override Node1 --kubeconfig /k --iptables-localhost-nodeports=false --config-sync-period 1m " +
			"--iptables-min-sync-period 100ms")},
		{"write-config-ipv6.yaml", strings.Fields("--bind-address :: --proxy-mode nftables --nodeport-addresses fd00::/64 --metrics-bind-address [::]:10249 " +
			"--masquerade-all --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0s --vmodule proxier*=4 --log-flush-frequency 2s " +
			"--kube-api-content-type application/json")},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out.yaml")
			o, err := parseFlags(append([]string{"--write-config-to", path}, tc.args...))
			if err != nil {
				t.Fatal(err)
			}
			if err := writeConfigFile(o); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join("testdata", tc.golden))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("written configuration differs from kube-proxy's (-kube-proxy +svcproxy):\n%s", d)
			}

			back, err := parseFlags([]string{"--config", path})
			if err != nil {
				t.Fatal(err)
			}
			opts := []cmp.Option{cmp.AllowUnexported(options{}, apiClient{}, conntrackFlags{}), cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.EquateEmpty(),
				cmpopts.IgnoreFields(options{}, "logging")}
			if d := cmp.Diff(settingsOf(o), settingsOf(back), opts...); d != "" {
				t.Errorf("--config of the written file gives other settings (-flags +file):\n%s", d)
			}
			l, lb := o.logging, back.logging
			if l.Format != lb.Format || l.Verbosity != lb.Verbosity || l.FlushFrequency != lb.FlushFrequency || len(lb.VModule) != len(l.VModule) {
				t.Errorf("logging from the flags %+v, from the file %+v", l, lb)
			}
		})
	}
}

// settingsOf is o without what says where its values came from, and with
// the hostname as kube-proxy keeps it.
func settingsOf(o *options) options {
	s := *o
	s.hostnameOverride = strings.ToLower(s.hostnameOverride)
	s.configFile, s.writeConfigTo, s.fromFile, s.deprecated, s.inapplicable = "", "", nil, nil, nil
	s.ignoredFlags, s.ignoredFields, s.lenientFields, s.gates = nil, nil, nil, nil
	// The deprecated port flags do not reach the file, as in kube-proxy.
	s.healthzPort, s.metricsPort = healthzPort, metricsPort
	return s
}

// TestTuneNode: the options' conntrack tuning and OOM score reach a
// scratch /proc and /sys.
func TestTuneNode(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		conntrack.MaxPath:      "262144\n",
		conntrack.HashSizePath: "65536\n",
		"proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal": "0\n",
		"proc/sys/net/netfilter/nf_conntrack_udp_timeout":    "30\n",
		"sys/devices/system/cpu/online":                      "0-7\n",
		"proc/self/oom_score_adj":                            "0\n",
	}
	for p, v := range files {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o, err := parseFlags([]string{"--conntrack-max-per-core=65536", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=10s", "--oom-score-adj=-500"})
	if err != nil {
		t.Fatal(err)
	}
	tuneNode(o, root)
	for p, want := range map[string]string{
		conntrack.MaxPath:      "524288", // 8 CPUs × 65536
		conntrack.HashSizePath: "131072",
		"proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal": "1",
		"proc/sys/net/netfilter/nf_conntrack_udp_timeout":    "10",
		"proc/self/oom_score_adj":                            "-500",
	} {
		if b, _ := os.ReadFile(filepath.Join(root, p)); string(b) != want {
			t.Errorf("%s = %q, want %q", p, b, want)
		}
	}
	// The default timeouts' sysctls are missing here: warnings, no writes.
	for _, p := range []string{"nf_conntrack_tcp_timeout_established", "nf_conntrack_tcp_timeout_close_wait"} {
		if _, err := os.Stat(filepath.Join(root, "proc/sys/net/netfilter", p)); err == nil {
			t.Errorf("%s was created", p)
		}
	}
	// No oom_score_adj to write: a warning, no crash.
	setOOMScoreAdj(o, filepath.Join(root, "nonexistent"))
}

// TestProfiling: --profiling's handlers answer on the metrics mux.
func TestProfiling(t *testing.T) {
	mux := http.NewServeMux()
	addProfiling(mux)
	for _, tc := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/debug/pprof/", "", http.StatusOK},
		{"GET", "/debug/pprof", "", http.StatusMovedPermanently},
		{"GET", "/debug/pprof/goroutine?debug=1", "", http.StatusOK},
		{"GET", "/debug/flags/v", "", http.StatusNotAcceptable},
		{"PUT", "/debug/flags/v", "x", http.StatusBadRequest},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
		if rec.Code != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}
	}
}

// TestMainPrepare runs main for what ends before the proxy: --version and
// --write-config-to with JSON logging, each exiting 0.
func TestMainPrepare(t *testing.T) {
	if args := os.Getenv("SVCPROXY_TEST_ARGS"); args != "" {
		os.Args = append([]string{"svcproxy"}, strings.Split(args, "\n")...)
		main()
		return
	}
	path := filepath.Join(t.TempDir(), "out.yaml")
	for _, tc := range []struct {
		args           []string
		stdout, stderr string // substrings
	}{
		{[]string{"--version"}, "svcproxy ", ""},
		{[]string{"--version=raw"}, "k8s.io/kube-proxy: v0.36.3", ""},
		{[]string{"--write-config-to", path, "--logging-format=json", "--ipvs-scheduler=rr"}, "",
			`"msg":"kube-proxy flags accepted but without effect in svcproxy: --ipvs-scheduler (ipvs mode only)"`},
		{[]string{"--write-config-to", path, "--logging-format=json"}, "", `"msg":"Wrote configuration"`},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMainPrepare$")
		cmd.Env = append(os.Environ(), "SVCPROXY_TEST_ARGS="+strings.Join(tc.args, "\n"))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("svcproxy %q: %v; stderr:\n%s", tc.args, err, stderr.String())
			continue
		}
		if !strings.Contains(string(out), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) {
			t.Errorf("svcproxy %q: stdout %q lacks %q, or stderr %q lacks %q", tc.args, out, tc.stdout, stderr.String(), tc.stderr)
		}
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("--write-config-to wrote nothing: %v", err)
	}
}
