package proxier

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Backend names a backend, for the metrics only it exports.
type Backend string

// Backends.
const (
	IPTablesBackend Backend = "iptables"
	NFTablesBackend Backend = "nftables"
)

// Metrics are the proxier-side metrics; the syncer owns the sync metrics.
// kube-proxy registers some metrics in one mode only; NewMetrics registers
// the same set, but every field is usable whatever the backend (a metric
// not registered is just not exported).
type Metrics struct {
	// Both backends.
	NoLocalEndpoints  *prometheus.GaugeVec     // traffic_policy, ip_family
	ConntrackDuration *prometheus.HistogramVec // ip_family
	ConntrackDeleted  *prometheus.CounterVec   // ip_family
	HealthCheckErrors *prometheus.CounterVec   // ip_family
	// SyncOperations: the operations each sync's transaction carried
	// (iptables: the rule and chain lines of the restore input; nftables:
	// the transaction's commands and element operations).
	SyncOperations *prometheus.HistogramVec // ip_family

	// iptables: failed restores (all, and those of partial syncs), and the
	// rules per table in the kernel and in the last restore input.
	RestoreFailures        *prometheus.CounterVec // ip_family
	PartialRestoreFailures *prometheus.CounterVec // ip_family
	IPTablesRules          *prometheus.GaugeVec   // table, ip_family
	IPTablesRulesLast      *prometheus.GaugeVec   // table, ip_family

	// nftables: failed syncs, and the table's elements and the last
	// transaction's operations (svcproxy's own: kube-proxy has none).
	NFTablesSyncFailures *prometheus.CounterVec // ip_family
	NFTablesElements     *prometheus.GaugeVec   // ip_family
	NFTablesOperations   *prometheus.GaugeVec   // ip_family

	// iptables: kube-proxy's nfacct packet counters, read at scrape time
	// (see NFAcctCollector). nftables: the syncs that could not delete
	// stale chains, sets or maps.
	NFAcct                  *NFAcctCollector
	NFTablesCleanupFailures *prometheus.CounterVec // ip_family
}

// SyncDurationBuckets are kube-proxy's buckets for its sync and conntrack
// reconciler durations: 1ms doubling up to about 16s.
func SyncDurationBuckets() []float64 { return prometheus.ExponentialBuckets(0.001, 2, 15) }

// SyncOperationsBuckets cover one operation up to a full sync of a large
// cluster: powers of 4 from 1 to about 1e6.
func SyncOperationsBuckets() []float64 { return prometheus.ExponentialBuckets(1, 4, 11) }

// KubeProxyHelp is help as kube-proxy exports it: its metrics are
// component-base ALPHA metrics, whose help carries the stability level.
// svcproxy's own (svcproxy_*) keep theirs as written.
func KubeProxyHelp(name, help string) string {
	if strings.HasPrefix(name, "kubeproxy_") {
		return "[ALPHA] " + help
	}
	return help
}

// NewMetrics creates the metrics and registers, on reg (if not nil), those
// kube-proxy exports in backend b's mode, and svcproxy's own.
func NewMetrics(reg prometheus.Registerer, b Backend) *Metrics {
	family := []string{"ip_family"}
	table := []string{"table", "ip_family"}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: KubeProxyHelp(name, help)}, family)
	}
	gauge := func(name, help string, labels []string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: KubeProxyHelp(name, help)}, labels)
	}
	histogram := func(name, help string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: KubeProxyHelp(name, help), Buckets: SyncDurationBuckets()}, family)
	}
	m := &Metrics{
		NoLocalEndpoints: gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
			"Number of services with a Local traffic policy and no endpoints", []string{"traffic_policy", "ip_family"}),
		ConntrackDuration: histogram("kubeproxy_conntrack_reconciler_sync_duration_seconds",
			"ReconcileConntrackFlowsLatency latency in seconds"),
		ConntrackDeleted: counter("kubeproxy_conntrack_reconciler_deleted_entries_total",
			"Cumulative conntrack flows deleted by conntrack reconciler"),
		HealthCheckErrors: counter("svcproxy_healthcheck_server_errors_total",
			"Health-check node ports that could not be opened."),
		SyncOperations: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "svcproxy_sync_operations",
			Help:    "Operations in each sync's transaction: iptables-restore rule and chain lines, or nftables commands and element operations.",
			Buckets: SyncOperationsBuckets()}, family),

		RestoreFailures: counter("kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
			"Cumulative proxy iptables restore failures"),
		PartialRestoreFailures: counter("kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
			"Cumulative proxy iptables partial restore failures"),
		IPTablesRules: gauge("kubeproxy_sync_proxy_rules_iptables_total",
			"Total number of iptables rules owned by kube-proxy", table),
		IPTablesRulesLast: gauge("kubeproxy_sync_proxy_rules_iptables_last",
			"Number of iptables rules written by kube-proxy in last sync", table),

		NFTablesSyncFailures: counter("kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
			"Cumulative proxy nftables sync failures"),
		NFTablesElements: gauge("svcproxy_nftables_elements",
			"Set and map elements in svcproxy's nftables table after the last sync.", family),
		NFTablesOperations: gauge("svcproxy_nftables_sync_operations_last",
			"Operations in the last sync's nftables transaction.", family),

		NFAcct: newNFAcctCollector(),
		NFTablesCleanupFailures: counter("kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
			"Cumulative proxy nftables cleanup failures"),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.NoLocalEndpoints, m.ConntrackDuration, m.ConntrackDeleted, m.HealthCheckErrors, m.SyncOperations)
	switch b {
	case IPTablesBackend:
		reg.MustRegister(m.RestoreFailures, m.PartialRestoreFailures, m.IPTablesRules, m.IPTablesRulesLast)
		reg.MustRegister(m.NFAcct)
	case NFTablesBackend:
		reg.MustRegister(m.NFTablesSyncFailures, m.NFTablesElements, m.NFTablesOperations)
		reg.MustRegister(m.NFTablesCleanupFailures)
	}
	return m
}

// Init makes family's failure counters exported at zero before the first
// failure, so that rate() and alerts on them work from the start.
func (m *Metrics) Init(family IPFamily) {
	f := family.String()
	for _, c := range []*prometheus.CounterVec{m.ConntrackDeleted, m.HealthCheckErrors, m.RestoreFailures, m.PartialRestoreFailures, m.NFTablesSyncFailures, m.NFTablesCleanupFailures} {
		c.WithLabelValues(f)
	}
}

// AfterSync sets the metrics kube-proxy sets from a successful sync's plan:
// the service ports whose Local traffic policy leaves them no endpoint.
func (m *Metrics) AfterSync(p *Plan) {
	internal, external := NoLocalEndpoints(p)
	f := p.Config.Family.String()
	m.NoLocalEndpoints.WithLabelValues("internal", f).Set(float64(internal))
	m.NoLocalEndpoints.WithLabelValues("external", f).Set(float64(external))
}

// NoLocalEndpoints counts, as kube-proxy does, the service ports whose
// traffic is dropped because a Local policy leaves no endpoint while some
// exist elsewhere: internal for internalTrafficPolicy, external for
// externalTrafficPolicy (externally accessible ports only).
func NoLocalEndpoints(p *Plan) (internal, external int) {
	for i := range p.Services {
		sp := &p.Services[i]
		if sp.InternalPolicy == PolicyLocal && sp.Internal == Drop {
			internal++
		}
		if sp.ExternalPolicy == PolicyLocal && sp.External == Drop && sp.HasExternal() {
			external++
		}
	}
	return internal, external
}

// kube-proxy's nfacct counters (iptables mode). Its rules count packets in
// nfacct objects (see proxier/iptables/nfacct.go); the metrics are the
// objects' packet counts, read when scraped. Where the kernel has no
// nfacct, kube-proxy exports none of them, and neither does svcproxy.

// nfacctMetrics are kube-proxy's nfacct objects and the metrics of each.
var nfacctMetrics = []struct{ object, name, help string }{
	{"ct_state_invalid_dropped_pkts", "kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
		"packets dropped by iptables to work around conntrack problems"},
	{"localhost_nps_accepted_pkts", "kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
		"Number of packets accepted on nodeports of loopback interface"},
}

// NFAcctMetricName is the metric of kube-proxy's nfacct object, "" for
// another object.
func NFAcctMetricName(object string) string {
	for _, m := range nfacctMetrics {
		if m.object == object {
			return m.name
		}
	}
	return ""
}

// NFAcctReadTimeout bounds the reading of one counter during a scrape.
const NFAcctReadTimeout = 2 * time.Second

// NFAcctCollector exports the nfacct objects it was told of (Use): one
// counter each, without labels, whose value is the object's packet count
// when scraped. An object that cannot be read is left out of that scrape.
type NFAcctCollector struct {
	descs map[string]*prometheus.Desc // by object

	mu      sync.Mutex
	read    func(ctx context.Context, object string) (packets uint64, err error)
	objects []string
}

func newNFAcctCollector() *NFAcctCollector {
	c := &NFAcctCollector{descs: map[string]*prometheus.Desc{}}
	for _, m := range nfacctMetrics {
		c.descs[m.object] = prometheus.NewDesc(m.name, KubeProxyHelp(m.name, m.help), nil, nil)
	}
	return c
}

// Use makes the collector export objects (kube-proxy's, others are
// ignored), reading them with read. A later call adds to the objects and
// replaces read.
func (c *NFAcctCollector) Use(read func(ctx context.Context, object string) (uint64, error), objects ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = read
	for _, o := range objects {
		if c.descs[o] != nil && !slices.Contains(c.objects, o) {
			c.objects = append(c.objects, o)
		}
	}
}

// Describe implements prometheus.Collector.
func (c *NFAcctCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range nfacctMetrics {
		ch <- c.descs[m.object]
	}
}

// Collect implements prometheus.Collector: it reads each object now.
func (c *NFAcctCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	read, objects := c.read, append([]string(nil), c.objects...)
	c.mu.Unlock()
	for _, o := range objects {
		ctx, cancel := context.WithTimeout(context.Background(), NFAcctReadTimeout)
		n, err := read(ctx, o)
		cancel()
		if err != nil {
			klog.ErrorS(err, "Failed to collect nfacct counter", "counter", o)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[o], prometheus.CounterValue, float64(n))
	}
}

// ObserveSyncOperations observes the n operations of one sync's
// transaction in family; a sync that wrote nothing (n == 0) ran no
// transaction and is not observed.
func (m *Metrics) ObserveSyncOperations(family IPFamily, n int) {
	if n > 0 {
		m.SyncOperations.WithLabelValues(family.String()).Observe(float64(n))
	}
}
