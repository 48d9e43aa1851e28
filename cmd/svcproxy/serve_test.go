package main

import (
	"context"
	"encoding/json"
	"errors"
	goflag "flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier/healthcheck"
)

// TestMetricsMux: what the metrics address serves besides /metrics, as
// kube-proxy serves it.
func TestMetricsMux(t *testing.T) {
	o, err := parseFlags([]string{"--proxy-mode=nftables", "--hostname-override=node-a", "--iptables-sync-period=45s"})
	if err != nil {
		t.Fatal(err)
	}
	livez := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "livez "+r.URL.Path) })
	mux := metricsMux(o, nil, livez, &debugState{}, map[string]string{"proxy-mode": "nftables"})
	for _, tc := range []struct {
		path, accept string
		code         int
		contentType  string
		body         string // the whole body, or with a leading "~" a part of it
	}{
		{path: "/proxyMode", code: 200, contentType: "text/plain; charset=utf-8", body: "nftables"},
		{path: "/healthz", code: 200, contentType: "text/plain; charset=utf-8", body: "ok"},
		{path: "/healthz?verbose", code: 200, contentType: "text/plain; charset=utf-8", body: "[+]ping ok\nhealthz check passed\n"},
		{path: "/healthz/ping", code: 200, contentType: "text/plain; charset=utf-8", body: "ok"},
		{path: "/livez", code: 200, body: "livez /livez"},
		{path: "/configz", code: 200, contentType: "application/json", body: `~{"kubeproxy.config.k8s.io":{"kind":"KubeProxyConfiguration","apiVersion":"kubeproxy.config.k8s.io/v1alpha1",`},
		{path: "/flagz", code: 200, contentType: "text/plain; charset=utf-8", body: "~\nsvcproxy flagz\nWarning: This endpoint is not meant to be machine parseable"},
		{path: "/flagz", accept: "*/*", code: 200, contentType: "text/plain; charset=utf-8", body: "~proxy-mode"},
		{path: "/flagz", accept: "application/json;as=Flagz;v=v1beta1;g=config.k8s.io", code: 200, contentType: "application/json",
			body: `{"kind":"Flagz","apiVersion":"config.k8s.io/v1beta1","metadata":{"name":"svcproxy"},"flags":{"proxy-mode":"nftables"}}`},
		{path: "/flagz", accept: "application/xml", code: http.StatusNotAcceptable},
		{path: "/debug/state", code: 200, contentType: "application/json", body: "{\"families\":[]}\n"},
		{path: "/debug/pprof/", code: 404}, // without --profiling
		{path: "/", code: 404},
	} {
		req := httptest.NewRequest(http.MethodGet, tc.path, nil)
		if tc.accept != "" {
			req.Header.Set("Accept", tc.accept)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		what := tc.path + " " + tc.accept
		if rec.Code != tc.code {
			t.Errorf("%s: status %d, want %d", what, rec.Code, tc.code)
			continue
		}
		if ct := rec.Header().Get("Content-Type"); tc.contentType != "" && ct != tc.contentType {
			t.Errorf("%s: Content-Type %q, want %q", what, ct, tc.contentType)
		}
		got := rec.Body.String()
		if part, ok := strings.CutPrefix(tc.body, "~"); ok && !strings.Contains(got, part) || !ok && tc.body != "" && got != tc.body {
			t.Errorf("%s: body\n%s\nwant %q", what, got, tc.body)
		}
	}

	// /configz is the effective configuration, as --write-config-to writes it.
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/configz", nil))
	var cz map[string]map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &cz); err != nil {
		t.Fatal(err)
	}
	c := cz["kubeproxy.config.k8s.io"]
	if c["mode"] != "nftables" || c["hostnameOverride"] != "node-a" || c["nftables"].(map[string]any)["syncPeriod"] != "45s" {
		t.Errorf("/configz = %v", c)
	}
}

// TestFlagzText: one flag a line, sorted, with one separator of
// kube-proxy's.
func TestFlagzText(t *testing.T) {
	z := newFlagz("svcproxy", map[string]string{"b": "2", "a": "1"})
	text := string(z.text)
	head := "\nsvcproxy flagz\nWarning: This endpoint is not meant to be machine parseable, has no formatting compatibility guarantees and is for debugging purposes only.\n"
	lines, ok := strings.CutPrefix(text, head)
	if !ok {
		t.Fatalf("flagz text:\n%s", text)
	}
	found := false
	for _, sep := range []string{":", ": ", "=", " "} {
		found = found || lines == "a"+sep+"1\nb"+sep+"2\n"
	}
	if !found {
		t.Errorf("flagz lines %q", lines)
	}
}

func TestFlagzVersion(t *testing.T) {
	for _, tc := range []struct {
		accept, version string
		ok              bool
	}{
		{"", "", true},
		{"*/*", "", true},
		{"text/plain", "", true},
		{"text/html,text/*;q=0.8", "", true},
		{"application/json;as=Flagz;v=v1beta1;g=config.k8s.io", "v1beta1", true},
		{"application/json;as=Flagz;v=v1alpha1;g=config.k8s.io, text/plain", "v1alpha1", true},
		{"application/json", "", false},
		{"application/json;as=Flagz;v=v2;g=config.k8s.io", "", false},
		{"text/plain;as=Flagz", "", false},
		{"application/yaml", "", false},
	} {
		if v, ok := flagzVersion(tc.accept); v != tc.version || ok != tc.ok {
			t.Errorf("flagzVersion(%q) = %q %v, want %q %v", tc.accept, v, ok, tc.version, tc.ok)
		}
	}
}

// TestFlagValues: every flag with the value args give it (string lists
// appended), and klog's own state left as it was.
func TestFlagValues(t *testing.T) {
	klogFlag := func() string {
		kfs := goflag.NewFlagSet("klog", goflag.ContinueOnError)
		klog.InitFlags(kfs)
		return kfs.Lookup("log_file").Value.String()
	}
	before := klogFlag()
	got := flagValues([]string{"--proxy-mode", "nftables", "--nodeport-addresses=10.0.0.0/8", "--nodeport-addresses=192.168.0.0/16",
		"--log-file=/nonexistent/svcproxy.log", "--v=3"})
	for name, want := range map[string]string{
		"proxy-mode":           "nftables",
		"nodeport-addresses":   "[10.0.0.0/8,192.168.0.0/16]",
		"log-file":             "/nonexistent/svcproxy.log",
		"v":                    "3",
		"iptables-sync-period": "30s",
		"metrics-bind-address": "127.0.0.1:10249",
	} {
		if got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}
	fs, _ := newFlagSet(&options{})
	n := 0
	fs.VisitAll(func(*pflag.Flag) { n++ })
	if len(got) != n {
		t.Errorf("%d flags, want every one of the %d", len(got), n)
	}
	if after := klogFlag(); after != before {
		t.Errorf("klog's log_file changed from %q to %q", before, after)
	}
}

// TestEvents: kube-proxy's Events, on the Service and on the Node.
func TestEvents(t *testing.T) {
	c := &capture{}
	rec := &eventRecorder{EventRecorder: c, node: "node-a"}
	rec.healthCheckFailed(&healthcheck.ListenError{Service: healthcheck.Service{Namespace: "ns", Name: "lb"}, Port: 31000, Err: errors.New("address already in use")})
	rec.nodeWarning("FailedToStartMetricServer")(errors.New("listen tcp 127.0.0.1:10249: bind: address already in use"))
	rec.onNode(v1.EventTypeNormal, "Starting", "")
	node := &v1.ObjectReference{Kind: "Node", Name: "node-a", UID: "node-a"}
	want := []event{
		{&v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: "ns", Name: "lb"}, v1.EventTypeWarning, "FailedToStartServiceHealthcheck", "Listen",
			`node node-a failed to start healthcheck "ns/lb" on port 31000: address already in use`},
		{node, v1.EventTypeWarning, "FailedToStartMetricServer", "StartKubeProxy", "listen tcp 127.0.0.1:10249: bind: address already in use"},
		{node, v1.EventTypeNormal, "Starting", "StartKubeProxy", ""},
	}
	if len(c.events) != len(want) {
		t.Fatalf("events %+v, want %+v", c.events, want)
	}
	for i, e := range c.events {
		if *e.regarding != *want[i].regarding || e.typ != want[i].typ || e.reason != want[i].reason || e.action != want[i].action || e.note != want[i].note {
			t.Errorf("event %d: %+v %+v, want %+v %+v", i, *e.regarding, e, *want[i].regarding, want[i])
		}
	}
}

// TestServeRetries: a server whose port is taken reports it once, and
// serves once the port is free.
func TestServeRetries(t *testing.T) {
	defer func(d time.Duration) { retryListen = d }(retryListen)
	retryListen = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failed := make(chan error, 10)
	serve(ctx, "test", addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up") }),
		func(err error) { failed <- err })
	select {
	case err := <-failed:
		if !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("failed with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the taken port was not reported")
	}
	ln.Close()
	deadline := time.Now().Add(3 * retryListen)
	for {
		resp, err := http.Get("http://" + addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "up" {
				t.Errorf("body %q", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving after the port was freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(failed) != 0 {
		t.Errorf("%d more failure reports, want none", len(failed))
	}
	cancel()
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := http.Get("http://" + addr + "/"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still serving after ctx ended")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
