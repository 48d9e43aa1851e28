package syncer

import (
	"sync"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
)

// logReporter logs each skipped piece of bad input and counts it in
// svcproxy_invalid_objects_total. Within one sync each report is made once,
// though every family converts the same Service.
type logReporter struct {
	m   *metrics             // nil: no metric
	rec events.EventRecorder // nil: no Event

	mu   sync.Mutex
	seen map[string]struct{}
}

func (r *logReporter) begin() {
	r.mu.Lock()
	r.seen = nil
	r.mu.Unlock()
}

func (r *logReporter) invalid(kind, reason string, obj metav1.Object, value string) {
	key := kind + "\x00" + obj.GetNamespace() + "\x00" + obj.GetName() + "\x00" + obj.GetResourceVersion() + "\x00" + reason + "\x00" + value
	r.mu.Lock()
	if _, dup := r.seen[key]; dup {
		r.mu.Unlock()
		return
	}
	if r.seen == nil {
		r.seen = map[string]struct{}{}
	}
	r.seen[key] = struct{}{}
	r.mu.Unlock()

	klog.ErrorS(nil, "Skipping invalid input", "kind", kind, "object", klog.KObj(obj), "reason", reason, "value", value)
	if ro, ok := obj.(runtime.Object); ok && r.rec != nil {
		r.rec.Eventf(ro, nil, v1.EventTypeWarning, reason, "Proxying", "svcproxy skipped invalid %s %q", kind, value)
	}
	if r.m != nil {
		r.m.invalidObjects.WithLabelValues(kind, reason).Inc()
	}
}
