package proxier

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the proxier-side metrics; the syncer owns the sync metrics.
type Metrics struct {
	ConntrackDeleted  *prometheus.CounterVec
	HealthCheckErrors *prometheus.CounterVec
	Rules             *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them on reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ConntrackDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kubeproxy_conntrack_reconciler_deleted_entries_total",
			Help: "Stale UDP conntrack entries deleted after syncs.",
		}, []string{"ip_family"}),
		HealthCheckErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "svcproxy_healthcheck_server_errors_total",
			Help: "Health-check node ports that could not be opened.",
		}, []string{"ip_family"}),
		Rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kubeproxy_sync_proxy_rules_iptables_total",
			Help: "Rules svcproxy programs, per table, after the last sync.",
		}, []string{"table", "ip_family"}),
	}
	if reg != nil {
		reg.MustRegister(m.ConntrackDeleted, m.HealthCheckErrors, m.Rules)
	}
	return m
}
