// Command svcproxy is a drop-in replacement for kube-proxy: it watches
// Services and EndpointSlices and programs the node's iptables or nftables
// so traffic to Service addresses reaches their endpoints. This package is
// wiring: flags and config file (flags.go, config.go), their mapping onto
// each family's configuration (proxyconfig.go), the backends (backends.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/healthcheck"
	"github.com/svcproxy/svcproxy/syncer"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "explain" {
		os.Exit(explainMain(os.Args[2:]))
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Print(usage())
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// One LIST fills the caches faster than a streamed watch-list.
	syncer.PreferList()
	done, err := prepare(ctx, o)
	switch {
	case done:
	case o.cleanup:
		err = cleanup(ctx)
	default:
		err = run(ctx, o)
	}
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options) error {
	if o.dryRun {
		return runDryRun(ctx, o, os.Stdout)
	}
	n, err := readNode(ctx, o)
	if err != nil {
		return err
	}
	client, name, node, cfgs := n.client, n.name, n.info, n.cfgs
	if o.cleanupKubeProxy {
		// A one-step migration from kube-proxy: its rules go before ours
		// arrive (kube-proxy itself must already be stopped).
		if err := cleanupKubeProxy(ctx); err != nil {
			return fmt.Errorf("--cleanup-kube-proxy: %w", err)
		}
	}
	tuneNode(o, "/")

	reg, gatherer := newRegistry()
	metrics := proxier.NewMetrics(reg, proxier.Backend(o.proxyMode))
	backends, err := newBackends(ctx, o.proxyMode, cfgs, metrics)
	if err != nil {
		return err
	}
	removeLeftoversAfterSync(ctx, o, backends)
	rec, stopEvents := newEventRecorder(ctx, client, name)
	defer stopEvents()
	proxiers := make([]syncer.Proxier, len(backends))
	var triggers []syncer.Trigger
	var hcServers []*healthcheck.Servers
	for i, p := range backends {
		proxiers[i] = p
		hc := afterSync(p, cfgs[i], metrics, rec, newCleaner(cfgs[i].Family, metrics))
		defer hc.Close()
		hcServers = append(hcServers, hc)
		if o.ruleCheckInterval > 0 {
			triggers = append(triggers, syncer.Trigger{Family: cfgs[i].Family, C: p.Watch(ctx, o.ruleCheckInterval)})
		}
	}

	s, err := syncer.New(client, syncer.Options{
		NodeName:         name,
		MinSyncPeriod:    o.minSyncPeriod,
		SyncPeriod:       o.syncPeriod,
		ConfigSyncPeriod: o.configSyncPeriod,
		Registerer:       reg,
		Recorder:         rec,
		Triggers:         triggers,
		Node:             &node,
		WatchPodCIDRs:    n.podCIDRs,
	}, proxiers...)
	if err != nil {
		return err
	}
	for _, hc := range hcServers {
		hc.SetHealthy(s.Healthy)
	}
	if o.metricsAddr != "" {
		mux := metricsMux(o, gatherer, s.HealthHandler(), flagValues(os.Args[1:]))
		serve(ctx, "metrics", o.metricsAddr, mux, rec.nodeWarning("FailedToStartMetricServer"))
	}
	if o.healthzAddr != "" {
		serve(ctx, "healthz", o.healthzAddr, s.HealthHandler(), rec.nodeWarning("FailedToStartProxierHealthcheck"))
	}
	klog.InfoS("Starting svcproxy", "node", name, "mode", o.proxyMode, "families", n.families(), "clusterCIDRs", o.clusterCIDRs)
	rec.onNode(v1.EventTypeNormal, "Starting", "")
	// Rules stay in the kernel when svcproxy stops: a restart adopts them,
	// so traffic never drops. --cleanup is the way to remove them.
	return s.Run(ctx)
}

// localAddrs are this network namespace's interface addresses.
func localAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		klog.ErrorS(err, "Cannot list local addresses")
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

func newClient(o *options) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if o.kubeconfig == "" && o.master == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags(o.master, o.kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	cfg.UserAgent = "svcproxy"
	cfg.ContentType, cfg.AcceptContentTypes = o.kubeAPI.contentType, o.kubeAPI.accept
	cfg.QPS, cfg.Burst = o.kubeAPI.qps, int(o.kubeAPI.burst)
	return kubernetes.NewForConfig(cfg)
}

func nodeName(o *options) (string, error) {
	name := o.hostnameOverride
	if name == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("hostname: %w", err)
		}
		name = h
	}
	return strings.ToLower(strings.TrimSpace(name)), nil
}
