package nftables

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// BenchmarkKernelRepair10k: the damage TestScale does to a table of 10,000
// Services × 10 endpoints, and for each the time from the start of the nft
// command to its end (<case>-nft-ms), to the watcher's verdict
// (<case>-detect-ms) and to the end of the repairing sync
// (<case>-repaired-ms). (TestKernelEvents checks what the repairs leave,
// at a scale where listing the table is quick.)
//
//	go test -run XXX -bench KernelRepair10k -benchtime 1x ./proxier/nftables/
//
// Measured on the 2-core test machine (2026-12, 242,000 elements),
// repaired within: a deleted element 40-70 ms, a flushed chain 22-68 ms,
// a deleted table 0.32-0.41 s, and a flushed map of 100,000 elements
// 0.50-0.52 s, whose own commit takes 0.18 s with the sentinel sitting it
// out (over a second while the watcher's notifications are built).
func BenchmarkKernelRepair10k(b *testing.B) {
	fd := benchNetns(b)
	ctx := context.Background()
	p, st := benchKernel10k(b, fd)
	repairs := kernelWatchSentinel(b, p, fd)
	for _, c := range []struct {
		name, cmd string
		full      bool // repaired by a full sync
	}{
		// The sentinel takes the watchers out during the flush's long
		// commit: the gap is judged as a loss, and a full sync repairs it.
		{"flush-map", "flush map ip svcproxy endpoints-ip-tcp", true},
		{"flush-chain", "flush chain ip svcproxy services", false},
		{"delete-elem", "delete element ip svcproxy " + mServiceIPs + " { 10.96.0.1 . tcp . 80 }", false},
		{"delete-table", "delete table ip svcproxy", true},
	} {
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		if out, err := exec.Command("nft", strings.Fields(c.cmd)...).CombinedOutput(); err != nil {
			b.Fatalf("nft %s: %v: %s", c.cmd, err, out)
		}
		nftTime := time.Since(start)
		select {
		case <-repairs:
		case <-time.After(10 * time.Second):
			b.Fatalf("%s not noticed", c.name)
		}
		detect := time.Since(start)
		if err := p.Sync(ctx, st); err != nil {
			b.Fatal(err)
		}
		repaired := time.Since(start)
		if p.LastResult().Full != c.full {
			b.Errorf("%s: repaired by a full sync: %v, want %v", c.name, p.LastResult().Full, c.full)
		}
		b.ReportMetric(float64(nftTime.Milliseconds()), c.name+"-nft-ms")
		b.ReportMetric(float64(detect.Milliseconds()), c.name+"-detect-ms")
		b.ReportMetric(float64(repaired.Milliseconds()), c.name+"-repaired-ms")
		// Our own repair's notifications must not count as damage.
		time.Sleep(300 * time.Millisecond)
		select {
		case what := <-repairs:
			b.Fatalf("after %s, our repair called foreign: %s", c.name, what)
		default:
		}
	}
}
