package nftables

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// This file lists svcproxy's table as nft prints it, in a canonical form
// that two tables holding the same rules print alike (--dry-run --diff
// compares the kernel's table with the desired one loaded into a scratch
// namespace, both listed by the same nft).

// Listing is `nft list table` of family f's svcproxy table in this network
// namespace, normalized (see NormalizeListing); "" when there is no table.
func Listing(ctx context.Context, f proxier.IPFamily) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "nft", "list", "table", string(famOf(f).family), TableName)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(stderr.String(), "No such file or directory") {
			return "", nil
		}
		return "", fmt.Errorf("nft list table: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return NormalizeListing(stdout.String()), nil
}

var counterRe = regexp.MustCompile(`counter packets \d+ bytes \d+`)

// NormalizeListing rewrites nft's listing of one table so that equal
// contents print equal text, without the state the packet path changes:
// the table's chains, sets and maps sorted by kind and name (nft lists them
// in the order they were made); elements one a line, sorted (a hash set
// lists them in hash order); counters zeroed; and no elements for the
// affinity sets that packets fill (isAffinitySet), and no sizes (a
// running proxier keeps a size its elements have shrunk below, size.go).
// Rules keep their order, which matters.
func NormalizeListing(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) < 2 {
		return s
	}
	var head []string     // the table line and its own attributes
	var blocks [][]string // one a chain, set or map
	var cur []string      // the block being read
	var elems []string    // the elements being read
	inElems, skip := false, false
	for _, l := range lines[1 : len(lines)-1] {
		l = counterRe.ReplaceAllString(l, "counter packets 0 bytes 0")
		t := strings.TrimSpace(l)
		switch {
		case inElems:
			elems = append(elems, t)
			if strings.HasSuffix(t, "}") {
				inElems = false
				if !skip {
					cur = append(cur, formatElements(strings.Join(elems, " "))...)
				}
			}
		case cur == nil && strings.HasSuffix(t, "{"):
			cur = []string{l}
			f := strings.Fields(t)
			skip = len(f) > 1 && (f[0] == "set" || f[0] == "map") && isAffinitySet(f[1])
		case cur == nil:
			if t != "" {
				head = append(head, l)
			}
		case t == "}" && strings.Count(l, "\t") == 1:
			blocks = append(blocks, append(cur, l))
			cur = nil
		case strings.HasPrefix(t, "elements = {"):
			elems = []string{t}
			inElems = !strings.HasSuffix(t, "}")
			if !inElems && !skip {
				cur = append(cur, formatElements(t)...)
			}
		case strings.HasPrefix(t, "size "):
		case t != "":
			cur = append(cur, l)
		}
	}
	slices.SortStableFunc(blocks, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	out := append([]string{lines[0]}, head...)
	for _, b := range blocks {
		out = append(out, b...)
	}
	out = append(out, lines[len(lines)-1])
	return strings.Join(out, "\n") + "\n"
}

// formatElements turns `elements = { a, b, ... }` into one line a sorted
// element.
func formatElements(s string) []string {
	s = strings.TrimSpace(strings.TrimPrefix(s, "elements = {"))
	s = strings.TrimSpace(strings.TrimSuffix(s, "}"))
	var elems []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '{':
			depth++
		case '}':
			depth--
		case ',':
			if depth == 0 {
				elems = append(elems, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	if last := strings.TrimSpace(s[start:]); last != "" {
		elems = append(elems, last)
	}
	slices.Sort(elems)
	out := []string{"\t\telements = {"}
	for _, e := range elems {
		out = append(out, "\t\t\t"+e+",")
	}
	return append(out, "\t\t}")
}
