package main

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/syncer"
)

// familyConfig is what one family's backend and health-check servers are
// built from.
type familyConfig struct {
	proxier.Config
	// HealthCheckAddrs are where health-check node ports listen; nil means
	// every address.
	HealthCheckAddrs []netip.Addr
}

// host is what proxyConfigs needs to know of this node beyond the options.
type host struct {
	Name     string             // this node's name
	Node     syncer.NodeInfo    // its Node object as read at start; zero when unreadable
	Local    []netip.Addr       // the namespace's local addresses, of any family
	Families []proxier.IPFamily // the families to proxy
}

// proxyConfigs maps the options (flags and --config file, already merged)
// onto the configuration of each of h's families. It fails only for
// --nodeport-addresses=primary without a known node IP (see checkPrimary).
func proxyConfigs(o *options, h host) ([]familyConfig, error) {
	ips := nodeIPs(o, h.Node)
	if err := checkPrimary(o, ips, h.Name); err != nil {
		return nil, err
	}
	out := make([]familyConfig, 0, len(h.Families))
	for _, f := range h.Families {
		cfg := proxier.Config{
			Family:             f,
			MasqueradeAll:      o.masqueradeAll,
			MasqueradeBit:      o.masqueradeBit,
			LocalhostNodePorts: o.localhostNodePorts && f == proxier.IPv4,
			LocalDetector:      localDetector(o, f, h.Node),
			// nftables mode drops traffic to unallocated ClusterIPs in them.
			ServiceClusterIPRange: familyPrefixes(f, o.serviceCIDRs),
		}
		cfg.NodeIPs, cfg.NodePortAddresses = nodeAddrs(o, f, ips, h.Local)
		for _, ip := range h.Local {
			if f.Matches(ip) && !ip.IsLoopback() && !slices.Contains(cfg.NodeIPs, ip) {
				cfg.LocalAddrs = append(cfg.LocalAddrs, ip)
			}
		}
		fc := familyConfig{Config: cfg}
		if !cfg.NodePortsMatchAll() {
			fc.HealthCheckAddrs = cfg.NodePortIPs()
		}
		out = append(out, fc)
	}
	return out, nil
}

// localDetector tells local pod traffic apart as --detect-local-mode says:
// by every cluster CIDR (ClusterCIDR) or pod CIDR of the Node (NodeCIDR) of
// family f, or by interface. A CIDR mode without a CIDR of the family
// detects nothing, as kube-proxy's no-op detector.
func localDetector(o *options, f proxier.IPFamily, node syncer.NodeInfo) proxier.LocalDetector {
	var cidrs []netip.Prefix
	switch o.detectLocalMode {
	case "ClusterCIDR":
		cidrs = o.clusterCIDRs
	case "NodeCIDR":
		cidrs = node.PodCIDRs
	case "BridgeInterface":
		return proxier.LocalDetector{Mode: proxier.LocalBridgeInterface, Interface: o.bridgeInterface}
	case "InterfaceNamePrefix":
		return proxier.LocalDetector{Mode: proxier.LocalInterfacePrefix, Interface: o.interfacePrefix}
	}
	mine := familyPrefixes(f, cidrs)
	if len(mine) == 0 {
		return proxier.LocalDetector{}
	}
	return proxier.LocalDetector{Mode: proxier.LocalMode(o.detectLocalMode), CIDRs: mine}
}

// familyPrefixes are the prefixes of family f.
func familyPrefixes(f proxier.IPFamily, ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if f.Matches(p.Addr()) {
			out = append(out, p)
		}
	}
	return out
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
func checkPrimary(o *options, nodeIPs []netip.Addr, name string) error {
	if !o.nodePortPrimary || slices.ContainsFunc(nodeIPs, func(ip netip.Addr) bool { return !ip.IsLoopback() }) {
		return nil
	}
	return fmt.Errorf("--nodeport-addresses=primary: cannot determine this node's IP (Node %q unreadable or without addresses, no --bind-address); not opening NodePorts on every address", name)
}

// nodeWait is how long startup may wait for this node's Node object, and
// whether it waits for its pod CIDRs too: longer when the configuration
// depends on it (--nodeport-addresses=primary, NodeCIDR detection).
func nodeWait(o *options) (wait time.Duration, needed, podCIDRs bool) {
	podCIDRs = o.detectLocalMode == "NodeCIDR"
	needed = o.nodePortPrimary || podCIDRs
	if needed {
		return 30 * time.Second, needed, podCIDRs
	}
	return 5 * time.Second, needed, podCIDRs
}

// dualStackConfig reports whether the options name IPv6 pod or service
// ranges; --dry-run, which probes nothing, proxies IPv6 then.
func dualStackConfig(o *options) bool {
	return slices.ContainsFunc(slices.Concat(o.clusterCIDRs, o.serviceCIDRs), func(p netip.Prefix) bool { return p.Addr().Is6() })
}
