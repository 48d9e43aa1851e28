package syncer

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// toBeDeletedTaint marks a node the cluster autoscaler is draining; such a
// node reports unhealthy on /healthz so load balancers stop sending to it.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// health tracks, per family, when rules were last programmed and since when
// an update has been waiting. A family is unhealthy once an update has
// waited timeout or longer.
type health struct {
	now     func() time.Time
	timeout time.Duration
	m       *metrics
	// node returns this node, or nil when unknown; nil func means the
	// syncer has no node name and the node is always eligible.
	node func() *v1.Node

	mu          sync.Mutex
	families    []proxier.IPFamily
	lastUpdated map[proxier.IPFamily]time.Time
	oldest      map[proxier.IPFamily]time.Time // oldest pending update
	latest      map[proxier.IPFamily]time.Time // latest pending update
}

func newHealth(timeout time.Duration, m *metrics, node func() *v1.Node, families []proxier.IPFamily) *health {
	return &health{
		now:         time.Now,
		timeout:     timeout,
		m:           m,
		node:        node,
		families:    families,
		lastUpdated: map[proxier.IPFamily]time.Time{},
		oldest:      map[proxier.IPFamily]time.Time{},
		latest:      map[proxier.IPFamily]time.Time{},
	}
}

// queued records that family f has an update waiting.
func (h *health) queued(f proxier.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if _, ok := h.oldest[f]; !ok {
		h.oldest[f] = now
	}
	h.latest[f] = now
}

// updated records a successful sync of family f that started at start.
// Updates queued after start are not covered by it and stay pending; the
// oldest of them was queued no earlier than start, so start is what their
// wait is measured from (never later than the truth: /livez must not report
// a long wait as a short one).
func (h *health) updated(f proxier.IPFamily, start time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated[f] = h.now()
	if l, ok := h.latest[f]; ok && l.After(start) {
		h.oldest[f] = start
		return
	}
	delete(h.oldest, f)
	delete(h.latest, f)
}

// familyHealth is one family's entry in the JSON status.
type familyHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

// healthStatus is the JSON body of /healthz and /livez, shaped like
// kube-proxy's.
type healthStatus struct {
	LastUpdated  time.Time               `json:"lastUpdated"`
	CurrentTime  time.Time               `json:"currentTime"`
	NodeEligible *bool                   `json:"nodeEligible,omitempty"`
	Healthy      bool                    `json:"healthy"`
	Status       map[string]familyHealth `json:"status,omitempty"`
}

func (h *health) status() healthStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	st := healthStatus{CurrentTime: now, Healthy: true, Status: map[string]familyHealth{}}
	for _, f := range h.families {
		fh := familyHealth{LastUpdated: h.lastUpdated[f], Healthy: true}
		if t, ok := h.oldest[f]; ok && now.Sub(t) >= h.timeout {
			fh.Healthy = false
			st.Healthy = false
		}
		if fh.LastUpdated.After(st.LastUpdated) {
			st.LastUpdated = fh.LastUpdated
		}
		st.Status[f.String()] = fh
	}
	return st
}

func (h *health) nodeEligible() bool {
	if h.node == nil {
		return true
	}
	n := h.node()
	if n == nil || n.DeletionTimestamp != nil {
		return false
	}
	for _, t := range n.Spec.Taints {
		if t.Key == toBeDeletedTaint {
			return false
		}
	}
	return true
}

// ServeHTTP serves /healthz (also requires the node to be eligible) and
// /livez.
func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var healthz bool
	switch r.URL.Path {
	case "/healthz":
		healthz = true
	case "/livez":
	default:
		http.NotFound(w, r)
		return
	}
	st := h.status()
	ok := st.Healthy
	if healthz {
		eligible := h.nodeEligible()
		st.NodeEligible = &eligible
		ok = ok && eligible
	}
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	} else {
		// As kube-proxy: a healthy proxy reports itself current.
		st.LastUpdated = st.CurrentTime
	}
	counter := h.m.livez
	if healthz {
		counter = h.m.healthz
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()

	body, _ := json.Marshal(st)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
