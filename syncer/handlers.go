package syncer

import (
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// handle registers the syncer's event handlers on the caches' informers:
// Services and EndpointSlices feed the change tracker, ServiceCIDRs and this
// node ask for a sync. The first sync waits for synced; cidrSync and
// nodeSync (nil without a node) are waited for a bounded time.
func (s *Syncer) handle(c *caches) error {
	type reg struct {
		inf    cache.SharedIndexInformer
		h      cache.ResourceEventHandlerFuncs
		synced *cache.InformerSynced
	}
	var svcSync, sliceSync cache.InformerSynced
	regs := []reg{
		{c.services, cache.ResourceEventHandlerFuncs{
			AddFunc:    s.onService,
			UpdateFunc: s.onServiceUpdate,
			DeleteFunc: s.onService,
		}, &svcSync},
		{c.slices, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { s.onSlice(obj, false) },
			UpdateFunc: s.onSliceUpdate,
			DeleteFunc: func(obj any) { s.onSlice(obj, true) },
		}, &sliceSync},
		{c.cidrs, cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { s.queue() },
			UpdateFunc: func(old, cur any) {
				if !sameServiceCIDRs(old, cur) {
					s.queue()
				}
			},
			DeleteFunc: func(any) { s.queue() },
		}, &s.cidrSync},
	}
	if c.nodes != nil {
		regs = append(regs, reg{c.nodes, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { s.onNode(nil, obj) },
			UpdateFunc: s.onNode,
			DeleteFunc: func(obj any) { s.onNode(obj, nil) },
		}, &s.nodeSync})
	}
	for _, r := range regs {
		h, err := r.inf.AddEventHandler(r.h)
		if err != nil {
			return err
		}
		*r.synced = h.HasSynced
	}
	s.synced = []cache.InformerSynced{svcSync, sliceSync}
	return nil
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
