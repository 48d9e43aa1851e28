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

// startedAfter counts the calls that started after t.
func (c *calls) startedAfter(t time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.starts {
		if s.After(t) {
			n++
		}
	}
	return n
}

// startRunner runs r.Loop until stop is called or the test ends. stop
// cancels Loop's context and reports whether Loop returned within 5s.
func startRunner(t *testing.T, r *runner) (stop func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		r.Loop(ctx)
		close(done)
	}()
	stop = func() bool {
		cancel()
		select {
		case <-done:
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
	t.Cleanup(func() { stop() })
	return stop
}

// countingRunner runs a runner whose function only records its calls.
func countingRunner(t *testing.T, c *calls, minInterval, maxInterval time.Duration) (*runner, func() bool) {
	r := newRunner(func(context.Context) error { c.add(); return nil }, minInterval, maxInterval, time.Hour, time.Hour)
	return r, startRunner(t, r)
}

// waitingOutAnHour runs a counting runner with a minInterval of an hour,
// has it make its first call, and triggers it again: it now waits out the
// hour.
func waitingOutAnHour(t *testing.T, c *calls) (*runner, func() bool) {
	r, stop := countingRunner(t, c, time.Hour, time.Hour)
	r.Trigger()
	waitFor(t, "first call", func() bool { return c.count() == 1 })
	r.Trigger()
	return r, stop
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

// TestRunnerMinInterval: under a steady stream of triggers, calls start at
// least minInterval apart, the stream does not starve the runner, and the
// last trigger is served.
//
// The runner reads the clock just before it calls fn, and promises
// minInterval between those readings; fn can only read the clock later, so
// two of its readings may be closer than minInterval by however late fn was
// entered the first time. Every call is therefore measured from a reading
// known to come before the runner's own: the clock read just before the
// first trigger, sent to an idle runner, precedes call 0's start, so call k
// starts at least k minIntervals after it.
func TestRunnerMinInterval(t *testing.T) {
	const minInterval = 40 * time.Millisecond
	var c calls
	r, _ := countingRunner(t, &c, minInterval, time.Hour)

	first := time.Now()
	last := first // read just before the last trigger
	// The stream lasts 10 minIntervals, and longer if a loaded machine
	// has not let the runner make 3 calls by then.
	for time.Since(first) < 10*minInterval || c.count() < 3 {
		if time.Since(first) > 5*time.Second {
			t.Fatalf("%d calls in 5s of triggers every millisecond: the stream starves the runner", c.count())
		}
		last = time.Now()
		r.Trigger()
		time.Sleep(time.Millisecond)
	}
	// A trigger that finds one pending is absorbed by it, and the pending
	// one is taken just before a call: either way a call starts after it.
	waitFor(t, "a call after the last trigger", func() bool { return c.startedAfter(last) > 0 })

	c.mu.Lock()
	defer c.mu.Unlock()
	for k, s := range c.starts {
		if min := time.Duration(k) * minInterval; s.Sub(first) < min {
			t.Errorf("call %d started %v after the first trigger, want at least %d x minInterval = %v", k, s.Sub(first), k, min)
		}
	}
	t.Logf("%d calls in %v of triggers", len(c.starts), last.Sub(first).Round(time.Millisecond))
}

// TestRunnerFirstTriggerImmediate: after a quiet period, a trigger is served
// without waiting.
func TestRunnerFirstTriggerImmediate(t *testing.T) {
	var c calls
	waitingOutAnHour(t, &c)
	time.Sleep(30 * time.Millisecond)
	if n := c.count(); n != 1 {
		t.Errorf("%d calls within minInterval, want 1", n)
	}
}

// TestRunnerRetriesWithBackoff: failures are retried without any trigger,
// with growing, capped delays; success stops the retries. The gaps between
// fn's own starts measure the delays fairly: the runner sets the retry
// timer after fn returned, later than fn's reading.
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
// maxInterval (timed, as retries are, from after fn returned).
func TestRunnerPeriodic(t *testing.T) {
	var c calls
	countingRunner(t, &c, 0, 20*time.Millisecond)
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
	_, stop := waitingOutAnHour(t, &c)
	time.Sleep(10 * time.Millisecond)
	if !stop() {
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
