// Package syncer decides when a node's proxiers sync and with what. It
// watches Services, EndpointSlices, ServiceCIDRs and this node through
// informers (with kube-proxy's label selectors), tracks which Services
// changed, converts them into an immutable proxier.State per address
// family, and calls each Proxier's Sync from a bounded-frequency runner: at
// most once per MinSyncPeriod, again with backoff after a failure, and at
// least once per SyncPeriod. It also serves /healthz and /livez and exports
// kube-proxy's sync metrics.
package syncer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// kube-proxy's defaults for the Options periods.
const (
	DefaultMinSyncPeriod    = time.Second
	DefaultSyncPeriod       = 30 * time.Second
	DefaultConfigSyncPeriod = 15 * time.Minute
)

// Proxier is one address family's backend.
//
// Sync is always called from the same goroutine. The State and the Services
// it points to are never modified afterwards, and a Service that did not
// change keeps its pointer from one State to the next. When Sync returns an
// error, the syncer calls it again (with backoff) with the newest State; the
// proxier must not assume that the failed State was applied.
type Proxier interface {
	Family() proxier.IPFamily
	Sync(ctx context.Context, st *proxier.State) error
}

// Options configure a Syncer.
type Options struct {
	// NodeName is this node; endpoints on it are local. When empty, no
	// endpoint is local, the node's zone is unknown and the node is always
	// eligible for /healthz.
	NodeName string
	// MinSyncPeriod: at most one sync per this (kube-proxy default 1s).
	// Zero means no minimum, as kube-proxy's flag.
	MinSyncPeriod time.Duration
	// SyncPeriod: a sync happens at least this often even without changes,
	// retries back off up to it, and /healthz fails when an update has waited
	// twice as long. Zero means DefaultSyncPeriod.
	SyncPeriod time.Duration
	// ConfigSyncPeriod is the informer resync period (default 15m; 0 = none).
	ConfigSyncPeriod time.Duration
	// Registerer is where metrics are registered; nil registers none.
	Registerer prometheus.Registerer
	// Recorder, if set, gets a Warning Event for each skipped piece of bad
	// input.
	Recorder events.EventRecorder
	// Triggers are the backends' guards: each receive asks for a sync at
	// once, without waiting out MinSyncPeriod, to repair rules someone else
	// altered. What was altered travels into that sync through the backend.
	Triggers []Trigger
}

// Trigger is one family's guard channel (see Options.Triggers).
type Trigger struct {
	Family proxier.IPFamily
	C      <-chan struct{}
}

// Syncer feeds a node's proxiers. Create it with New and start it with Run.
type Syncer struct {
	opts     Options
	proxiers []Proxier
	families []*familyState // parallel to proxiers
	caches   *caches
	tracker  *changeTracker
	runner   *runner
	health   *health
	m        *metrics
	rep      *logReporter
	synced   []cache.InformerSynced // what the first sync waits for
	nodeSync cache.InformerSynced
	cidrSync cache.InformerSynced
	started  atomic.Bool

	// Owned by the runner goroutine.
	initialized bool
	triggers    map[proxier.IPFamily][]time.Time // not yet observed
}

// New creates a Syncer for the given proxiers, at most one per family. It
// sets up, but does not start, the informers.
func New(client kubernetes.Interface, opts Options, proxiers ...Proxier) (*Syncer, error) {
	if client == nil {
		return nil, errors.New("syncer: nil client")
	}
	if len(proxiers) == 0 {
		return nil, errors.New("syncer: no proxiers")
	}
	if opts.MinSyncPeriod < 0 || opts.SyncPeriod < 0 || opts.ConfigSyncPeriod < 0 {
		return nil, errors.New("syncer: negative period")
	}
	if opts.SyncPeriod == 0 {
		opts.SyncPeriod = DefaultSyncPeriod
	}
	s := &Syncer{
		opts:     opts,
		proxiers: proxiers,
		m:        newMetrics(),
		triggers: map[proxier.IPFamily][]time.Time{},
	}
	var fams []proxier.IPFamily
	for _, p := range proxiers {
		f := p.Family()
		if f != proxier.IPv4 && f != proxier.IPv6 {
			return nil, fmt.Errorf("syncer: proxier with invalid family %d", int(f))
		}
		for _, g := range fams {
			if g == f {
				return nil, fmt.Errorf("syncer: two %v proxiers", f)
			}
		}
		fams = append(fams, f)
		s.families = append(s.families, newFamilyState(f))
	}
	if err := s.m.register(opts.Registerer); err != nil {
		return nil, fmt.Errorf("syncer: registering metrics: %w", err)
	}
	s.rep = &logReporter{m: s.m, rec: opts.Recorder}
	s.tracker = newChangeTracker(s.m, time.Now())

	c, err := newCaches(client, opts.NodeName, opts.ConfigSyncPeriod)
	if err != nil {
		return nil, err
	}
	s.caches = c
	var nodeFn func() *v1.Node
	if c.nodes != nil {
		nodeFn = c.node
	}
	s.health = newHealth(2*opts.SyncPeriod, s.m, nodeFn, fams)

	retryMin := max(opts.MinSyncPeriod, time.Second)
	s.runner = newRunner(s.sync, opts.MinSyncPeriod, opts.SyncPeriod, retryMin, opts.SyncPeriod)

	svcReg, err := c.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.onService(obj) },
		UpdateFunc: func(old, cur any) { s.onServiceUpdate(old, cur) },
		DeleteFunc: func(obj any) { s.onService(obj) },
	})
	if err != nil {
		return nil, err
	}
	sliceReg, err := c.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.onSlice(obj, false) },
		UpdateFunc: func(old, cur any) { s.onSliceUpdate(old, cur) },
		DeleteFunc: func(obj any) { s.onSlice(obj, true) },
	})
	if err != nil {
		return nil, err
	}
	s.synced = []cache.InformerSynced{svcReg.HasSynced, sliceReg.HasSynced}
	cidrReg, err := c.cidrs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.queue() },
		UpdateFunc: func(old, cur any) {
			if !sameServiceCIDRs(old, cur) {
				s.queue()
			}
		},
		DeleteFunc: func(any) { s.queue() },
	})
	if err != nil {
		return nil, err
	}
	s.cidrSync = cidrReg.HasSynced
	if c.nodes != nil {
		nodeReg, err := c.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { s.onNode(nil, obj) },
			UpdateFunc: func(old, cur any) { s.onNode(old, cur) },
			DeleteFunc: func(obj any) { s.onNode(obj, nil) },
		})
		if err != nil {
			return nil, err
		}
		s.nodeSync = nodeReg.HasSynced
	}
	return s, nil
}

// Run starts the informers, waits for the Service and EndpointSlice caches
// (and, for a bounded time, the Node cache), syncs every proxier, and then
// keeps syncing as changes arrive until ctx is done. It returns nil when ctx
// ends it. Run may be called only once.
func (s *Syncer) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("syncer: Run called twice")
	}
	// Nothing is programmed yet: that is an update waiting.
	for _, fs := range s.families {
		s.health.queued(fs.family)
	}
	s.caches.start(ctx)
	defer s.caches.shutdown()

	klog.InfoS("Waiting for Service and EndpointSlice caches")
	if !waitSynced(ctx.Done(), s.synced...) {
		return nil
	}
	if s.nodeSync != nil {
		s.caches.waitForNode(ctx, s.nodeSync)
	}
	s.caches.waitForServiceCIDRs(ctx, s.cidrSync)
	klog.InfoS("Caches synced; starting sync loop", "node", s.opts.NodeName,
		"minSyncPeriod", s.opts.MinSyncPeriod, "syncPeriod", s.opts.SyncPeriod)
	for _, t := range s.opts.Triggers {
		go s.follow(ctx, t)
	}
	s.runner.Trigger()
	s.runner.Loop(ctx)
	return nil
}

// follow counts t's repairs and asks for a sync at once on each.
func (s *Syncer) follow(ctx context.Context, t Trigger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.m.rulesRepaired.WithLabelValues(t.Family.String()).Inc()
			s.resyncNow()
		}
	}
}

// HealthHandler serves /healthz and /livez with kube-proxy's JSON body
// (lastUpdated, currentTime, healthy, per-family status, and nodeEligible on
// /healthz): 200 when healthy, 503 when not. The proxy is unhealthy when an
// update has waited 2×SyncPeriod without a successful sync; /healthz also
// fails when this node is gone, being deleted, or tainted
// ToBeDeletedByClusterAutoscaler.
func (s *Syncer) HealthHandler() http.Handler {
	return s.health
}

// Healthy reports whether every family synced recently enough (no update
// has waited 2×SyncPeriod); health-check node ports report it as
// serviceProxyHealthy.
func (s *Syncer) Healthy() bool {
	return s.health.status().Healthy
}

// resyncNow asks for a sync at once, without waiting out MinSyncPeriod.
func (s *Syncer) resyncNow() {
	s.queue()
	s.runner.TriggerNow()
}

// queue records that a sync is needed and asks the runner for one.
func (s *Syncer) queue() {
	now := float64(time.Now().UnixNano()) / 1e9
	for _, fs := range s.families {
		s.m.lastQueued.WithLabelValues(fs.family.String()).Set(now)
		s.health.queued(fs.family)
	}
	s.runner.Trigger()
}

func serviceName(obj any) (types.NamespacedName, bool) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return types.NamespacedName{}, false
	}
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: ns, Name: name}, true
}

func (s *Syncer) onService(obj any) {
	if nn, ok := serviceName(obj); ok {
		s.tracker.serviceChanged(nn)
		s.queue()
	}
}

// sameVersion reports an informer resync: the same object again.
func sameVersion(old, cur any) bool {
	o, ok1 := old.(metav1.Object)
	c, ok2 := cur.(metav1.Object)
	return ok1 && ok2 && o.GetResourceVersion() != "" && o.GetResourceVersion() == c.GetResourceVersion()
}

func (s *Syncer) onServiceUpdate(old, cur any) {
	if !sameVersion(old, cur) {
		s.onService(cur)
	}
}

func asSlice(obj any) *discovery.EndpointSlice {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	es, _ := obj.(*discovery.EndpointSlice)
	return es
}

// onSlice records a change of an EndpointSlice's Service. FQDN slices are
// not proxied; slices without a Service name cannot be attributed.
func (s *Syncer) onSlice(obj any, deleted bool) {
	es := asSlice(obj)
	if es == nil {
		return
	}
	f := addressTypeFamily(es.AddressType)
	if f == 0 {
		return
	}
	if sliceServiceKey(es) == "" {
		s.rep.invalid(kindEndpointSlice, reasonMissingServiceName, es, "")
		return
	}
	nn := types.NamespacedName{Namespace: es.Namespace, Name: es.Labels[discovery.LabelServiceName]}
	var trigger time.Time
	if !deleted {
		if v := es.Annotations[v1.EndpointsLastChangeTriggerTime]; v != "" {
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
				trigger = t
			}
		}
	}
	s.tracker.endpointsChanged(nn, f, trigger)
	s.queue()
}

func (s *Syncer) onSliceUpdate(old, cur any) {
	if sameVersion(old, cur) {
		return
	}
	o, c := asSlice(old), asSlice(cur)
	if o != nil && c != nil && sliceServiceKey(o) != "" && sliceServiceKey(o) != sliceServiceKey(c) {
		// Relabelled to another Service: the old one lost endpoints.
		s.onSlice(o, true)
	}
	s.onSlice(cur, false)
}

func nodeZone(obj any) (string, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	n, ok := obj.(*v1.Node)
	if !ok {
		return "", false
	}
	return n.Labels[v1.LabelTopologyZone], true
}

// onNode asks for a sync when this node's zone changes; endpoints are
// chosen by zone, so the rules depend on it.
func (s *Syncer) onNode(old, cur any) {
	for _, obj := range []any{old, cur} {
		if obj == nil {
			continue
		}
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err != nil || key != s.opts.NodeName {
			return // the fake clientset ignores field selectors
		}
	}
	oldZone, _ := nodeZone(old)
	curZone, _ := nodeZone(cur)
	if oldZone != curZone {
		klog.InfoS("Node topology zone changed", "node", s.opts.NodeName, "old", oldZone, "new", curZone)
		s.queue()
	}
}

// fullReporter is a Proxier that tells whether its last sync rewrote
// everything (a periodic full sync, a repair), for the sync's log line.
type fullReporter interface {
	LastSyncFull() bool
}

// sync is the runner's function: one sync of every proxier.
func (s *Syncer) sync(ctx context.Context) error {
	taken := time.Now()
	pc := s.tracker.take()
	full := !s.initialized
	s.initialized = true
	s.rep.begin()
	zone := s.caches.nodeZone()

	var errs []error
	for i, p := range s.proxiers {
		fs := s.families[i]
		s.triggers[fs.family] = append(s.triggers[fs.family], pc.triggers[fs.family]...)
		if err := s.syncFamily(ctx, p, fs, pc, full, zone, taken); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *Syncer) syncFamily(ctx context.Context, p Proxier, fs *familyState, pc pendingChanges, full bool, zone string, taken time.Time) error {
	family := fs.family.String()
	start := time.Now()
	res := fs.update(s.caches, pc.services, full, s.opts.NodeName, zone, s.rep)
	res.state.ServiceCIDRs = s.caches.serviceCIDRs(fs.family)
	converted := time.Now()
	err := p.Sync(ctx, res.state)
	end := time.Now()
	took := end.Sub(start)
	s.m.syncDuration.WithLabelValues(family).Observe(took.Seconds())

	if fr, ok := p.(fullReporter); ok && err == nil {
		full = full || fr.LastSyncFull()
	}
	kv := []any{"ipFamily", family, "duration", took, "convert", converted.Sub(start), "servicePorts", len(res.state.Services),
		"endpoints", res.endpoints, "changedServices", res.changed, "fullRebuild", full}
	if err != nil {
		s.m.syncFailures.WithLabelValues(family).Inc()
		s.health.queued(fs.family)
		klog.ErrorS(err, "Sync failed", append(kv, "result", "failure")...)
		return fmt.Errorf("%v proxier: %w", fs.family, err)
	}
	klog.InfoS("Synced", append(kv, "result", "success")...)
	s.m.lastSync.WithLabelValues(family).Set(float64(end.UnixNano()) / 1e9)
	for _, t := range s.triggers[fs.family] {
		s.m.programmingLatency.WithLabelValues(family).Observe(end.Sub(t).Seconds())
	}
	delete(s.triggers, fs.family)
	s.health.updated(fs.family, taken)
	return nil
}

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

// Snapshot builds the State of each requested family once, for --dry-run: it
// starts informers, waits for their caches, converts everything and stops
// the informers again.
func Snapshot(ctx context.Context, client kubernetes.Interface, nodeName string, families ...proxier.IPFamily) (map[proxier.IPFamily]*proxier.State, error) {
	if client == nil {
		return nil, errors.New("syncer: nil client")
	}
	if len(families) == 0 {
		return nil, errors.New("syncer: no families")
	}
	c, err := newCaches(client, nodeName, 0)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		c.shutdown()
	}()
	c.start(ctx)
	if !waitSynced(ctx.Done(), c.services.HasSynced, c.slices.HasSynced) {
		return nil, fmt.Errorf("syncer: waiting for caches: %w", context.Cause(ctx))
	}
	if c.nodes != nil {
		c.waitForNode(ctx, c.nodes.HasSynced)
	}
	c.waitForServiceCIDRs(ctx, c.cidrs.HasSynced)
	zone := c.nodeZone()
	rep := &logReporter{}
	out := make(map[proxier.IPFamily]*proxier.State, len(families))
	for _, f := range families {
		if f != proxier.IPv4 && f != proxier.IPv6 {
			return nil, fmt.Errorf("syncer: invalid family %d", int(f))
		}
		out[f] = newFamilyState(f).update(c, nil, true, nodeName, zone, rep).state
		out[f].ServiceCIDRs = c.serviceCIDRs(f)
	}
	return out, nil
}
