package syncer

import (
	"context"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	netutils "k8s.io/utils/net"
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
			info := nodeInfo(node)
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

func nodeInfo(node *v1.Node) NodeInfo {
	var info NodeInfo
	for _, want := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		seen := map[bool]bool{}
		for _, a := range node.Status.Addresses {
			if a.Type != want {
				continue
			}
			ip, ok := parseIPSloppy(a.Address)
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
		if _, n, err := netutils.ParseCIDRSloppy(c); err == nil {
			if p, ok := netip.AddrFromSlice(n.IP); ok {
				ones, _ := n.Mask.Size()
				info.PodCIDRs = append(info.PodCIDRs, netip.PrefixFrom(p.Unmap(), ones))
			}
		}
	}
	return info
}

func parseIPSloppy(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}
