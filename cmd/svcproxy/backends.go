package main

import (
	"context"
	"errors"
	"os/exec"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/conntrack"
	"github.com/svcproxy/svcproxy/proxier/healthcheck"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	"github.com/svcproxy/svcproxy/syncer"
)

// This file adapts the two backends to one shape for main: building them,
// their after-sync steps and metrics, --dry-run output, IPv6 probing and
// cleanup.

// backend is one family's proxier, iptables or nftables.
type backend interface {
	syncer.Proxier
	OnSynced(func(*proxier.Plan) error)
	Watch(ctx context.Context, interval time.Duration) <-chan struct{}
	LastSyncFull() bool
}

// newBackends builds one proxier of mode per family configuration, each
// setting its mode's metrics after each sync. The nftables proxiers share
// this namespace's notifications: a bulk write of one family mutes both
// families' watchers.
func newBackends(ctx context.Context, mode string, cfgs []familyConfig, metrics *proxier.Metrics) ([]backend, error) {
	var out []backend
	var nft []*nftables.Proxier
	for _, fc := range cfgs {
		if mode == "nftables" {
			p, err := nftables.NewKernel(fc.Config)
			if err != nil {
				return nil, err
			}
			klog.InfoS("Using nftables", "family", fc.Family, "table", nftables.TableName,
				"nodePortAddresses", fc.NodePortAddresses, "localDetector", fc.LocalDetector.Mode)
			nft = append(nft, p)
			out = append(out, measureNFTables(p, metrics))
			continue
		}
		p, err := iptables.NewKernel(ctx, fc.Config)
		if err != nil {
			return nil, err
		}
		out = append(out, measureIPTables(p, metrics))
	}
	nftables.Share(nft...)
	return out, nil
}

// measured is a backend whose Sync also sets metrics: done gets each
// Sync's error.
type measured struct {
	backend
	done func(err error)
}

func (m measured) Sync(ctx context.Context, st *proxier.State) error {
	err := m.backend.Sync(ctx, st)
	m.done(err)
	return err
}

// measureIPTables sets kube-proxy's iptables metrics after each of p's
// syncs: the restore failures, and the rules per table owned and written.
func measureIPTables(p *iptables.Proxier, m *proxier.Metrics) backend {
	family := p.Family().String()
	m.Init(p.Family())
	var failures, partial int // as last counted
	return measured{p, func(err error) {
		r := p.LastResult()
		m.RestoreFailures.WithLabelValues(family).Add(float64(r.RestoreFailures - failures))
		m.PartialRestoreFailures.WithLabelValues(family).Add(float64(r.PartialRestoreFailures - partial))
		failures, partial = r.RestoreFailures, r.PartialRestoreFailures
		if err != nil {
			return
		}
		for table, n := range r.Rules {
			m.IPTablesRules.WithLabelValues(table, family).Set(float64(n))
			m.IPTablesRulesLast.WithLabelValues(table, family).Set(float64(r.RulesWritten[table]))
		}
	}}
}

// measureNFTables sets the nftables metrics after each of p's syncs: the
// failures, and the table's elements and the transaction's operations.
func measureNFTables(p *nftables.Proxier, m *proxier.Metrics) backend {
	family := p.Family().String()
	m.Init(p.Family())
	return measured{p, func(err error) {
		if err != nil {
			m.NFTablesSyncFailures.WithLabelValues(family).Inc()
			return
		}
		r := p.LastResult()
		m.NFTablesElements.WithLabelValues(family).Set(float64(r.Elements))
		m.NFTablesOperations.WithLabelValues(family).Set(float64(r.Operations))
	}}
}

// afterSync hangs the after-sync steps on p: the metrics of the plan,
// conntrack cleanup by ct, and the health-check node-port servers it
// returns (to be told when the proxy is healthy, and closed), whose ports
// that cannot be opened are counted and recorded as Events by rec.
func afterSync(p backend, fc familyConfig, metrics *proxier.Metrics, rec *eventRecorder, ct cleaner) *healthcheck.Servers {
	family := fc.Family.String()
	p.OnSynced(func(plan *proxier.Plan) error {
		metrics.AfterSync(plan)
		return nil
	})
	p.OnSynced(timedClean(ct, metrics.ConntrackDuration.WithLabelValues(family)))
	hc := healthcheck.NewServers(fc.Family, fc.HealthCheckAddrs, nil)
	p.OnSynced(func(plan *proxier.Plan) error {
		err := hc.Sync(healthcheck.FromPlan(plan))
		for _, le := range healthcheck.ListenErrors(err) {
			metrics.HealthCheckErrors.WithLabelValues(family).Inc()
			rec.healthCheckFailed(le)
		}
		return err
	})
	return hc
}

// cleaner is conntrack's Cleaner as afterSync uses it.
type cleaner interface {
	Needed(*proxier.Plan) bool
	Clean(*proxier.Plan) error
}

// newCleaner returns family f's conntrack cleaner, counting what it deletes.
func newCleaner(f proxier.IPFamily, m *proxier.Metrics) *conntrack.Cleaner {
	deleted := m.ConntrackDeleted.WithLabelValues(f.String())
	return conntrack.NewCleaner(f, func(n int) { deleted.Add(float64(n)) })
}

// timedClean runs c after a sync when it has work, observing how long each
// run takes: a run is one reconciliation (kube-proxy's reconciler runs on
// every sync; c only when a UDP Service changed).
func timedClean(c cleaner, took prometheus.Observer) func(*proxier.Plan) error {
	return func(p *proxier.Plan) error {
		if !c.Needed(p) {
			return nil
		}
		start := time.Now()
		err := c.Clean(p)
		took.Observe(time.Since(start).Seconds())
		return err
	}
}

// usableFamilies is IPv4, plus IPv6 when the node's kernel and tools have
// it. --dry-run probes nothing (the iptables probe can create tables): the
// configuration says whether the cluster is dual-stack.
func usableFamilies(ctx context.Context, o *options) []proxier.IPFamily {
	families := []proxier.IPFamily{proxier.IPv4}
	if o.dryRun {
		if dualStackConfig(o) {
			families = append(families, proxier.IPv6)
		}
		return families
	}
	usable := iptables.IPv6Usable
	if o.proxyMode == "nftables" {
		usable = nftables.IPv6Usable
	}
	if err := usable(ctx); err != nil {
		klog.InfoS("IPv6 is not usable on this node; proxying IPv4 only", "err", err)
		return families
	}
	return append(families, proxier.IPv6)
}

// cleanup removes svcproxy's (and kube-proxy's) rules in both families and
// both modes.
func cleanup(ctx context.Context) error {
	return cleanupRules(ctx, nftables.Cleanup, nftables.CleanupKubeProxy)
}

// cleanupKubeProxy removes kube-proxy's iptables chains and nftables tables.
func cleanupKubeProxy(ctx context.Context) error {
	return cleanupRules(ctx, nftables.CleanupKubeProxy)
}

// cleanupRules removes the KUBE-* iptables chains in both families, then
// runs the nftables cleanups when nft is installed.
func cleanupRules(ctx context.Context, nft ...func(context.Context) error) error {
	errs := []error{iptables.CleanupAll(ctx)}
	if _, err := exec.LookPath("nft"); err == nil {
		for _, f := range nft {
			errs = append(errs, f(ctx))
		}
	}
	return errors.Join(errs...)
}
