package proxier

import (
	"context"
	"time"

	"k8s.io/klog/v2"
)

// Signal is a guard's request for a sync now, outside the informers' and
// the timer's schedule. It holds at most one request and never blocks the
// guard. What the guard saw travels into that sync through its backend; the
// syncer only learns that a sync is wanted.
type Signal chan struct{}

// NewSignal returns an empty Signal.
func NewSignal() Signal { return make(Signal, 1) }

// Raise asks for a sync; a request already pending absorbs it.
func (s Signal) Raise() {
	select {
	case s <- struct{}{}:
	default:
	}
}

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
// full sync and raises sig so that it happens now.
func Monitor(ctx context.Context, family IPFamily, c Checker, interval time.Duration, sig Signal) {
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
			klog.InfoS("Rules altered by someone else; rewriting them", "family", family, "missing", missing)
			c.ForceFullSync()
			sig.Raise()
		}
	}
}
