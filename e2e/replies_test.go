package e2e

import (
	"fmt"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Helpers that send traffic (echo clients in a pod, the node or outside)
// and judge the replies: which backend answered, and the source it saw.

// connect runs `echo client` in from and fails the test on a harness error.
func (c *tc) connect(from *harness.Pod, opts harness.ClientOptions) []harness.Reply {
	c.Helper()
	start := time.Now()
	rs, err := from.Connect(c.ctx, opts)
	if err != nil {
		c.Fatalf("echo client in %s: %v", from.Name, err)
	}
	c.since(fmt.Sprintf("%d %s attempt(s) from %s to %s: %s", len(rs), protoName(opts.Proto), from.Name, opts.Target, harness.FormatTally(harness.Tally(rs))), start)
	return rs
}

func protoName(p string) string {
	if p == "" {
		return "tcp"
	}
	return p
}

func (c *tc) connectFrom(ns *harness.Netns, target string, n int, timeout time.Duration) []harness.Reply {
	c.Helper()
	rs, err := env.ConnectFrom(c.ctx, ns, harness.ClientOptions{Proto: "tcp", Target: target, Count: n, Timeout: timeout})
	if err != nil {
		c.Fatal(err)
	}
	return rs
}

// external makes n TCP attempts from src outside the node to target.
func (c *tc) external(src, target string, n int, timeout time.Duration) []harness.Reply {
	c.Helper()
	return c.externalOpts(harness.ClientOptions{Proto: "tcp", Target: target, Count: n, Timeout: timeout, SrcIP: src})
}

// externalOpts runs `echo client` outside the node (opts.SrcIP: one of the
// harness.Ext addresses).
func (c *tc) externalOpts(opts harness.ClientOptions) []harness.Reply {
	c.Helper()
	rs, err := env.ExternalConnect(c.ctx, opts)
	if err != nil {
		c.Fatalf("external client from %s to %s: %v", opts.SrcIP, opts.Target, err)
	}
	return rs
}

// eventually retries f every 100ms for up to 20s, until it returns ""; then
// fails with f's last complaint.
func (c *tc) eventually(what string, f func() string) time.Duration {
	c.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < 20*time.Second {
		if last = f(); last == "" {
			return c.since(what, start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Fatalf("%s: not within 20s: %s", what, last)
	return 0
}

// checkSpread fails unless every reply succeeded, came from one of pods,
// every pod answered at least once, and (wantSource != "") every backend saw
// wantSource as the source IP. It reports at most a few attempts of each
// kind of failure.
func (c *tc) checkSpread(rs []harness.Reply, want int, pods []*harness.Pod, wantSource string) {
	c.Helper()
	if len(rs) != want {
		c.Errorf("got %d replies, want %d", len(rs), want)
	}
	allowed := map[string]bool{}
	for _, p := range pods {
		allowed[p.Name] = true
	}
	seen := map[string]int{}
	bad := map[string][]string{}
	var kinds []string
	report := func(kind, msg string) {
		if bad[kind] == nil {
			kinds = append(kinds, kind)
		}
		bad[kind] = append(bad[kind], msg)
	}
	for i, r := range rs {
		switch {
		case r.Err != "":
			report("failed", fmt.Sprintf("attempt %d: %s", i, r.Line))
		case !allowed[r.Backend]:
			report("reached another backend than "+strings.Join(names(pods), ","), fmt.Sprintf("attempt %d: %s", i, r.Line))
		case wantSource != "" && r.SourceIP() != wantSource:
			report("source was not "+wantSource, fmt.Sprintf("attempt %d: backend %s saw %s", i, r.Backend, r.Source))
		}
		seen[r.Backend]++
	}
	for _, kind := range kinds {
		msgs := bad[kind]
		more := ""
		if len(msgs) > 5 {
			more = fmt.Sprintf("\n\t... and %d more", len(msgs)-5)
			msgs = msgs[:5]
		}
		c.Errorf("%d of %d attempts %s:\n\t%s%s", len(bad[kind]), len(rs), kind, strings.Join(msgs, "\n\t"), more)
	}
	for _, p := range pods {
		if seen[p.Name] == 0 {
			c.Errorf("backend %s never answered (tally %s)", p.Name, harness.FormatTally(harness.Tally(rs)))
		}
	}
}

// landed complains unless every reply came from one of pods, seen from
// source (any source but notSource, when source is "").
func landed(rs []harness.Reply, pods []*harness.Pod, source, notSource string) string {
	ok := map[string]bool{}
	for _, p := range pods {
		ok[p.Name] = true
	}
	for _, r := range rs {
		switch {
		case r.Err != "":
			return "error " + r.Err + " (" + harness.FormatTally(harness.Tally(rs)) + ")"
		case !ok[r.Backend]:
			return "reached " + r.Backend + " (" + harness.FormatTally(harness.Tally(rs)) + ")"
		case source != "" && r.SourceIP() != source:
			return fmt.Sprintf("%s saw source %s, want %s", r.Backend, r.SourceIP(), source)
		case notSource != "" && r.SourceIP() == notSource:
			return fmt.Sprintf("%s saw source %s: not masqueraded", r.Backend, r.SourceIP())
		}
	}
	if len(rs) == 0 {
		return "no replies"
	}
	return ""
}

// allReached complains unless each of pods answered at least once.
func allReached(rs []harness.Reply, pods []*harness.Pod) string {
	t := harness.Tally(rs)
	for _, p := range pods {
		if t[p.Name] == 0 {
			return p.Name + " never answered (" + harness.FormatTally(t) + ")"
		}
	}
	return ""
}

func allTimedOut(rs []harness.Reply) string {
	for _, r := range rs {
		if r.Err != "timeout" {
			return "got " + r.Line + ", want a timeout (dropped)"
		}
	}
	return ""
}

// exactly complains unless every reply came from one of pods (seen from
// source, or from any source but notSource, as landed) and each of pods
// answered.
func exactly(rs []harness.Reply, pods []*harness.Pod, source, notSource string) string {
	if m := landed(rs, pods, source, notSource); m != "" {
		return m
	}
	return allReached(rs, pods)
}

// pinned complains unless every reply came from one of pods (seen from
// source, if set), all from the same one: what ClientIP affinity does.
func pinned(rs []harness.Reply, pods []*harness.Pod, source string) string {
	if m := landed(rs, pods, source, ""); m != "" {
		return m
	}
	if only(rs) == "" {
		return "spread over " + harness.FormatTally(harness.Tally(rs))
	}
	return ""
}

// only names the one backend every reply came from, or "" when the replies
// failed or came from several.
func only(rs []harness.Reply) string {
	t := harness.Tally(rs)
	if len(t) != 1 || len(rs) == 0 || rs[0].Err != "" {
		return ""
	}
	return rs[0].Backend
}
