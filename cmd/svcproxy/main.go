// Command svcproxy is a drop-in replacement for kube-proxy: it watches
// Services and EndpointSlices and programs the node's iptables so traffic to
// Service addresses reaches their endpoints.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/syncer"
)

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Println("usage: svcproxy [flags]; flags are kube-proxy's (--kubeconfig, --proxy-mode, --cluster-cidr, ...) plus --dry-run")
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		klog.Flush()
		fmt.Fprintln(os.Stderr, "svcproxy:", err)
		os.Exit(1)
	}
	klog.Flush()
}

func run(ctx context.Context, o *options) error {
	client, err := newClient(o)
	if err != nil {
		return err
	}
	nodeName, err := nodeName(o)
	if err != nil {
		return err
	}
	families := []proxier.IPFamily{proxier.IPv4}

	if o.dryRun {
		states, err := syncer.Snapshot(ctx, client, nodeName, families...)
		if err != nil {
			return err
		}
		for _, f := range families {
			cfg := proxierConfig(o, f)
			os.Stdout.Write(iptables.DryRun(cfg, iptables.Options{RandomFully: true, DropInvalid: true}, states[f]))
		}
		return nil
	}

	var proxiers []syncer.Proxier
	for _, f := range families {
		bin := iptables.Detect(ctx, f)
		opt := iptables.Options{RandomFully: hasRandomFully(bin), DropInvalid: !tcpBeLiberal()}
		klog.InfoS("Using iptables", "family", f, "backend", bin.Mode, "restore", bin.Restore, "randomFully", opt.RandomFully)
		proxiers = append(proxiers, iptables.New(proxierConfig(o, f), opt, iptables.NewExecRunner(bin)))
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := syncer.New(client, syncer.Options{
		NodeName:         nodeName,
		MinSyncPeriod:    o.minSyncPeriod,
		SyncPeriod:       o.syncPeriod,
		ConfigSyncPeriod: o.configSyncPeriod,
		Registerer:       reg,
	}, proxiers...)
	if err != nil {
		return err
	}
	if o.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		serve(ctx, "metrics", o.metricsAddr, mux)
	}
	if o.healthzAddr != "" {
		serve(ctx, "healthz", o.healthzAddr, s.HealthHandler())
	}
	klog.InfoS("Starting svcproxy", "node", nodeName, "mode", o.proxyMode, "clusterCIDRs", o.clusterCIDRs)
	// Rules stay in the kernel when svcproxy stops: a restart adopts them,
	// so traffic never drops. --cleanup is the way to remove them.
	return s.Run(ctx)
}

func proxierConfig(o *options, f proxier.IPFamily) proxier.Config {
	cfg := proxier.Config{Family: f, MasqueradeAll: o.masqueradeAll, MasqueradeBit: o.masqueradeBit}
	var cidrs []netip.Prefix
	for _, c := range o.clusterCIDRs {
		if f.Matches(c.Addr()) {
			cidrs = append(cidrs, c)
		}
	}
	if len(cidrs) > 0 {
		cfg.LocalDetector = proxier.LocalDetector{Mode: proxier.LocalClusterCIDR, CIDRs: cidrs}
	}
	return cfg
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
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
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

func hasRandomFully(bin iptables.Binaries) bool {
	ipt, err := goipt.New(goipt.Path(bin.Command))
	if err != nil {
		return false
	}
	return ipt.HasRandomFully()
}

// tcpBeLiberal reports whether conntrack accepts out-of-window TCP packets,
// in which case INVALID packets need not be dropped.
func tcpBeLiberal() bool {
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
	return err == nil && strings.TrimSpace(string(b)) != "0"
}

func serve(ctx context.Context, what, addr string, h http.Handler) {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "HTTP server failed", "server", what, "address", addr)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
}
