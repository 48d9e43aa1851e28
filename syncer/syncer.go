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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
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
	// Node, when set, is this node's IPs and pod CIDRs as the proxiers were
	// configured with (GetNodeInfo). Run then ends with a *NodeChangedError,
	// as kube-proxy's NodeManager exits, when the Node's IPs change or the
	// Node is deleted. Needs NodeName.
	Node *NodeInfo
	// WatchPodCIDRs makes a change of the Node's pod CIDRs end Run too
	// (they matter with --detect-local-mode=NodeCIDR). Needs Node.
	WatchPodCIDRs bool
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
	// nodeWatch, when set, ends Run on a change of this node that the
	// proxiers cannot follow (see Options.Node).
	nodeWatch *nodeWatch

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
	if opts.Node != nil && opts.NodeName == "" {
		return nil, errors.New("syncer: Options.Node without NodeName")
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

	if opts.Node != nil {
		s.nodeWatch = &nodeWatch{name: opts.NodeName, podCIDRs: opts.WatchPodCIDRs, cur: *opts.Node}
	}
	if err := s.handle(c); err != nil {
		return nil, err
	}
	return s, nil
}

// Run starts the informers, waits for the Service and EndpointSlice caches
// (and, for a bounded time, the Node cache), syncs every proxier, and then
// keeps syncing as changes arrive until ctx is done. It returns nil when ctx
// ends it, and a *NodeChangedError when this node changed in a way the
// proxiers cannot follow (see Options.Node). Run may be called only once.
func (s *Syncer) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("syncer: Run called twice")
	}
	ctx, end := context.WithCancelCause(ctx)
	defer end(nil)
	if s.nodeWatch != nil {
		s.nodeWatch.end = end
	}
	// Nothing is programmed yet: that is an update waiting.
	for _, fs := range s.families {
		s.health.queued(fs.family)
	}
	s.caches.start(ctx)
	defer s.caches.shutdown()

	klog.InfoS("Waiting for Service and EndpointSlice caches")
	if !waitSynced(ctx.Done(), s.synced...) {
		return nodeChanged(ctx)
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
	return nodeChanged(ctx)
}

// nodeChanged is the *NodeChangedError that ended ctx, or nil.
func nodeChanged(ctx context.Context) error {
	var nc *NodeChangedError
	if err := context.Cause(ctx); errors.As(err, &nc) {
		return nc
	}
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

// fullReporter is a Proxier that tells whether its last sync rewrote
// everything (a periodic full sync, a repair), for the sync's log line and
// the full and partial sync durations. Without it, only the first sync is
// a full one.
type fullReporter interface {
	LastSyncFull() bool
}

// operationsReporter is a Proxier that tells how many operations its last
// successful sync's transaction carried (0: it wrote nothing), for the
// sync's log line.
type operationsReporter interface {
	LastSyncOperations() int
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
	// What a failed sync tried is unknown: it counts in the total only.
	if err == nil {
		h := s.m.syncPartialDuration
		if full {
			h = s.m.syncFullDuration
		}
		h.WithLabelValues(family).Observe(took.Seconds())
	}
	kv := []any{"ipFamily", family, "duration", took, "convert", converted.Sub(start), "servicePorts", len(res.state.Services),
		"endpoints", res.endpoints, "changedServices", res.changed, "changedServiceNames", res.changedNames,
		"changedEndpoints", res.changedEndpoints, "fullRebuild", full}
	if or, ok := p.(operationsReporter); ok && err == nil {
		kv = append(kv, "operations", or.LastSyncOperations())
	}
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
