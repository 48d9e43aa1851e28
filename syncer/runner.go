package syncer

import (
	"context"
	"time"
)

// runner calls a function when asked, but not more often than once per
// minInterval, at least once per maxInterval, and again after a failure with
// exponential backoff. Requests made while the function runs or while the
// runner waits out minInterval coalesce into one call. TriggerNow asks for a
// call that does not wait out minInterval (a repair of the rules).
type runner struct {
	fn          func(context.Context) error
	minInterval time.Duration
	maxInterval time.Duration
	retryMin    time.Duration
	retryMax    time.Duration

	trigger chan struct{}
	now     chan struct{} // a pending request skips the minInterval wait
}

func newRunner(fn func(context.Context) error, minInterval, maxInterval, retryMin, retryMax time.Duration) *runner {
	if retryMax < retryMin {
		retryMax = retryMin
	}
	return &runner{
		fn:          fn,
		minInterval: minInterval,
		maxInterval: maxInterval,
		retryMin:    retryMin,
		retryMax:    retryMax,
		trigger:     make(chan struct{}, 1),
		now:         make(chan struct{}, 1),
	}
}

// Trigger asks for a call. It never blocks: a request already pending
// absorbs this one.
func (r *runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// TriggerNow asks for a call as soon as the one running (if any) ends,
// without waiting out minInterval. It never blocks.
func (r *runner) TriggerNow() {
	select {
	case r.now <- struct{}{}:
	default:
	}
	r.Trigger()
}

// Loop runs until ctx is done. Every call of fn happens on this goroutine.
func (r *runner) Loop(ctx context.Context) {
	periodic := time.NewTimer(r.maxInterval)
	defer periodic.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()

	var lastStart time.Time
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.trigger:
		case <-periodic.C:
		case <-retry.C:
		}

		if wait := r.minInterval - time.Since(lastStart); !lastStart.IsZero() && wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-r.now:
				t.Stop()
			}
		}
		// This call serves every request made so far.
		for _, ch := range []chan struct{}{r.trigger, r.now} {
			select {
			case <-ch:
			default:
			}
		}

		lastStart = time.Now()
		err := r.fn(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if backoff == 0 {
				backoff = r.retryMin
			} else {
				backoff = min(2*backoff, r.retryMax)
			}
			retry.Reset(backoff)
		} else {
			backoff = 0
			retry.Stop()
		}
		periodic.Reset(r.maxInterval)
	}
}
