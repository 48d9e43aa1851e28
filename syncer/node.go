package syncer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// NodeInfo is what startup needs from this node's Node object.
type NodeInfo struct {
	// InternalIPs are the node's InternalIP addresses (its "primary" IPs,
	// one per family), falling back to ExternalIPs.
	InternalIPs []netip.Addr
	// PodCIDRs is spec.podCIDRs (for --detect-local-mode=NodeCIDR).
	PodCIDRs []netip.Prefix
}

// GetNodeInfo reads the Node named name, retrying until ctx ends or wait
// elapses. ok is false when the Node could not be read (it may not exist).
// With needPodCIDRs it also waits for spec.podCIDRs to be allocated.
func GetNodeInfo(ctx context.Context, client kubernetes.Interface, name string, wait time.Duration, needPodCIDRs bool) (NodeInfo, bool) {
	deadline := time.Now().Add(wait)
	for {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			info := NodeInfoOf(node)
			if !needPodCIDRs || len(info.PodCIDRs) > 0 || time.Now().After(deadline) {
				return info, true
			}
		}
		if time.Now().After(deadline) {
			return NodeInfo{}, false
		}
		select {
		case <-ctx.Done():
			return NodeInfo{}, false
		case <-time.After(time.Second):
		}
	}
}

// NodeInfoOf is what startup reads of a Node object (see GetNodeInfo).
func NodeInfoOf(node *v1.Node) NodeInfo {
	var info NodeInfo
	for _, want := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		seen := map[bool]bool{}
		for _, a := range node.Status.Addresses {
			if a.Type != want {
				continue
			}
			ip, ok := parseAddr(a.Address)
			if !ok || seen[ip.Is4()] {
				continue
			}
			seen[ip.Is4()] = true
			info.InternalIPs = append(info.InternalIPs, ip)
		}
		if len(info.InternalIPs) > 0 {
			break
		}
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, ok := parsePrefix(c); ok {
			info.PodCIDRs = append(info.PodCIDRs, p)
		}
	}
	return info
}

// NodeChangedError is what Run returns when this node changed in a way the
// proxiers' configuration cannot follow (see Options.Node): the restart
// reads the Node anew, and adopts the rules, which stay in place.
type NodeChangedError struct {
	Node   string
	Reason string
}

func (e *NodeChangedError) Error() string { return "node " + e.Node + ": " + e.Reason }

// nodeWatch is kube-proxy's NodeManager behaviour over the syncer's Node
// informer: it ends Run when the node's IPs change, when its pod CIDRs
// change and they matter, or when the Node is deleted. A Node without
// addresses is logged, not acted on.
type nodeWatch struct {
	name     string
	podCIDRs bool
	cur      NodeInfo
	// end ends Run with its error; set by Run before the informers start.
	end func(error)
}

// changed checks an added or updated Node against what the proxiers were
// built with.
func (w *nodeWatch) changed(node *v1.Node) {
	info := NodeInfoOf(node)
	if w.podCIDRs && !slices.Equal(info.PodCIDRs, w.cur.PodCIDRs) {
		klog.InfoS("PodCIDRs changed for the node; exiting so the restart uses them", "node", w.name, "new", info.PodCIDRs, "old", w.cur.PodCIDRs)
		w.end(&NodeChangedError{w.name, fmt.Sprintf("pod CIDRs changed from %v to %v", w.cur.PodCIDRs, info.PodCIDRs)})
		return
	}
	if len(info.InternalIPs) == 0 {
		klog.ErrorS(nil, "Node has no addresses", "node", w.name)
		return
	}
	if !slices.Equal(info.InternalIPs, w.cur.InternalIPs) {
		klog.InfoS("NodeIPs changed for the node; exiting so the restart uses them", "node", w.name, "new", info.InternalIPs, "old", w.cur.InternalIPs)
		w.end(&NodeChangedError{w.name, fmt.Sprintf("IPs changed from %v to %v", w.cur.InternalIPs, info.InternalIPs)})
		return
	}
	w.cur = info
}

func (w *nodeWatch) deleted() {
	klog.InfoS("Node is being deleted; exiting", "node", w.name)
	w.end(&NodeChangedError{w.name, "deleted"})
}

// asNode is the Node in an informer's object (or its tombstone), or nil.
func asNode(obj any) *v1.Node {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	n, _ := obj.(*v1.Node)
	return n
}

// onNode handles this node's informer events (old nil: added; cur nil:
// deleted). A zone change asks for a sync, since endpoints are chosen by
// zone; the node watch, when set, sees every add, update and delete.
func (s *Syncer) onNode(old, cur any) {
	o, c := asNode(old), asNode(cur)
	for _, n := range []*v1.Node{o, c} {
		if n != nil && n.Name != s.opts.NodeName {
			return // the fake clientset ignores field selectors
		}
	}
	if o == nil && c == nil {
		return
	}
	if w := s.nodeWatch; w != nil {
		if c == nil {
			w.deleted()
		} else {
			w.changed(c)
		}
	}
	var oldZone, curZone string
	if o != nil {
		oldZone = o.Labels[v1.LabelTopologyZone]
	}
	if c != nil {
		curZone = c.Labels[v1.LabelTopologyZone]
	}
	if oldZone != curZone {
		klog.InfoS("Node topology zone changed", "node", s.opts.NodeName, "old", oldZone, "new", curZone)
		s.queue()
	}
}
