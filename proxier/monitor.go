package proxier

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// Checker is a backend whose kernel state can be checked cheaply and
// rewritten on demand.
type Checker interface {
	// Check describes what the last successful sync put in the kernel that
	// is no longer there, or returns "".
	Check(ctx context.Context) (string, error)
	// ForceFullSync makes the next sync rewrite everything.
	ForceFullSync()
}

// Monitor runs c.Check every interval until ctx ends. When something is
// gone — another agent flushed a table or removed our rules — it forces a
// full sync and calls resync so that it happens now.
func Monitor(ctx context.Context, family IPFamily, c Checker, interval time.Duration, resync func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		missing, err := c.Check(ctx)
		if err != nil {
			if ctx.Err() == nil {
				klog.V(2).InfoS("Rule check failed", "family", family, "err", err)
			}
			continue
		}
		if missing != "" {
			Repair(family, c, missing, resync)
		}
	}
}

// Repair has the rules rewritten at once after someone else altered them
// (what says how): it forces a full sync and calls resync so that it
// happens now.
func Repair(family IPFamily, c Checker, what string, resync func()) {
	klog.InfoS("Rules altered by someone else; rewriting them", "family", family, "missing", what)
	c.ForceFullSync()
	resync()
}
