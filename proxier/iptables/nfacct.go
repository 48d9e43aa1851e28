package iptables

import (
	"bytes"
	"context"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// kube-proxy's nfacct objects: rules that name one with -m nfacct count
// the packets they match in it, which the metrics read at scrape time.
const (
	// NFAcctInvalidDropped counts the conntrack-INVALID packets the
	// KUBE-FORWARD rule drops.
	NFAcctInvalidDropped = "ct_state_invalid_dropped_pkts"
	// NFAcctLocalhostNodePorts counts the packets to 127.0.0.0/8 that
	// KUBE-NODEPORTS accepts for a NodePort.
	NFAcctLocalhostNodePorts = "localhost_nps_accepted_pkts"
)

// NFAccts are kube-proxy's nfacct objects.
var NFAccts = []string{NFAcctInvalidDropped, NFAcctLocalhostNodePorts}

// NFAcct are the nfacct objects p's rules count packets in.
func (p *Proxier) NFAcct() []string { return p.opt.NFAcct }

// nfacctMatch is the match that counts a rule's packets in the nfacct
// object name, with a trailing space; "" when the kernel lacks it.
func (o Options) nfacctMatch(name string) string {
	if !slices.Contains(o.NFAcct, name) {
		return ""
	}
	return "-m nfacct --nfacct-name " + name + " "
}

// EnsureNFAcct creates kube-proxy's nfacct objects in the network
// namespace netns (an open fd of it; 0 for this process's) where missing
// and returns those that exist: the rules may name them. Like kube-proxy,
// it logs and leaves out what the kernel refuses (no nfnetlink_acct);
// their rules then go without the match.
func EnsureNFAcct(ctx context.Context, netns int) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := nfnl.Dial(netns)
	if err != nil {
		klog.ErrorS(err, "Cannot reach nfacct; nfacct based metrics won't be available")
		return nil
	}
	defer c.Close()
	var out []string
	for _, name := range NFAccts {
		if err := c.EnsureAcct(ctx, name); err != nil {
			klog.ErrorS(err, "Failed to create nfacct counter; the corresponding metric will not be updated", "counter", name)
			continue
		}
		out = append(out, name)
	}
	return out
}

// Where the kernel says which xt matches it has, per family; variables so
// that tests can point them elsewhere.
var (
	matchesPath = map[proxier.IPFamily]string{
		proxier.IPv4: "/proc/net/ip_tables_matches",
		proxier.IPv6: "/proc/net/ip6_tables_matches",
	}
	modulesDir = "/lib/modules"
)

// nfacctUsable returns the nfacct objects family f's rules may name: those
// EnsureNFAcct made, provided the kernel has the nfacct match. A rule
// naming a match the kernel lacks would fail the whole restore, so
// without it the rules go without the counters.
func nfacctUsable(ctx context.Context, f proxier.IPFamily) []string {
	if !hasNFAcctMatch(f) {
		klog.InfoS("The kernel has no nfacct match (xt_nfacct); nfacct based metrics won't be available", "family", f)
		return nil
	}
	return EnsureNFAcct(ctx, 0)
}

// nfacctReadable is the nfacct objects the rules of a running proxier
// name, found without creating anything: kube-proxy's objects that exist
// in this namespace, when the kernel has the match.
func nfacctReadable(ctx context.Context) []string {
	if !hasNFAcctMatch(proxier.IPv4) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := nfnl.Dial(0)
	if err != nil {
		return nil
	}
	defer c.Close()
	have, err := c.Accts(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, name := range NFAccts {
		if _, ok := have[name]; ok {
			out = append(out, name)
		}
	}
	return out
}

// hasNFAcctMatch reports whether family f's iptables can use -m nfacct:
// the match is registered, or its module can be loaded (iptables loads it
// on first use).
func hasNFAcctMatch(f proxier.IPFamily) bool {
	if b, err := os.ReadFile(matchesPath[f]); err == nil && slices.ContainsFunc(bytes.Fields(b), func(m []byte) bool { return string(m) == "nfacct" }) {
		return true
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	dep, err := os.ReadFile(modulesDir + "/" + unix.ByteSliceToString(u.Release[:]) + "/modules.dep")
	return err == nil && bytes.Contains(dep, []byte("/xt_nfacct.ko"))
}
