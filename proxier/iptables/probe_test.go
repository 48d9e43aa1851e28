package iptables

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestProbeOurs(t *testing.T) {
	p := &nftProbe{}
	for _, tc := range []struct {
		before, after string
		commits       int
		want          bool
	}{
		{"10", "11", 1, true},
		{"10", "12", 1, false}, // someone else committed too
		{"10", "10", 1, false},
		{"10", "10", 0, true},
		{"4294967295", "0", 1, true}, // the generation wraps
		{"", "11", 1, false},
		{"10", "x", 1, false},
	} {
		if got := p.ours(tc.before, tc.after, tc.commits); got != tc.want {
			t.Errorf("ours(%q, %q, %d) = %v, want %v", tc.before, tc.after, tc.commits, got, tc.want)
		}
	}
}

// restoreNft loads rules into namespace ns with bin (iptables-nft-restore
// or ip6tables-nft-restore), leaving the other tables alone.
func restoreNft(t *testing.T, ns, bin, rules string) {
	t.Helper()
	if _, err := exec.LookPath(bin); err != nil {
		t.Skip(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, bin, "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", bin, err, out)
	}
}

// TestKernelProbeNft: the iptables-nft probe's stamp moves by one per
// commit, and its reads count the rules of each chain of one table of
// one family; a chain or table that is not there is told apart from an
// empty one.
func TestKernelProbeNft(t *testing.T) {
	ns := kernelNetns(t)
	p := newProbe(Binaries{Mode: "nft", Command: "iptables-nft"}, ns, nil)
	if _, ok := p.(*nftProbe); !ok {
		t.Fatalf("probe %T for iptables-nft", p)
	}
	before, err := p.stamp()
	if err != nil {
		t.Fatal(err)
	}
	restoreNft(t, ns, "iptables-nft-restore", `*nat
:PREROUTING ACCEPT [0:0]
:KUBE-A - [0:0]
:KUBE-EMPTY - [0:0]
-A PREROUTING -j KUBE-A
-A KUBE-A -p tcp -j RETURN
-A KUBE-A -p udp -j RETURN
-A KUBE-A -j KUBE-EMPTY
COMMIT
`)
	after, err := p.stamp()
	if err != nil {
		t.Fatal(err)
	}
	if !p.ours(before, after, 1) {
		t.Errorf("stamp %s → %s, want one commit", before, after)
	}
	restoreNft(t, ns, "ip6tables-nft-restore", "*nat\n:KUBE-SIX - [0:0]\n-A KUBE-SIX -j RETURN\nCOMMIT\n")

	for _, tc := range []struct {
		name  string
		table string
		only  []string
		ok    bool
		want  tableRead
	}{
		{"every chain", NAT, nil, true, tableRead{
			counts:   map[string]int{"PREROUTING": 1, "KUBE-A": 3, "KUBE-EMPTY": 0},
			complete: true,
		}},
		{"named chains", NAT, []string{"KUBE-A", "KUBE-EMPTY", "KUBE-GONE", "KUBE-SIX"}, true, tableRead{
			counts: map[string]int{"KUBE-A": 3, "KUBE-EMPTY": 0},
		}},
		{"a table that is not there", Filter, nil, false, tableRead{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := p.read(tc.table, tc.only)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.ok {
				t.Errorf("ok = %v, want %v", ok, tc.ok)
			}
			if d := cmp.Diff(tc.want, got, cmp.AllowUnexported(tableRead{})); d != "" {
				t.Errorf("read (-want +got):\n%s", d)
			}
		})
	}
}
