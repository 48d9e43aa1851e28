package syncer

import (
	"context"
	"net/netip"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

const (
	// labelServiceProxyName hands a Service to another proxy; kube-proxy
	// (and so svcproxy) ignores Services and EndpointSlices carrying it.
	labelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// sliceByService indexes EndpointSlices by "namespace/service-name".
	sliceByService = "svcproxy/service"
	// nodeSyncTimeout bounds how long a start waits for the Node cache
	// before syncing without the node's zone.
	nodeSyncTimeout = 10 * time.Second
	// cidrSyncTimeout bounds how long a start waits for the ServiceCIDR
	// cache before syncing with --service-cluster-ip-range instead.
	cidrSyncTimeout = 10 * time.Second
)

// watchListEnv is the environment variable of client-go's WatchListClient
// feature gate.
const watchListEnv = "KUBE_FEATURE_" + string(clientfeatures.WatchListClient)

// PreferList makes the informers fill their caches with one LIST (served
// from the API server's watch cache) instead of a streamed watch-list
// (client-go's WatchListClient, on by default): at 10,000 Services and
// 10,000 EndpointSlices the caches fill in about 0.6 s instead of 1.2 s,
// most of a cold start. It leaves the gate alone when the environment sets
// it (KUBE_FEATURE_WatchListClient=true streams again). Call it before any
// informer starts; it reports whether the gate is now off.
func PreferList() bool {
	if _, set := os.LookupEnv(watchListEnv); !set {
		if g, ok := clientfeatures.FeatureGates().(interface {
			Set(clientfeatures.Feature, bool) error
		}); ok {
			if err := g.Set(clientfeatures.WatchListClient, false); err != nil {
				klog.V(2).InfoS("Cannot turn off the WatchListClient feature gate", "err", err)
			}
		}
	}
	return !clientfeatures.FeatureGates().Enabled(clientfeatures.WatchListClient)
}

// syncedPoll is how often waitSynced checks the caches; client-go's
// WaitForCacheSync checks every 100 ms, which a cold start pays up to
// once per wait.
const syncedPoll = 5 * time.Millisecond

// waitSynced waits until every fn reports synced or done is closed, and
// reports whether they all did.
func waitSynced(done <-chan struct{}, fns ...cache.InformerSynced) bool {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := wait.PollUntilContextCancel(ctx, syncedPoll, true, func(context.Context) (bool, error) {
		for _, f := range fns {
			if !f() {
				return false, nil
			}
		}
		return true, nil
	})
	return err == nil
}

// proxiedSelector is kube-proxy's label selector for Services and
// EndpointSlices: not handed to another proxy and not headless.
func proxiedSelector() labels.Selector {
	noProxyName, err := labels.NewRequirement(labelServiceProxyName, selection.DoesNotExist, nil)
	if err != nil {
		panic(err)
	}
	notHeadless, err := labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil)
	if err != nil {
		panic(err)
	}
	return labels.NewSelector().Add(*noProxyName, *notHeadless)
}

// sliceServiceKey is the "namespace/name" of the Service an EndpointSlice
// belongs to, or "" when it carries no kubernetes.io/service-name label.
func sliceServiceKey(es *discovery.EndpointSlice) string {
	name := es.Labels[discovery.LabelServiceName]
	if name == "" {
		return ""
	}
	return es.Namespace + "/" + name
}

func indexSliceByService(obj any) ([]string, error) {
	es, ok := obj.(*discovery.EndpointSlice)
	if !ok {
		return nil, nil
	}
	if k := sliceServiceKey(es); k != "" {
		return []string{k}, nil
	}
	return nil, nil
}

// caches are the informers a syncer reads the API through. They implement
// source.
type caches struct {
	factory     informers.SharedInformerFactory
	nodeFactory informers.SharedInformerFactory
	services    cache.SharedIndexInformer
	slices      cache.SharedIndexInformer
	nodes       cache.SharedIndexInformer // nil without a node name
	nodeName    string
	// ServiceCIDRs (networking.k8s.io/v1), from their own factory: they
	// carry no service-proxy-name labels to select on.
	cidrFactory informers.SharedInformerFactory
	cidrs       cache.SharedIndexInformer
	cidrsGone   chan struct{} // closed once the API refused to list them
	cidrsOnce   sync.Once
}

func newCaches(client kubernetes.Interface, nodeName string, resync time.Duration) (*caches, error) {
	sel := proxiedSelector().String()
	f := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel }))
	c := &caches{
		factory:  f,
		services: f.Core().V1().Services().Informer(),
		slices:   f.Discovery().V1().EndpointSlices().Informer(),
		nodeName: nodeName,
	}
	if err := c.slices.AddIndexers(cache.Indexers{sliceByService: indexSliceByService}); err != nil {
		return nil, err
	}
	c.cidrFactory = informers.NewSharedInformerFactory(client, resync)
	c.cidrs = c.cidrFactory.Networking().V1().ServiceCIDRs().Informer()
	c.cidrsGone = make(chan struct{})
	if err := c.cidrs.SetWatchErrorHandlerWithContext(c.cidrWatchError); err != nil {
		return nil, err
	}
	if nodeName != "" {
		nameSel := fields.OneTermEqualSelector("metadata.name", nodeName).String()
		c.nodeFactory = informers.NewSharedInformerFactoryWithOptions(client, resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = nameSel }))
		c.nodes = c.nodeFactory.Core().V1().Nodes().Informer()
	}
	return c, nil
}

func (c *caches) start(ctx context.Context) {
	c.factory.Start(ctx.Done())
	c.cidrFactory.Start(ctx.Done())
	if c.nodeFactory != nil {
		c.nodeFactory.Start(ctx.Done())
	}
}

// shutdown waits for the informers to stop; ctx passed to start must be done.
func (c *caches) shutdown() {
	c.factory.Shutdown()
	c.cidrFactory.Shutdown()
	if c.nodeFactory != nil {
		c.nodeFactory.Shutdown()
	}
}

// cidrWatchError is the ServiceCIDR reflector's error handler. When the API
// does not serve ServiceCIDRs (404) or RBAC forbids listing them, the
// proxiers use --service-cluster-ip-range: that is logged once, and the
// reflector goes on retrying quietly (with its backoff), so ServiceCIDRs
// take over if they become readable. Other errors are logged as usual.
func (c *caches) cidrWatchError(ctx context.Context, r *cache.Reflector, err error) {
	if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) || apierrors.IsMethodNotSupported(err) {
		c.cidrsOnce.Do(func() {
			klog.InfoS("Cannot list ServiceCIDRs (networking.k8s.io/v1); using --service-cluster-ip-range for unallocated ClusterIPs", "err", err)
			close(c.cidrsGone)
		})
		return
	}
	cache.DefaultWatchErrorHandler(ctx, r, err)
}

// waitForServiceCIDRs waits a bounded time for the ServiceCIDR cache, so
// that the first sync already has the ServiceCIDRs; it returns at once when
// the API refused to list them, and goes on without them after the timeout.
func (c *caches) waitForServiceCIDRs(ctx context.Context, synced cache.InformerSynced) {
	wctx, cancel := context.WithTimeout(ctx, cidrSyncTimeout)
	defer cancel()
	stop := make(chan struct{})
	go func() {
		select {
		case <-wctx.Done():
		case <-c.cidrsGone:
		}
		close(stop)
	}()
	if !waitSynced(stop, synced) && ctx.Err() == nil && wctx.Err() != nil {
		klog.InfoS("ServiceCIDR cache not synced in time; using --service-cluster-ip-range until it is", "timeout", cidrSyncTimeout)
	}
}

// serviceCIDRs are the ServiceCIDRs' CIDRs of family f, or nil while the
// ServiceCIDR cache has not synced (or the API refused to list them).
func (c *caches) serviceCIDRs(f proxier.IPFamily) []netip.Prefix {
	if !c.cidrs.HasSynced() {
		return nil
	}
	objs := c.cidrs.GetStore().List()
	scs := make([]*networkingv1.ServiceCIDR, 0, len(objs))
	for _, o := range objs {
		if sc, ok := o.(*networkingv1.ServiceCIDR); ok {
			scs = append(scs, sc)
		}
	}
	return serviceCIDRsOf(scs, f)
}

// waitForNode waits a bounded time for the Node cache, so that the first
// sync knows the node's zone; it goes on without it rather than never
// syncing (for instance when RBAC forbids reading Nodes).
func (c *caches) waitForNode(ctx context.Context, synced cache.InformerSynced) {
	if c.nodes == nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, nodeSyncTimeout)
	defer cancel()
	if !waitSynced(wctx.Done(), synced) && ctx.Err() == nil {
		klog.InfoS("Node cache not synced in time; syncing without the node's topology zone", "node", c.nodeName, "timeout", nodeSyncTimeout)
	}
}

func (c *caches) service(nn types.NamespacedName) *v1.Service {
	obj, ok, err := c.services.GetIndexer().GetByKey(nn.String())
	if err != nil || !ok {
		return nil
	}
	svc, _ := obj.(*v1.Service)
	return svc
}

func (c *caches) endpointSlices(nn types.NamespacedName) []*discovery.EndpointSlice {
	objs, err := c.slices.GetIndexer().ByIndex(sliceByService, nn.String())
	if err != nil {
		return nil
	}
	out := make([]*discovery.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discovery.EndpointSlice); ok {
			out = append(out, es)
		}
	}
	return out
}

func (c *caches) serviceNames() []types.NamespacedName {
	keys := c.services.GetIndexer().ListKeys()
	out := make([]types.NamespacedName, 0, len(keys))
	for _, k := range keys {
		ns, name, err := cache.SplitMetaNamespaceKey(k)
		if err != nil {
			continue
		}
		out = append(out, types.NamespacedName{Namespace: ns, Name: name})
	}
	return out
}

// node returns this node from the cache, or nil.
func (c *caches) node() *v1.Node {
	if c.nodes == nil {
		return nil
	}
	obj, ok, err := c.nodes.GetIndexer().GetByKey(c.nodeName)
	if err != nil || !ok {
		return nil
	}
	n, _ := obj.(*v1.Node)
	return n
}

// nodeZone is this node's topology.kubernetes.io/zone label, or "".
func (c *caches) nodeZone() string {
	if n := c.node(); n != nil {
		return n.Labels[v1.LabelTopologyZone]
	}
	return ""
}
