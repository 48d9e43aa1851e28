// Command svcproxy is a drop-in replacement for kube-proxy: it watches
// Services and EndpointSlices and programs the node's iptables so traffic to
// Service addresses reaches their endpoints.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	osexec "os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/conntrack"
	"github.com/svcproxy/svcproxy/proxier/healthcheck"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	"github.com/svcproxy/svcproxy/syncer"
)

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(usage())
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// One LIST fills the caches twice as fast as a streamed watch-list.
	syncer.PreferList()
	if o.cleanup {
		err = cleanup(ctx)
	} else {
		err = run(ctx, o)
	}
	klog.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcproxy:", err)
		os.Exit(1)
	}
}

// cleanup removes svcproxy's (and kube-proxy's) rules in both families and
// both modes.
func cleanup(ctx context.Context) error {
	errs := []error{iptablesCleanup(ctx)}
	if _, err := osexec.LookPath("nft"); err == nil {
		errs = append(errs, nftables.Cleanup(ctx), nftables.CleanupKubeProxy(ctx))
	}
	return errors.Join(errs...)
}

// iptablesCleanup removes the KUBE-* chains and jumps in both families.
func iptablesCleanup(ctx context.Context) error {
	var errs []error
	for _, f := range []proxier.IPFamily{proxier.IPv4, proxier.IPv6} {
		bin := iptables.Detect(ctx, f)
		if _, err := osexec.LookPath(bin.Restore); err != nil {
			continue
		}
		if err := iptables.Cleanup(ctx, iptables.NewExecRunner(bin)); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", f, err))
		}
	}
	return errors.Join(errs...)
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
	node := nodeInfo(ctx, o, client, nodeName)
	if err := checkPrimary(o, node, nodeName); err != nil {
		return err
	}
	families := usableFamilies(ctx, o)
	if o.cleanupKubeProxy && !o.dryRun {
		// A one-step migration from kube-proxy: its rules go before ours
		// arrive (kube-proxy itself must already be stopped).
		if err := cleanupKubeProxy(ctx); err != nil {
			return fmt.Errorf("--cleanup-kube-proxy: %w", err)
		}
	}

	if o.dryRun {
		states, err := syncer.Snapshot(ctx, client, nodeName, families...)
		if err != nil {
			return err
		}
		for _, f := range families {
			cfg := proxierConfig(o, f, node)
			if o.proxyMode == "nftables" {
				fmt.Print(nftables.DryRun(cfg, serviceCIDRs(o, f), states[f]))
				continue
			}
			// iptables-restore input per family, each under a comment
			// naming the command it is for.
			restore := "iptables-restore"
			if f == proxier.IPv6 {
				restore = "ip6tables-restore"
			}
			fmt.Printf("# %v: %s input\n", f, restore)
			opt := iptables.Options{RandomFully: true, DropInvalid: !tcpBeLiberal()}
			os.Stdout.Write(iptables.DryRun(cfg, opt, states[f]))
		}
		return nil
	}

	// Node IPs and pod CIDRs are read once; like kube-proxy, exit when
	// they change so the restart reads them anew (rules stay; the restart
	// adopts them).
	ctx, stopFor := context.WithCancelCause(ctx)
	defer stopFor(nil)
	go watchNode(ctx, client, nodeName, node, o.detectLocalMode == "NodeCIDR", o.configSyncPeriod, stopFor)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxier.NewMetrics(reg)

	var proxiers []backend
	var hcServers []*healthcheck.Servers
	for _, f := range families {
		cfg := proxierConfig(o, f, node)
		p, err := newBackend(ctx, o, cfg, metrics)
		if err != nil {
			return err
		}
		family := f.String()
		ct := conntrack.NewCleaner(f, func(n int) { metrics.ConntrackDeleted.WithLabelValues(family).Add(float64(n)) })
		p.OnSynced(ct.Clean)
		proxiers = append(proxiers, p)
		hc := healthcheck.NewServers(f, healthCheckAddrs(cfg), nil)
		hcServers = append(hcServers, hc)
		p.OnSynced(func(plan *proxier.Plan) error {
			err := hc.Sync(healthcheck.FromPlan(plan))
			if err != nil {
				metrics.HealthCheckErrors.WithLabelValues(family).Inc()
			}
			return err
		})
	}

	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	broadcaster.StartRecordingToSink(ctx.Done())
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, "svcproxy")

	// The nftables proxiers share this namespace's notifications: a bulk
	// write of one family mutes both families' watchers.
	var nftProxiers []*nftables.Proxier
	backends := make([]syncer.Proxier, len(proxiers))
	for i, p := range proxiers {
		backends[i] = p
		if np, ok := p.(*nftables.Proxier); ok {
			nftProxiers = append(nftProxiers, np)
		}
	}
	nftables.Share(nftProxiers...)
	var triggers []syncer.Trigger
	if o.ruleCheckInterval > 0 {
		for i, f := range families {
			triggers = append(triggers, syncer.Trigger{Family: f, C: proxiers[i].Watch(ctx, o.ruleCheckInterval)})
		}
	}
	s, err := syncer.New(client, syncer.Options{
		NodeName:         nodeName,
		MinSyncPeriod:    o.minSyncPeriod,
		SyncPeriod:       o.syncPeriod,
		ConfigSyncPeriod: o.configSyncPeriod,
		Registerer:       reg,
		Recorder:         recorder,
		Triggers:         triggers,
	}, backends...)
	if err != nil {
		return err
	}
	for i := range families {
		hcServers[i].SetHealthy(s.Healthy)
		defer hcServers[i].Close()
	}
	if o.metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		serve(ctx, "metrics", o.metricsAddr, mux)
	}
	if o.healthzAddr != "" {
		serve(ctx, "healthz", o.healthzAddr, s.HealthHandler())
	}
	klog.InfoS("Starting svcproxy", "node", nodeName, "mode", o.proxyMode, "families", families, "clusterCIDRs", o.clusterCIDRs)
	// Rules stay in the kernel when svcproxy stops: a restart adopts them,
	// so traffic never drops. --cleanup is the way to remove them.
	err = s.Run(ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// usableFamilies is IPv4, plus IPv6 when the node's kernel and tools have it.
func usableFamilies(ctx context.Context, o *options) []proxier.IPFamily {
	families := []proxier.IPFamily{proxier.IPv4}
	if o.dryRun {
		// No probing (the iptables probe can create tables): the
		// configuration says whether the cluster is dual-stack.
		if dualStackConfig(o) {
			families = append(families, proxier.IPv6)
		}
		return families
	}
	var err error
	if o.proxyMode == "nftables" {
		err = nftables.IPv6Usable(ctx)
	} else {
		bin := iptables.Detect(ctx, proxier.IPv6)
		var ok bool
		if _, ok, err = iptables.NewExecRunner(bin).Rules(ctx, iptables.NAT, "PREROUTING"); err == nil && !ok {
			err = errors.New("no ip6tables nat table")
		}
	}
	if err == nil {
		families = append(families, proxier.IPv6)
	} else {
		klog.InfoS("IPv6 is not usable on this node; proxying IPv4 only", "err", err)
	}
	return families
}

// dualStackConfig reports whether the flags name IPv6 pod or service
// ranges.
func dualStackConfig(o *options) bool {
	for _, p := range append(slices.Clone(o.clusterCIDRs), o.serviceCIDRs...) {
		if p.Addr().Is6() {
			return true
		}
	}
	return false
}

// backend is one family's proxier, iptables or nftables.
type backend interface {
	syncer.Proxier
	OnSynced(func(*proxier.Plan) error)
	Watch(ctx context.Context, interval time.Duration) <-chan struct{}
}

func newBackend(ctx context.Context, o *options, cfg proxier.Config, metrics *proxier.Metrics) (backend, error) {
	family := cfg.Family.String()
	if o.proxyMode == "nftables" {
		p, err := nftables.NewKernel(cfg, serviceCIDRs(o, cfg.Family))
		if err != nil {
			return nil, err
		}
		klog.InfoS("Using nftables", "family", cfg.Family, "table", nftables.TableName,
			"nodePortAddresses", cfg.NodePortAddresses, "localDetector", cfg.LocalDetector.Mode)
		p.OnSynced(func(*proxier.Plan) error {
			r := p.LastResult()
			metrics.Rules.WithLabelValues("svcproxy", family).Set(float64(r.Elements))
			return nil
		})
		return p, nil
	}
	bin := iptables.Detect(ctx, cfg.Family)
	opt := iptables.Options{RandomFully: hasRandomFully(bin), DropInvalid: !tcpBeLiberal()}
	klog.InfoS("Using iptables", "family", cfg.Family, "backend", bin.Mode, "restore", bin.Restore, "randomFully", opt.RandomFully,
		"nodePortAddresses", cfg.NodePortAddresses, "localDetector", cfg.LocalDetector.Mode)
	if iptables.LocalhostNodePorts(cfg) {
		// NodePorts on 127.0.0.1 need routing of localnet packets; the
		// KUBE-FIREWALL rule keeps outside packets to 127/8 out. Never set
		// it when --nodeport-addresses leaves loopback out: there would be
		// no guard (CVE-2020-8558).
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/route_localnet", []byte("1"), 0o644); err != nil {
			klog.ErrorS(err, "Cannot enable route_localnet; NodePorts on localhost will not work")
		}
	}
	p := iptables.New(cfg, opt, iptables.NewExecRunner(bin))
	p.OnSynced(func(*proxier.Plan) error {
		for table, n := range p.LastResult().Rules {
			metrics.Rules.WithLabelValues(table, family).Set(float64(n))
		}
		return nil
	})
	return p, nil
}

// serviceCIDRs are the --service-cluster-ip-range CIDRs of family f.
func serviceCIDRs(o *options, f proxier.IPFamily) []string {
	var out []string
	for _, p := range o.serviceCIDRs {
		if f.Matches(p.Addr()) {
			out = append(out, p.String())
		}
	}
	return out
}

// cleanupKubeProxy removes kube-proxy's iptables chains and nftables tables.
func cleanupKubeProxy(ctx context.Context) error {
	errs := []error{iptablesCleanup(ctx)}
	if _, err := osexec.LookPath("nft"); err == nil {
		errs = append(errs, nftables.CleanupKubeProxy(ctx))
	}
	return errors.Join(errs...)
}

func nodeInfo(ctx context.Context, o *options, client kubernetes.Interface, name string) syncer.NodeInfo {
	needNode := o.nodePortPrimary || o.detectLocalMode == "NodeCIDR"
	wait := 5 * time.Second
	if needNode {
		wait = 30 * time.Second
	}
	info, ok := syncer.GetNodeInfo(ctx, client, name, wait, o.detectLocalMode == "NodeCIDR")
	if !ok && needNode {
		klog.InfoS("Could not read this node's Node object; --nodeport-addresses=primary and NodeCIDR detection fall back", "node", name)
	}
	return info
}

func proxierConfig(o *options, f proxier.IPFamily, node syncer.NodeInfo) proxier.Config {
	cfg := proxier.Config{
		Family:             f,
		MasqueradeAll:      o.masqueradeAll,
		MasqueradeBit:      o.masqueradeBit,
		LocalhostNodePorts: o.localhostNodePorts && f == proxier.IPv4,
	}
	cfg.NodeIPs, cfg.NodePortAddresses = nodeAddrs(o, f, nodeIPs(o, node), localAddrs(f))
	var cidrs []netip.Prefix
	switch o.detectLocalMode {
	case "ClusterCIDR":
		cidrs = o.clusterCIDRs
	case "NodeCIDR":
		cidrs = node.PodCIDRs
	case "BridgeInterface":
		cfg.LocalDetector = proxier.LocalDetector{Mode: proxier.LocalBridgeInterface, Interface: o.bridgeInterface}
	case "InterfaceNamePrefix":
		cfg.LocalDetector = proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: o.interfacePrefix}
	}
	for _, c := range cidrs {
		if f.Matches(c.Addr()) {
			cfg.LocalDetector = proxier.LocalDetector{Mode: proxier.LocalMode(o.detectLocalMode), CIDRs: []netip.Prefix{c}}
			break
		}
	}
	return cfg
}

// nodeIPs are this node's IPs as kube-proxy determines them
// (cmd/kube-proxy/app/server.go detectNodeIPs): a specific --bind-address
// for its family, else the Node object's address of each family (its
// InternalIP, else ExternalIP). kube-proxy assumes loopback for a family
// with neither; loopback never matters below, so we leave it out.
func nodeIPs(o *options, node syncer.NodeInfo) []netip.Addr {
	var out []netip.Addr
	if o.bindAddress.IsValid() {
		out = append(out, o.bindAddress)
	}
	for _, ip := range node.InternalIPs {
		if !slices.ContainsFunc(out, func(a netip.Addr) bool { return a.Is4() == ip.Is4() }) {
			out = append(out, ip)
		}
	}
	return out
}

// nodeAddrs returns proxier.Config's NodeIPs and NodePortAddresses for
// family f, from this node's IPs (see nodeIPs) and its local addresses.
//
// kube-proxy lets the node through a loadBalancerSourceRanges firewall only
// when a range holds one of its node IPs, not any local address; NodePorts
// limited by CIDRs answer on the local addresses inside them. Config has one
// list for both, so it holds the node IPs, plus, only when
// --nodeport-addresses gives CIDRs, the local addresses inside them.
//
// "primary" becomes the node IP of each family as a /32 or /128
// (kube-proxy's server.go). A family without a node IP gets no entry, so
// its NodePorts answer on every address, as in kube-proxy (whose node IP
// is then loopback, which it skips).
func nodeAddrs(o *options, f proxier.IPFamily, nodeIPs, local []netip.Addr) (ips []netip.Addr, npa []netip.Prefix) {
	for _, ip := range nodeIPs {
		if f.Matches(ip) && !ip.IsLoopback() {
			ips = append(ips, ip)
		}
	}
	for _, p := range o.nodePortAddresses {
		if f.Matches(p.Addr()) {
			npa = append(npa, p)
		}
	}
	for _, ip := range local {
		if f.Matches(ip) && !slices.Contains(ips, ip) && slices.ContainsFunc(npa, func(p netip.Prefix) bool { return p.Contains(ip) }) {
			ips = append(ips, ip)
		}
	}
	if o.nodePortPrimary {
		for _, ip := range nodeIPs {
			if f.Matches(ip) && !ip.IsLoopback() {
				npa = append(npa, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
	}
	return ips, npa
}

// checkPrimary refuses --nodeport-addresses=primary when this node's IP is
// unknown in every family: NodePorts would otherwise answer on every
// address, the opposite of what was asked. kube-proxy also refuses to start
// without the node's IPs (pkg/proxy/node.go NewNodeManager).
func checkPrimary(o *options, node syncer.NodeInfo, name string) error {
	if !o.nodePortPrimary {
		return nil
	}
	for _, ip := range nodeIPs(o, node) {
		if !ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("--nodeport-addresses=primary: cannot determine this node's IP (Node %q unreadable or without addresses, no --bind-address); not opening NodePorts on every address", name)
}

// watchNode ends svcproxy (through stop), as kube-proxy's NodeManager
// (pkg/proxy/node.go) exits, when this node's IPs change, when its pod
// CIDRs change and podCIDRs matter (--detect-local-mode=NodeCIDR), or when
// the Node is deleted. A Node without addresses is logged, not acted on.
func watchNode(ctx context.Context, client kubernetes.Interface, name string, start syncer.NodeInfo, podCIDRs bool, resync time.Duration, stop context.CancelCauseFunc) {
	cur := start
	changed := func(obj any) {
		node, ok := obj.(*v1.Node)
		if !ok || node.Name != name {
			return
		}
		info := syncer.NodeInfoOf(node)
		if podCIDRs && !slices.Equal(info.PodCIDRs, cur.PodCIDRs) {
			klog.InfoS("PodCIDRs changed for the node; exiting so the restart uses them", "node", name, "new", info.PodCIDRs, "old", cur.PodCIDRs)
			stop(fmt.Errorf("node %s: pod CIDRs changed from %v to %v", name, cur.PodCIDRs, info.PodCIDRs))
			return
		}
		if len(info.InternalIPs) == 0 {
			klog.ErrorS(nil, "Node has no addresses", "node", name)
			return
		}
		if !slices.Equal(info.InternalIPs, cur.InternalIPs) {
			klog.InfoS("NodeIPs changed for the node; exiting so the restart uses them", "node", name, "new", info.InternalIPs, "old", cur.InternalIPs)
			stop(fmt.Errorf("node %s: IPs changed from %v to %v", name, cur.InternalIPs, info.InternalIPs))
			return
		}
		cur = info
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, resync, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
	}))
	inf := factory.Core().V1().Nodes().Informer()
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    changed,
		UpdateFunc: func(_, obj any) { changed(obj) },
		DeleteFunc: func(obj any) {
			if node, ok := obj.(*v1.Node); ok && node.Name == name {
				klog.InfoS("Node is being deleted; exiting", "node", name)
				stop(fmt.Errorf("node %s deleted", name))
			}
		},
	})
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
}

// localAddrs are this network namespace's interface addresses of family f.
func localAddrs(f proxier.IPFamily) []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		klog.ErrorS(err, "Cannot list local addresses")
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && f.Matches(ip.Unmap()) {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// healthCheckAddrs are where health-check node ports listen: every address
// when NodePorts match all addresses, else the selected node IPs.
func healthCheckAddrs(cfg proxier.Config) []netip.Addr {
	if cfg.NodePortsMatchAll() {
		return nil
	}
	return cfg.NodePortIPs()
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
