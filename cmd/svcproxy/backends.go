package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	"github.com/svcproxy/svcproxy/syncer"
)

// This file adapts the two backends to one shape for main: building them,
// their after-sync metrics, --dry-run output, IPv6 probing and cleanup.

// backend is one family's proxier, iptables or nftables.
type backend interface {
	syncer.Proxier
	OnSynced(func(*proxier.Plan) error)
	Watch(ctx context.Context, interval time.Duration) <-chan struct{}
}

// newBackends builds one proxier of mode per family configuration. After
// each sync, each sets the Rules gauge of its family. The nftables proxiers
// share this namespace's notifications: a bulk write of one family mutes
// both families' watchers.
func newBackends(ctx context.Context, mode string, cfgs []familyConfig, metrics *proxier.Metrics) ([]backend, error) {
	var out []backend
	var nft []*nftables.Proxier
	for _, fc := range cfgs {
		family := fc.Family.String()
		if mode == "nftables" {
			p, err := nftables.NewKernel(fc.Config)
			if err != nil {
				return nil, err
			}
			klog.InfoS("Using nftables", "family", fc.Family, "table", nftables.TableName,
				"nodePortAddresses", fc.NodePortAddresses, "localDetector", fc.LocalDetector.Mode)
			p.OnSynced(func(*proxier.Plan) error {
				metrics.Rules.WithLabelValues("svcproxy", family).Set(float64(p.LastResult().Elements))
				return nil
			})
			nft = append(nft, p)
			out = append(out, p)
			continue
		}
		p, err := iptables.NewKernel(ctx, fc.Config)
		if err != nil {
			return nil, err
		}
		p.OnSynced(func(*proxier.Plan) error {
			for table, n := range p.LastResult().Rules {
				metrics.Rules.WithLabelValues(table, family).Set(float64(n))
			}
			return nil
		})
		out = append(out, p)
	}
	nftables.Share(nft...)
	return out, nil
}

// dryRun writes the rules each family's configuration gives for its State:
// in nftables mode one nft script each; in iptables mode the
// iptables-restore input of each family, under a comment naming the
// command it is for.
func dryRun(w io.Writer, mode string, cfgs []familyConfig, states map[proxier.IPFamily]*proxier.State) error {
	for _, fc := range cfgs {
		st := states[fc.Family]
		if mode == "nftables" {
			if _, err := io.WriteString(w, nftables.DryRun(fc.Config, st)); err != nil {
				return err
			}
			continue
		}
		restore := "iptables-restore"
		if fc.Family == proxier.IPv6 {
			restore = "ip6tables-restore"
		}
		fmt.Fprintf(w, "# %v: %s input\n", fc.Family, restore)
		if _, err := w.Write(iptables.DryRun(fc.Config, iptables.DryRunOptions(), st)); err != nil {
			return err
		}
	}
	return nil
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
