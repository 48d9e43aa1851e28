package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
	"github.com/svcproxy/svcproxy/proxier/nftables"
)

// This file is --dry-run --diff: the rules svcproxy would program against
// those the kernel holds, as a unified diff in the mode's own syntax
// ("-" only in the kernel, "+" only in svcproxy's rules).
//
// The two sides are compared like with like by putting the desired rules
// through the same tool as the kernel's: they are loaded into a scratch
// network namespace and listed back by the same nft or iptables-save, then
// both listings are normalized the same way (proxier/nftables/listing.go,
// proxier/iptables/listing.go). A parser of each tool's output would have
// to know every way nft and iptables rewrite a rule when they print it
// (implicit matches, masks, /32, reordered options), and differ with each
// version; the round trip makes that the tool's business.

// exitStatus is an error that only sets the exit status: main prints
// nothing for it.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// errDiffers is --diff's "the rules differ", exit status 1 as diff's.
const errDiffers = exitStatus(1)

// failureStatus is the exit status for an error: 2 under --diff, whose 1
// means "differs", else 1.
func failureStatus(o *options) int {
	if o != nil && o.diff {
		return 2
	}
	return 1
}

// side is one listing compared: its label in the diff's header and text.
type side struct {
	label, text string
}

// diffRules writes the difference between the kernel's rules and those of
// the dry run to w: one section a family (and, in iptables mode, a
// table). It returns errDiffers when there is any.
func diffRules(ctx context.Context, w io.Writer, mode string, cfgs []familyConfig, states map[proxier.IPFamily]*proxier.State, opt iptables.Options) error {
	var pairs [][2]side
	var err error
	if mode == "nftables" {
		pairs, err = nftPairs(ctx, cfgs, states)
	} else {
		pairs, err = iptablesPairs(ctx, cfgs, states, opt)
	}
	if err != nil {
		return err
	}
	var b bytes.Buffer
	for _, p := range pairs {
		b.WriteString(unifiedDiff(p[0].label, p[1].label, p[0].text, p[1].text))
	}
	if b.Len() == 0 {
		return nil
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return err
	}
	return errDiffers
}

// nftPairs are the kernel's and the desired table of each family.
func nftPairs(ctx context.Context, cfgs []familyConfig, states map[proxier.IPFamily]*proxier.State) ([][2]side, error) {
	want := map[proxier.IPFamily]string{}
	err := inScratchNetns(func() error {
		for _, fc := range cfgs {
			if err := runInput(ctx, nftables.DryRun(fc.Config, states[fc.Family]), "nft", "-f", "-"); err != nil {
				return err
			}
			l, err := nftables.Listing(ctx, fc.Family)
			if err != nil {
				return err
			}
			want[fc.Family] = l
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out [][2]side
	for _, fc := range cfgs {
		got, err := nftables.Listing(ctx, fc.Family)
		if err != nil {
			return nil, err
		}
		table := fmt.Sprintf("table %s %s", nftFamily(fc.Family), nftables.TableName)
		out = append(out, [2]side{{"kernel: " + table, got}, {"svcproxy: " + table, want[fc.Family]}})
	}
	return out, nil
}

func nftFamily(f proxier.IPFamily) string {
	if f == proxier.IPv6 {
		return "ip6"
	}
	return "ip"
}

// iptablesPairs are the kernel's and the desired svcproxy chains of each
// family.
func iptablesPairs(ctx context.Context, cfgs []familyConfig, states map[proxier.IPFamily]*proxier.State, opt iptables.Options) ([][2]side, error) {
	type family struct {
		bin    iptables.Binaries
		tables []string
		want   string
		ours   map[string]bool
	}
	fams := make([]family, len(cfgs))
	for i, fc := range cfgs {
		fams[i].bin = iptables.Detect(ctx, fc.Family)
	}
	err := inScratchNetns(func() error {
		if len(opt.NFAcct) > 0 {
			// The rules name kube-proxy's nfacct objects: restore
			// needs them in this namespace too.
			ns, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				return err
			}
			defer ns.Close()
			if got := iptables.EnsureNFAcct(ctx, int(ns.Fd())); len(got) < len(opt.NFAcct) {
				return fmt.Errorf("--diff: nfacct objects %v in the scratch network namespace, want %v", got, opt.NFAcct)
			}
		}
		for i, fc := range cfgs {
			input := string(iptables.DryRun(fc.Config, opt, states[fc.Family]))
			f := &fams[i]
			if err := runInput(ctx, input, f.bin.Restore); err != nil {
				return err
			}
			f.tables = iptables.Tables(input)
			save, err := iptables.SaveTables(ctx, f.bin, f.tables)
			if err != nil {
				return err
			}
			f.ours = iptables.DeclaredChains(save)
			f.want = iptables.Owned(save, func(c string) bool { return f.ours[c] })
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out [][2]side
	for i, fc := range cfgs {
		f := fams[i]
		save, err := iptables.SaveTables(ctx, f.bin, f.tables)
		if err != nil {
			return nil, err
		}
		// Stale service chains are ours too: a sync would delete them.
		got := iptables.Owned(save, func(c string) bool { return f.ours[c] || iptables.IsServiceChain(c) })
		label := fmt.Sprintf("%s (%v, svcproxy's chains)", f.bin.Save, fc.Family)
		out = append(out, [2]side{{"kernel: " + label, got}, {"svcproxy: " + label, f.want}})
	}
	return out, nil
}

// runInput runs argv with input on its stdin.
func runInput(ctx context.Context, input string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(input)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s (in a scratch network namespace): %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// inScratchNetns runs fn on an OS thread moved into a new, empty network
// namespace, so that the commands fn starts run there and leave the node's
// namespace alone. The thread stays locked: it ends with the goroutine,
// and the namespace with it. It needs CAP_SYS_ADMIN.
func inScratchNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("--diff: a scratch network namespace to list the desired rules in: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// lineEdit is one line of a line diff: ' ' in both, '-' only in a, '+' only
// in b.
type lineEdit struct {
	op   byte
	line string
}

// maxEdits bounds the search for the shortest edit script, whose memory
// grows with the square of the edits: beyond it the lines between the
// common head and tail are shown as all removed and all added.
const maxEdits = 3000

// lineDiff is a shortest edit script from a to b (Myers' greedy
// algorithm, after the common head and tail are set aside).
func lineDiff(a, b []string) []lineEdit {
	var head, tail []lineEdit
	for len(a) > 0 && len(b) > 0 && a[0] == b[0] {
		head = append(head, lineEdit{' ', a[0]})
		a, b = a[1:], b[1:]
	}
	for len(a) > 0 && len(b) > 0 && a[len(a)-1] == b[len(b)-1] {
		tail = append(tail, lineEdit{' ', a[len(a)-1]})
		a, b = a[:len(a)-1], b[:len(b)-1]
	}
	out := append(head, myers(a, b)...)
	for i := len(tail) - 1; i >= 0; i-- {
		out = append(out, tail[i])
	}
	return out
}

// myers finds the shortest edit script from a to b. v[k] is the furthest
// x reached on diagonal k = x-y; trace keeps, for each edit count d, the
// part of v the backtrack reads (diagonals -d-1..d+1).
func myers(a, b []string) []lineEdit {
	n, m := len(a), len(b)
	limit := min(n+m, maxEdits)
	off := limit + 1
	v := make([]int32, 2*limit+3)
	var trace [][]int32
	for d := 0; d <= limit; d++ {
		trace = append(trace, append([]int32(nil), v[off-d-1:off+d+2]...))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || k != d && v[off+k-1] < v[off+k+1] {
				x = int(v[off+k+1])
			} else {
				x = int(v[off+k-1]) + 1
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x, y = x+1, y+1
			}
			v[off+k] = int32(x)
			if x >= n && y >= m {
				return backtrack(a, b, trace)
			}
		}
	}
	out := make([]lineEdit, 0, n+m)
	for _, l := range a {
		out = append(out, lineEdit{'-', l})
	}
	for _, l := range b {
		out = append(out, lineEdit{'+', l})
	}
	return out
}

// backtrack walks trace back from (len(a), len(b)) to (0, 0).
func backtrack(a, b []string, trace [][]int32) []lineEdit {
	x, y := len(a), len(b)
	var rev []lineEdit
	for d := len(trace) - 1; d >= 0; d-- {
		at := func(k int) int { return int(trace[d][k+d+1]) }
		k := x - y
		prevK := k - 1
		if k == -d || k != d && at(k-1) < at(k+1) {
			prevK = k + 1
		}
		prevX := at(prevK)
		prevY := prevX - prevK
		for x > prevX && y > prevY {
			x, y = x-1, y-1
			rev = append(rev, lineEdit{' ', a[x]})
		}
		if d > 0 {
			if x == prevX {
				rev = append(rev, lineEdit{'+', b[prevY]})
			} else {
				rev = append(rev, lineEdit{'-', a[prevX]})
			}
		}
		x, y = prevX, prevY
	}
	out := make([]lineEdit, len(rev))
	for i, e := range rev {
		out[len(rev)-1-i] = e
	}
	return out
}

// diffContext is the number of unchanged lines shown around a change.
const diffContext = 3

// unifiedDiff is the unified diff from text a (labelled la) to b, or ""
// when they are equal.
func unifiedDiff(la, lb, a, b string) string {
	edits := lineDiff(splitLines(a), splitLines(b))
	var out strings.Builder
	// Each hunk runs from its first change less the context to its last
	// change plus the context; hunks closer than twice the context merge.
	for i := 0; i < len(edits); {
		if edits[i].op == ' ' {
			i++
			continue
		}
		start := max(0, i-diffContext)
		end := i
		for j := i; j < len(edits); j++ {
			if edits[j].op != ' ' {
				end = j
			} else if j-end > 2*diffContext {
				break
			}
		}
		end = min(len(edits), end+diffContext+1)
		if out.Len() == 0 {
			fmt.Fprintf(&out, "--- %s\n+++ %s\n", la, lb)
		}
		writeHunk(&out, edits, start, i, end)
		i = end
	}
	return out.String()
}

// writeHunk writes edits[start:end] as one hunk, whose first change is
// edits[first].
func writeHunk(w *strings.Builder, edits []lineEdit, start, first, end int) {
	aLine, bLine := 1, 1 // the line numbers edits[start] is at
	for _, e := range edits[:start] {
		if e.op != '+' {
			aLine++
		}
		if e.op != '-' {
			bLine++
		}
	}
	var aN, bN int
	for _, e := range edits[start:end] {
		if e.op != '+' {
			aN++
		}
		if e.op != '-' {
			bN++
		}
	}
	if aN == 0 {
		aLine--
	}
	if bN == 0 {
		bLine--
	}
	fmt.Fprintf(w, "@@ -%d,%d +%d,%d @@%s\n", aLine, aN, bLine, bN, heading(edits[:first]))
	for _, e := range edits[start:end] {
		w.WriteByte(e.op)
		w.WriteString(e.line)
		w.WriteByte('\n')
	}
}

// splitLines are s's lines, without their newlines.
func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// heading names the block a hunk's first change is in, as diff -p names
// the function: the last nft chain, set or map opened (a line with one tab
// of indent ending in "{") or iptables table started before it, after a
// space; or "".
func heading(before []lineEdit) string {
	for i := len(before) - 1; i >= 0; i-- {
		l := before[i].line
		if strings.HasPrefix(l, "*") || strings.HasPrefix(l, "\t") && !strings.HasPrefix(l, "\t\t") && strings.HasSuffix(l, "{") {
			return " " + strings.TrimSpace(l)
		}
	}
	return ""
}
