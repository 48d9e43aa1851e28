package syncer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// calls records when a runner's function started.
type calls struct {
	mu     sync.Mutex
	starts []time.Time
}

func (c *calls) add() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.starts = append(c.starts, time.Now())
	return len(c.starts)
}

func (c *calls) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.starts)
}

func (c *calls) gaps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var g []time.Duration
	for i := 1; i < len(c.starts); i++ {
		g = append(g, c.starts[i].Sub(c.starts[i-1]))
	}
	return g
}

// startRunner runs r.Loop until the test ends.
func startRunner(t *testing.T, r *runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		r.Loop(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// blockingRunner runs a runner (with minInterval) whose call number n
// signals entered and then blocks until release is closed.
func blockingRunner(t *testing.T, c *calls, n int, minInterval time.Duration) (*runner, <-chan struct{}, chan struct{}) {
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	r := newRunner(func(context.Context) error {
		if c.add() == n {
			entered <- struct{}{}
			<-release
		}
		return nil
	}, minInterval, time.Hour, time.Second, time.Hour)
	startRunner(t, r)
	return r, entered, release
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRunnerCoalesces: triggers made while a call runs amount to exactly one
// more call.
func TestRunnerCoalesces(t *testing.T) {
	var c calls
	r, entered, release := blockingRunner(t, &c, 1, 0)

	r.Trigger()
	<-entered
	for range 1000 {
		r.Trigger()
	}
	close(release)
	waitFor(t, "second call", func() bool { return c.count() >= 2 })
	time.Sleep(50 * time.Millisecond)
	if n := c.count(); n != 2 {
		t.Errorf("%d calls, want 2 (1000 triggers during a call coalesce into one)", n)
	}
}

// TestRunnerMinInterval: a steady stream of triggers is served at most once
// per minInterval, and no trigger is lost.
func TestRunnerMinInterval(t *testing.T) {
	const minInterval = 40 * time.Millisecond
	var c calls
	var mu sync.Mutex
	seen, sent := 0, 0 // triggers served, triggers sent
	r := newRunner(func(context.Context) error {
		c.add()
		mu.Lock()
		seen = sent
		mu.Unlock()
		return nil
	}, minInterval, time.Hour, time.Second, time.Hour)
	startRunner(t, r)

	start := time.Now()
	for time.Since(start) < 10*minInterval {
		mu.Lock()
		sent++
		mu.Unlock()
		r.Trigger()
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	waitFor(t, "last trigger served", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen == sent
	})

	n := c.count()
	if max := int(elapsed/minInterval) + 2; n > max {
		t.Errorf("%d calls in %v, want at most %d", n, elapsed, max)
	}
	if n < 3 {
		t.Errorf("only %d calls for a steady stream of triggers", n)
	}
	for i, g := range c.gaps() {
		if g < minInterval {
			t.Errorf("gap %d between calls is %v, below minInterval %v", i, g, minInterval)
		}
	}
}

// TestRunnerFirstTriggerImmediate: after a quiet period, a trigger is served
// without waiting.
func TestRunnerFirstTriggerImmediate(t *testing.T) {
	var c calls
	r := newRunner(func(context.Context) error { c.add(); return nil }, time.Hour, time.Hour, time.Hour, time.Hour)
	startRunner(t, r)
	r.Trigger()
	waitFor(t, "first call", func() bool { return c.count() == 1 })
	r.Trigger()
	time.Sleep(30 * time.Millisecond)
	if n := c.count(); n != 1 {
		t.Errorf("%d calls within minInterval, want 1", n)
	}
}

// TestRunnerRetriesWithBackoff: failures are retried without any trigger,
// with growing, capped delays; success stops the retries.
func TestRunnerRetriesWithBackoff(t *testing.T) {
	const retryMin, retryMax = 20 * time.Millisecond, 50 * time.Millisecond
	var c calls
	r := newRunner(func(context.Context) error {
		if c.add() <= 4 {
			return errors.New("boom")
		}
		return nil
	}, 0, time.Hour, retryMin, retryMax)
	startRunner(t, r)
	r.Trigger()
	waitFor(t, "five calls", func() bool { return c.count() == 5 })
	time.Sleep(3 * retryMax)
	if n := c.count(); n != 5 {
		t.Errorf("%d calls, want 5: retries must stop after a success", n)
	}
	want := []time.Duration{20, 40, 50, 50}
	for i, g := range c.gaps() {
		if min := want[i] * time.Millisecond; g < min {
			t.Errorf("retry %d after %v, want at least %v", i+1, g, min)
		}
	}
}

// TestRunnerPeriodic: without triggers the function still runs every
// maxInterval.
func TestRunnerPeriodic(t *testing.T) {
	var c calls
	r := newRunner(func(context.Context) error { c.add(); return nil }, 0, 20*time.Millisecond, time.Second, time.Second)
	startRunner(t, r)
	waitFor(t, "three periodic calls", func() bool { return c.count() >= 3 })
	for i, g := range c.gaps() {
		if g < 20*time.Millisecond {
			t.Errorf("periodic gap %d is %v, below maxInterval", i, g)
		}
	}
}

// TestRunnerStops: Loop returns when its context ends, even while waiting
// out minInterval.
func TestRunnerStops(t *testing.T) {
	var c calls
	r := newRunner(func(context.Context) error { c.add(); return nil }, time.Hour, time.Hour, time.Hour, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	r.Trigger()
	waitFor(t, "first call", func() bool { return c.count() == 1 })
	r.Trigger() // now waiting out the hour
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Loop did not return after cancel")
	}
	if n := c.count(); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

// TestRunnerTriggerNow: TriggerNow skips the minInterval wait once, whether
// it comes while the runner waits, while it is idle or while a call runs;
// plain triggers still wait.
func TestRunnerTriggerNow(t *testing.T) {
	var c calls
	r, entered, release := blockingRunner(t, &c, 3, time.Hour)
	r.Trigger()
	waitFor(t, "first call", func() bool { return c.count() == 1 })
	// While waiting out minInterval for a plain trigger.
	r.Trigger()
	time.Sleep(20 * time.Millisecond)
	if n := c.count(); n != 1 {
		t.Fatalf("%d calls: a plain trigger must wait out minInterval", n)
	}
	r.TriggerNow()
	waitFor(t, "the call TriggerNow asked for", func() bool { return c.count() == 2 })
	// While idle.
	r.TriggerNow()
	<-entered
	// While a call runs: the next one follows it at once.
	r.TriggerNow()
	close(release)
	waitFor(t, "the call after the running one", func() bool { return c.count() == 4 })
	// Once only: a plain trigger waits again.
	r.Trigger()
	time.Sleep(20 * time.Millisecond)
	if n := c.count(); n != 4 {
		t.Errorf("%d calls: TriggerNow must skip the wait once only", n)
	}
}
