package main

import (
	"context"
	"os/exec"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
)

// A start in one proxy mode removes the other mode's leftovers, svcproxy's
// and kube-proxy's, as kube-proxy does on every start, and touches nothing
// else. kube-proxy removes them before its first sync; svcproxy waits until
// every family has synced once, because until then the old rules are what
// carries the Services' traffic: removing them first leaves a gap.

// leftoverCleanup removes one kind of the other mode's leftovers and says
// what it removed.
type leftoverCleanup struct {
	what string
	run  func(context.Context) ([]string, error)
}

// otherModeCleanups are the cleanups a start in mode runs: in nftables
// mode the iptables chains (both families, both iptables backends), in
// iptables mode the ip and ip6 nftables tables of svcproxy and kube-proxy.
func otherModeCleanups(mode string) []leftoverCleanup {
	switch mode {
	case "nftables":
		return []leftoverCleanup{{"iptables chains", iptablesLeftovers}}
	case "iptables":
		return []leftoverCleanup{
			{"nftables tables " + nftables.TableName, nftTableCleanup(nftables.TableName, nftables.Cleanup)},
			{"nftables tables kube-proxy", nftTableCleanup("kube-proxy", nftables.CleanupKubeProxy)},
		}
	}
	return nil
}

// removeLeftoversAfterSync removes the other mode's leftovers, in the
// background so that a large leftover ruleset does not hold up syncs, once
// each of backends has synced successfully once. Never in --dry-run.
func removeLeftoversAfterSync[P onSynced](ctx context.Context, o *options, backends []P) {
	cleanups := otherModeCleanups(o.proxyMode)
	if o.dryRun || len(cleanups) == 0 {
		return
	}
	afterFirstSyncs(backends, func() { go removeLeftovers(ctx, cleanups) })
}

// onSynced is what afterFirstSyncs needs of a backend.
type onSynced interface {
	OnSynced(func(*proxier.Plan) error)
}

// afterFirstSyncs runs f once, after the first successful sync of every one
// of ps (from the sync that completes the set).
func afterFirstSyncs[P onSynced](ps []P, f func()) {
	var mu sync.Mutex
	left := len(ps)
	for _, p := range ps {
		first := true
		p.OnSynced(func(*proxier.Plan) error {
			mu.Lock()
			last := first && left == 1
			if first {
				first = false
				left--
			}
			mu.Unlock()
			if last {
				f()
			}
			return nil
		})
	}
}

// removeLeftovers runs every cleanup and logs what each removed; a failed
// one is logged and the others still run.
func removeLeftovers(ctx context.Context, cleanups []leftoverCleanup) {
	for _, c := range cleanups {
		removed, err := c.run(ctx)
		if err != nil {
			klog.ErrorS(err, "Cannot remove the other proxy mode's leftovers", "what", c.what, "removed", removed)
			continue
		}
		if len(removed) == 0 {
			klog.V(2).InfoS("No leftovers of the other proxy mode", "what", c.what)
			continue
		}
		klog.InfoS("Removed the other proxy mode's leftovers", "what", c.what, "removed", removed)
	}
}

// iptablesLeftovers removes svcproxy's and kube-proxy's iptables chains.
func iptablesLeftovers(ctx context.Context) ([]string, error) {
	removed, err := iptables.CleanupLeftovers(ctx)
	out := make([]string, len(removed))
	for i, r := range removed {
		out[i] = r.String()
	}
	return out, err
}

// nftTableCleanup returns a cleanup that runs del when an ip or ip6 table
// called name exists, and names the tables it found. Without nft, or
// without nf_tables in the kernel, there is nothing to remove.
func nftTableCleanup(name string, del func(context.Context) error) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		if _, err := exec.LookPath("nft"); err != nil {
			return nil, nil
		}
		out, err := exec.CommandContext(ctx, "nft", "list", "tables").Output()
		if err != nil {
			klog.V(2).InfoS("Cannot list nftables tables; none removed", "err", err)
			return nil, nil
		}
		found := tablesNamed(string(out), name)
		if len(found) == 0 {
			return nil, nil
		}
		return found, del(ctx)
	}
}

// tablesNamed returns "FAMILY NAME" of the ip and ip6 tables called name
// in `nft list tables` output.
func tablesNamed(out, name string) []string {
	var found []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" && (f[1] == "ip" || f[1] == "ip6") && f[2] == name {
			found = append(found, f[1]+" "+f[2])
		}
	}
	return found
}
