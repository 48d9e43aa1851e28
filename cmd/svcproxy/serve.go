package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/svcproxy/svcproxy/proxier/healthcheck"

	// client-go's request metrics (rest_client_*), on the legacy registry
	// as in kube-proxy.
	_ "k8s.io/component-base/metrics/prometheus/restclient"
)

// This file holds what svcproxy serves over HTTP besides the health-check
// node ports, as kube-proxy serves it, and kube-proxy's Events.

// newRegistry returns the registry svcproxy's metrics go on, and what
// /metrics serves: it and component-base's legacy registry, which holds,
// as in kube-proxy, the Go and process collectors, client-go's request
// metrics and the feature gates.
func newRegistry() (*prometheus.Registry, prometheus.Gatherer) {
	reg := prometheus.NewRegistry()
	return reg, prometheus.Gatherers{reg, legacyregistry.DefaultGatherer}
}

// metricsMux is what the metrics address serves. As kube-proxy's: /metrics,
// /healthz (that the server answers), /proxyMode, /configz (the effective
// configuration), /flagz, and with --profiling /debug/pprof/ and
// /debug/flags/v. kube-proxy has no /livez there; svcproxy serves the
// proxy's, as on the healthz address, and its own /debug/state (each
// family's last synced State and plan, from debug).
func metricsMux(o *options, g prometheus.Gatherer, livez, debug http.Handler, flags map[string]string) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", pingHealthz)
	mux.HandleFunc("/healthz/ping", pingHealthz)
	mux.Handle("/livez", livez)
	mux.HandleFunc("/proxyMode", func(w http.ResponseWriter, r *http.Request) {
		writeBody(w, "text/plain; charset=utf-8", []byte(o.proxyMode))
	})
	configz, err := json.Marshal(map[string]*v1alpha1.KubeProxyConfiguration{"kubeproxy.config.k8s.io": kubeProxyConfiguration(o)})
	mux.HandleFunc("/configz", func(w http.ResponseWriter, r *http.Request) {
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeBody(w, "application/json", configz)
	})
	mux.Handle("/flagz", newFlagz("svcproxy", flags))
	mux.Handle("/debug/state", debug)
	if o.profiling {
		addProfiling(mux)
	}
	return mux
}

// pingHealthz is the generic /healthz of Kubernetes components, with only
// its ping check: "ok", or with ?verbose the checks listed.
func pingHealthz(w http.ResponseWriter, r *http.Request) {
	body := "ok"
	if _, verbose := r.URL.Query()["verbose"]; verbose && r.URL.Path == "/healthz" {
		body = "[+]ping ok\nhealthz check passed\n"
	}
	writeBody(w, "text/plain; charset=utf-8", []byte(body))
}

func writeBody(w http.ResponseWriter, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(body)
}

// retryListen is how long serve waits before listening again (a variable
// for tests).
var retryListen = 5 * time.Second

// serve runs an HTTP server on addr until ctx ends. As kube-proxy's, it
// tries again every retryListen while it cannot listen (the port may still
// be held, by a kube-proxy being replaced for one); the first failure is
// logged and passed to failed (if not nil).
func serve(ctx context.Context, what, addr string, h http.Handler, failed func(error)) {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	retry := retryListen
	go func() {
		for reported := false; ; reported = true {
			err := srv.ListenAndServe()
			if errors.Is(err, http.ErrServerClosed) || ctx.Err() != nil {
				return
			}
			if !reported {
				klog.ErrorS(err, "HTTP server failed; retrying", "server", what, "address", addr, "every", retry)
				if failed != nil {
					failed(err)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(retry):
			}
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
}

// eventRecorder records kube-proxy's Events, on this Node (referred to as
// kube-proxy refers to it) and on Services.
type eventRecorder struct {
	events.EventRecorder
	node string
}

// newEventRecorder starts sending Events to the API server until ctx ends;
// stop flushes what is queued.
func newEventRecorder(ctx context.Context, client kubernetes.Interface, node string) (rec *eventRecorder, stop func()) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	return &eventRecorder{EventRecorder: b.NewRecorder(scheme.Scheme, "svcproxy"), node: node}, b.Shutdown
}

// onNode records an Event about this Node, with kube-proxy's action.
func (r *eventRecorder) onNode(eventType, reason, note string) {
	ref := &v1.ObjectReference{Kind: "Node", Name: r.node, UID: types.UID(r.node)}
	r.Eventf(ref, nil, eventType, reason, "StartKubeProxy", "%s", note)
}

// nodeWarning returns a function recording a Warning Event with reason on
// this Node, for serve's failed.
func (r *eventRecorder) nodeWarning(reason string) func(error) {
	return func(err error) { r.onNode(v1.EventTypeWarning, reason, err.Error()) }
}

// healthCheckFailed records, as kube-proxy, a Warning Event on the Service
// whose health-check node port could not be opened.
func (r *eventRecorder) healthCheckFailed(le *healthcheck.ListenError) {
	ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: le.Service.Namespace, Name: le.Service.Name}
	nsn := types.NamespacedName{Namespace: le.Service.Namespace, Name: le.Service.Name}
	r.Eventf(ref, nil, v1.EventTypeWarning, "FailedToStartServiceHealthcheck", "Listen",
		"node %s failed to start healthcheck %q on port %d: %v", r.node, nsn.String(), le.Port, le.Err)
}

// flagz serves /flagz in kube-proxy's formats: by default a text page for
// people, one flag a line sorted by name, its separator drawn once per
// process from kube-proxy's set (so that nothing comes to parse it); for
// Accept application/json;as=Flagz;g=config.k8s.io;v=v1beta1 (or v1alpha1,
// deprecated) the Flagz object.
type flagz struct {
	component string
	flags     map[string]string
	text      []byte
}

func newFlagz(component string, flags map[string]string) *flagz {
	seps := []string{":", ": ", "=", " "}
	sep := seps[rand.IntN(len(seps))]
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s flagz\nWarning: This endpoint is not meant to be machine parseable, has no formatting compatibility guarantees and is for debugging purposes only.\n", component)
	for _, name := range slices.Sorted(maps.Keys(flags)) {
		fmt.Fprintf(&b, "%s%s%s\n", name, sep, flags[name])
	}
	return &flagz{component: component, flags: flags, text: []byte(b.String())}
}

func (z *flagz) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	version, ok := flagzVersion(r.Header.Get("Accept"))
	switch {
	case !ok:
		http.Error(w, "only text/plain and application/json;as=Flagz;g=config.k8s.io;v=v1beta1 (or v1alpha1) are served", http.StatusNotAcceptable)
	case version == "":
		writeBody(w, "text/plain; charset=utf-8", z.text)
	default:
		if version == "v1alpha1" {
			w.Header().Set("Warning", `299 - "This version of the flagz endpoint is deprecated. Please use a newer version."`)
		}
		body, _ := json.Marshal(flagzObject{Kind: "Flagz", APIVersion: "config.k8s.io/" + version,
			Metadata: flagzMeta{Name: z.component}, Flags: z.flags})
		writeBody(w, "application/json", body)
	}
}

// flagzObject is config.k8s.io's Flagz as JSON.
type flagzObject struct {
	Kind       string            `json:"kind"`
	APIVersion string            `json:"apiVersion"`
	Metadata   flagzMeta         `json:"metadata"`
	Flags      map[string]string `json:"flags,omitempty"`
}

type flagzMeta struct {
	Name string `json:"name"`
}

// flagzVersion picks, from an Accept header, the first media type /flagz
// serves: "" for text, or the Flagz version asked for. ok is false when it
// serves none of them.
func flagzVersion(accept string) (version string, ok bool) {
	if strings.TrimSpace(accept) == "" {
		return "", true
	}
	for _, clause := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(clause)
		if err != nil {
			continue
		}
		switch mt {
		case "text/plain", "text/*", "*/*":
			if params["as"] == "" {
				return "", true
			}
		case "application/json":
			if v := params["v"]; params["as"] == "Flagz" && params["g"] == "config.k8s.io" && (v == "v1beta1" || v == "v1alpha1") {
				return v, true
			}
		}
	}
	return "", false
}

// flagValues are svcproxy's flags by name, with their values given args
// (as parseFlags read them: before --config), for /flagz. klog's own flags
// are read into stand-ins, as parsing them again would set klog's state.
func flagValues(args []string) map[string]string {
	fs, _ := newFlagSet(&options{})
	fs.VisitAll(func(f *pflag.Flag) {
		if isKlogFlag(f.Name) {
			f.Value = &textValue{s: f.Value.String(), typ: f.Value.Type()}
		}
	})
	// parseFlags has accepted args already.
	_ = fs.Parse(args)
	out := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) { out[f.Name] = f.Value.String() })
	return out
}

// textValue is a flag value kept as text.
type textValue struct{ s, typ string }

func (v *textValue) String() string     { return v.s }
func (v *textValue) Set(s string) error { v.s = s; return nil }
func (v *textValue) Type() string       { return v.typ }
