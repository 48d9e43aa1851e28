package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
	"github.com/svcproxy/svcproxy/syncer"
)

// node is what the proxy learns of its cluster and node before the first
// sync: the API to read, this node's name, and each family's
// configuration.
type node struct {
	client kubernetes.Interface
	name   string
	info   syncer.NodeInfo
	cfgs   []familyConfig
	// podCIDRs: the configuration depends on the Node's pod CIDRs.
	podCIDRs bool
}

// readNode connects (to the API server, or to o.manifests' objects), reads
// this node's Node object and maps the options onto each family's
// configuration.
func readNode(ctx context.Context, o *options) (*node, error) {
	client, err := clientFor(o)
	if err != nil {
		return nil, err
	}
	name, err := nodeName(o)
	if err != nil {
		return nil, err
	}
	// The Node is read once here to configure the proxiers; the syncer
	// watches it from then on and ends Run when it changes.
	wait, needNode, podCIDRs := nodeWait(o)
	if o.manifests != "" {
		wait = 0 // the files have the Node or do not
	}
	info, ok := syncer.GetNodeInfo(ctx, client, name, wait, podCIDRs)
	if !ok && needNode {
		klog.InfoS("Could not read this node's Node object; --nodeport-addresses=primary and NodeCIDR detection fall back", "node", name)
	}
	h := host{Name: name, Node: info, Families: usableFamilies(ctx, o)}
	if o.manifests != "" && !slices.Contains(h.Families, proxier.IPv6) {
		dual, err := manifestsDualStack(ctx, client)
		if err != nil {
			return nil, err
		}
		if dual {
			h.Families = append(h.Families, proxier.IPv6)
		}
	}
	if o.manifests == "" {
		// From files, the node's addresses are the Node object's alone,
		// so the output does not depend on the machine it runs on.
		h.Local = localAddrs()
	}
	cfgs, err := proxyConfigs(o, h)
	if err != nil && !ok && o.manifests != "" {
		return nil, fmt.Errorf("%w: --manifests %s has no Node %s (give one with its InternalIP, or --nodeport-addresses)", err, o.manifests, name)
	}
	if err != nil {
		return nil, err
	}
	return &node{client: client, name: name, info: info, cfgs: cfgs, podCIDRs: podCIDRs}, nil
}

// families are the families n proxies.
func (n *node) families() []proxier.IPFamily {
	out := make([]proxier.IPFamily, len(n.cfgs))
	for i, fc := range n.cfgs {
		out[i] = fc.Family
	}
	return out
}

// states reads the State of each of n's families once.
func (n *node) states(ctx context.Context) (map[proxier.IPFamily]*proxier.State, error) {
	return syncer.Snapshot(ctx, n.client, n.name, n.families()...)
}

// runDryRun prints the rules svcproxy would program to w, or with
// --diff only their difference from the kernel's. Nothing reaches w
// unless every family's output is ready: a bad input prints only its error.
func runDryRun(ctx context.Context, o *options, w io.Writer) error {
	n, err := readNode(ctx, o)
	if err != nil {
		return err
	}
	states, err := n.states(ctx)
	if err != nil {
		return err
	}
	opt := renderOptions(ctx, o)
	if o.diff {
		return diffRules(ctx, w, o.proxyMode, n.cfgs, states, opt)
	}
	var b bytes.Buffer
	if err := dryRun(&b, o.proxyMode, n.cfgs, states, opt); err != nil {
		return err
	}
	_, err = w.Write(b.Bytes())
	return err
}

// dryRun writes the rules each family's configuration gives for its State:
// in nftables mode one nft script each; in iptables mode the
// iptables-restore input (rendered with opt) of each family, under a
// comment naming the command it is for.
func dryRun(w io.Writer, mode string, cfgs []familyConfig, states map[proxier.IPFamily]*proxier.State, opt iptables.Options) error {
	for _, fc := range cfgs {
		st := states[fc.Family]
		if mode == "nftables" {
			if _, err := io.WriteString(w, nftables.DryRun(fc.Config, st)); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(w, "# %v: %s input\n", fc.Family, restoreCommand(fc.Family))
		if _, err := w.Write(iptables.DryRun(fc.Config, opt, st)); err != nil {
			return err
		}
	}
	return nil
}

// restoreCommand is the iptables-restore of family f.
func restoreCommand(f proxier.IPFamily) string {
	if f == proxier.IPv6 {
		return "ip6tables-restore"
	}
	return "iptables-restore"
}

// renderOptions are the iptables options --dry-run and explain render
// with: from files, the output depends on the files alone, not on this
// machine's nf_conntrack_tcp_be_liberal or nfacct.
func renderOptions(ctx context.Context, o *options) iptables.Options {
	if o.manifests != "" && !o.diff {
		return iptables.FileOptions()
	}
	return iptables.DryRunOptions(ctx)
}
