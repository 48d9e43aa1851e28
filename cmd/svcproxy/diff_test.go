package main

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// applyEdits rebuilds both sides from an edit script.
func applyEdits(edits []lineEdit) (a, b []string) {
	for _, e := range edits {
		if e.op != '+' {
			a = append(a, e.line)
		}
		if e.op != '-' {
			b = append(b, e.line)
		}
	}
	return a, b
}

// lcs is the length of a longest common subsequence of a and b.
func lcs(a, b []string) int {
	prev := make([]int, len(b)+1)
	for i := range a {
		cur := make([]int, len(b)+1)
		for j := range b {
			if a[i] == b[j] {
				cur[j+1] = prev[j] + 1
			} else {
				cur[j+1] = max(prev[j+1], cur[j])
			}
		}
		prev = cur
	}
	return prev[len(b)]
}

// TestLineDiff: the edit script rebuilds both sides and is a shortest one
// (as many unchanged lines as a longest common subsequence), on fixed and
// random inputs.
func TestLineDiff(t *testing.T) {
	cases := [][2][]string{
		{nil, nil},
		{{"a"}, nil},
		{nil, {"a"}},
		{{"a", "b", "c"}, {"a", "b", "c"}},
		{{"a", "b", "c", "a", "b", "b", "a"}, {"c", "b", "a", "b", "a", "c"}},
		{{"x", "a", "y"}, {"a"}},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		var c [2][]string
		for s := range c {
			for range r.IntN(12) {
				c[s] = append(c[s], string(rune('a'+r.IntN(3))))
			}
		}
		cases = append(cases, c)
	}
	for _, c := range cases {
		edits := lineDiff(c[0], c[1])
		a, b := applyEdits(edits)
		if strings.Join(a, "") != strings.Join(c[0], "") || strings.Join(b, "") != strings.Join(c[1], "") {
			t.Fatalf("lineDiff(%q, %q) = %v rebuilds %q, %q", c[0], c[1], edits, a, b)
		}
		same := 0
		for _, e := range edits {
			if e.op == ' ' {
				same++
			}
		}
		if want := lcs(c[0], c[1]); same != want {
			t.Fatalf("lineDiff(%q, %q) keeps %d lines, want %d", c[0], c[1], same, want)
		}
	}
}

// TestLineDiffLimit: past maxEdits the script is still right, if longer.
func TestLineDiffLimit(t *testing.T) {
	var a, b []string
	for i := range maxEdits + 10 {
		a = append(a, "a"+string(rune(i)))
		b = append(b, "b"+string(rune(i)))
	}
	edits := lineDiff(a, b)
	ga, gb := applyEdits(edits)
	if strings.Join(ga, "\n") != strings.Join(a, "\n") || strings.Join(gb, "\n") != strings.Join(b, "\n") {
		t.Fatal("the edit script does not rebuild its inputs")
	}
}

// TestUnifiedDiff: headers, hunks with three lines of context that merge
// when close, line numbers, the enclosing block, nothing for equal texts.
func TestUnifiedDiff(t *testing.T) {
	lines := func(s ...string) string { return strings.Join(s, "\n") + "\n" }
	base := []string{"table ip svcproxy {", "\tchain a {", "\t\tr1", "\t\tr2", "\t\tr3", "\t\tr4", "\t}",
		"\tchain b {", "\t\tr5", "\t\tr6", "\t\tr7", "\t\tr8", "\t\tr9", "\t\tr10", "\t\tr11", "\t\tr12", "\t}", "}"}
	for _, tc := range []struct {
		name string
		b    []string
		want string
	}{
		{"equal", base, ""},
		{"one added", append(append(append([]string{}, base[:11]...), "\t\tnew"), base[11:]...), lines(
			"--- k", "+++ s",
			"@@ -9,6 +9,7 @@ chain b {",
			" \t\tr5", " \t\tr6", " \t\tr7", "+\t\tnew", " \t\tr8", " \t\tr9", " \t\tr10")},
		{"two apart", append(append(append([]string{base[0]}, base[2:14]...), "\t\tr10x"), base[14:]...), lines(
			"--- k", "+++ s",
			"@@ -1,5 +1,4 @@",
			" table ip svcproxy {", "-\tchain a {", " \t\tr1", " \t\tr2", " \t\tr3",
			"@@ -12,6 +11,7 @@ chain b {",
			" \t\tr8", " \t\tr9", " \t\tr10", "+\t\tr10x", " \t\tr11", " \t\tr12", " \t}")},
		{"first in its block", append(append(append([]string{}, base[:8]...), "\t\tnew"), base[8:]...), lines(
			"--- k", "+++ s",
			"@@ -6,6 +6,7 @@ chain b {",
			" \t\tr4", " \t}", " \tchain b {", "+\t\tnew", " \t\tr5", " \t\tr6", " \t\tr7")},
		{"from nothing", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := lines(base...)
			b := lines(tc.b...)
			if tc.b == nil {
				a, b = "", "x\n"
				tc.want = lines("--- k", "+++ s", "@@ -0,0 +1,1 @@", "+x")
			}
			if got := unifiedDiff("k", "s", a, b); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// TestDryRunDiff: --dry-run --diff --manifests against a namespace (the
// test's own, standing in for the node's) that holds exactly the dry run's
// rules: no output, no error; with a rule, an element or a built-in jump
// removed: errDiffers and a diff adding it back; packet-path state (an
// affinity set element) is no difference. In both modes.
func TestDryRunDiff(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	dir := filepath.Join("testdata", "manifests", "dualstack")
	golden := func(mode string) string {
		b, err := os.ReadFile(goldenPath("dualstack", mode))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	type step struct {
		argv []string // run in the namespace, or
		load string   // iptables-restore input for both families
	}
	v4, v6, _ := strings.Cut(golden("iptables"), "# IPv6: ip6tables-restore input\n")
	for _, tc := range []struct {
		name   string
		mode   string
		setup  []step
		damage []step
		want   []string // in the diff, in this order
		equal  bool     // damage is no difference
	}{
		{
			name:   "nft element",
			mode:   "nftables",
			setup:  []step{{argv: []string{"nft", "-f", "-"}, load: golden("nftables")}},
			damage: []step{{argv: strings.Fields("nft delete element ip svcproxy service-ips { 10.96.0.20 . tcp . 80 }")}},
			want:   []string{"--- kernel: table ip svcproxy", "+++ svcproxy: table ip svcproxy", "map service-ips {", "+\t\t\t10.96.0.20 . tcp . 80 : goto cluster-ip,"},
		},
		{
			name:   "nft rule",
			mode:   "nftables",
			setup:  []step{{argv: []string{"nft", "-f", "-"}, load: golden("nftables")}},
			damage: []step{{argv: strings.Fields("nft flush chain ip6 svcproxy masquerading")}},
			want:   []string{"--- kernel: table ip6 svcproxy", "chain masquerading {", "+\t\tmasquerade fully-random"},
		},
		{
			name:   "nft affinity state",
			mode:   "nftables",
			setup:  []step{{argv: []string{"nft", "-f", "-"}, load: golden("nftables")}},
			damage: []step{{argv: strings.Fields("nft add element ip svcproxy affinity-tcp-600 { 192.0.2.1 . 10.96.0.40 . 80 . 10.244.1.9 . 8080 }")}},
			equal:  true,
		},
		{
			name:   "iptables rule",
			mode:   "iptables",
			setup:  []step{{argv: []string{"iptables-restore"}, load: v4}, {argv: []string{"ip6tables-restore"}, load: v6}},
			damage: []step{{argv: []string{"iptables", "-t", "nat", "-D", "KUBE-SERVICES", "-d", "10.96.0.20/32", "-p", "tcp", "-m", "comment", "--comment", "shop/np:http cluster IP", "-m", "tcp", "--dport", "80", "-j", "KUBE-SVC-DCQOGJK4QZZOVIJ6"}}},
			want:   []string{"(IPv4, svcproxy's chains)", `+-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "shop/np:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-DCQOGJK4QZZOVIJ6`},
		},
		{
			name:   "iptables jump and stale chain",
			mode:   "iptables",
			setup:  []step{{argv: []string{"iptables-restore"}, load: v4}, {argv: []string{"ip6tables-restore"}, load: v6}},
			damage: []step{{argv: []string{"ip6tables", "-D", "INPUT", "1"}}, {argv: []string{"ip6tables", "-t", "nat", "-N", "KUBE-SEP-STALE"}}, {argv: []string{"iptables", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"}}},
			want:   []string{"(IPv6, svcproxy's chains)", "+-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL", "*nat", "-:KUBE-SEP-STALE - [0:0]"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags([]string{"--dry-run", "--diff", "--manifests", dir, "--hostname-override", "node-a", "--cluster-cidr", "10.244.0.0/16", "--proxy-mode", tc.mode})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var before, after strings.Builder
			var errBefore, errAfter error
			err = inScratchNetns(func() error {
				run := func(steps []step) error {
					for _, s := range steps {
						argv := s.argv
						cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
						cmd.Stdin = strings.NewReader(s.load)
						if out, err := cmd.CombinedOutput(); err != nil {
							return errors.New(strings.Join(argv, " ") + ": " + err.Error() + ": " + string(out))
						}
					}
					return nil
				}
				if err := run(tc.setup); err != nil {
					return err
				}
				errBefore = runDryRun(ctx, o, &before)
				if err := run(tc.damage); err != nil {
					return err
				}
				errAfter = runDryRun(ctx, o, &after)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if errBefore != nil || before.Len() != 0 {
				t.Fatalf("before the damage: %v, output:\n%s", errBefore, before.String())
			}
			if tc.equal {
				if errAfter != nil || after.Len() != 0 {
					t.Fatalf("after: %v, output:\n%s", errAfter, after.String())
				}
				return
			}
			if !errors.Is(errAfter, errDiffers) {
				t.Fatalf("after the damage: %v, want errDiffers; output:\n%s", errAfter, after.String())
			}
			if w, ok := missingInOrder(after.String(), tc.want); ok {
				t.Fatalf("diff lacks %q (in order):\n%s", w, after.String())
			}
		})
	}
}
