package conntrack

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSysctls(t *testing.T) {
	const (
		est     = netfilterDir + "nf_conntrack_tcp_timeout_established"
		cw      = netfilterDir + "nf_conntrack_tcp_timeout_close_wait"
		liberal = netfilterDir + "nf_conntrack_tcp_be_liberal"
		udp     = netfilterDir + "nf_conntrack_udp_timeout"
		stream  = netfilterDir + "nf_conntrack_udp_timeout_stream"
	)
	max := func(n int) []Write {
		return []Write{{Path: MaxPath, Value: n}, {Path: HashSizePath, Value: n / 4, RaiseOnly: true}}
	}
	defaultTimeouts := []Write{{Path: est, Value: 86400}, {Path: cw, Value: 3600}}
	for _, tc := range []struct {
		name   string
		t      Tuning
		numCPU int
		want   []Write
	}{
		{"defaults, 2 CPUs: the minimum wins", DefaultTuning, 2, append(max(131072), defaultTimeouts...)},
		{"defaults, 4 CPUs: per-core equals the minimum", DefaultTuning, 4, append(max(131072), defaultTimeouts...)},
		{"defaults, 8 CPUs: per-core wins", DefaultTuning, 8, append(max(262144), defaultTimeouts...)},
		{"per-core capped at 2^20", Tuning{MaxPerCore: 32768, Min: 131072}, 64, max(1 << 20)},
		{"the cap wins over a bigger minimum", Tuning{MaxPerCore: 1 << 20, Min: 1 << 22}, 2, max(1 << 20)},
		{"maxPerCore 0 leaves the table and ignores min", Tuning{Min: 131072, TCPEstablishedTimeout: time.Hour}, 8, []Write{{Path: est, Value: 3600}}},
		{"min 0", Tuning{MaxPerCore: 1000}, 3, max(3000)},
		{"zero timeouts leave the sysctls", Tuning{}, 2, nil},
		{"every setting", Tuning{MaxPerCore: 65536, Min: 1, TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 90 * time.Second,
			TCPBeLiberal: true, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute}, 2,
			append(max(131072), Write{Path: est, Value: 7200}, Write{Path: cw, Value: 90}, Write{Path: liberal, Value: 1},
				Write{Path: udp, Value: 30}, Write{Path: stream, Value: 120})},
		{"timeouts in whole seconds, truncated", Tuning{TCPCloseWaitTimeout: 1500 * time.Millisecond, UDPTimeout: 999 * time.Millisecond}, 1,
			[]Write{{Path: cw, Value: 1}, {Path: udp, Value: 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Sysctls(tc.t, tc.numCPU); !slices.Equal(got, tc.want) {
				t.Errorf("Sysctls(%+v, %d) =\n  %v\nwant\n  %v", tc.t, tc.numCPU, got, tc.want)
			}
		})
	}
}

// TestApply runs Apply against a scratch tree laid out as /proc/sys and
// /sys, including a namespace's read-only nf_conntrack_max and a kernel
// without the module.
func TestApply(t *testing.T) {
	// sysctl is one file of the scratch tree, for the write of ws at its
	// index: its content before (empty: no such file) and mode, the
	// outcome of the write, and the content after (empty: as before).
	type sysctl struct {
		before string
		mode   os.FileMode
		want   Outcome
		after  string
	}
	ws := Sysctls(Tuning{MaxPerCore: 65536, Min: 131072, TCPCloseWaitTimeout: time.Hour, UDPTimeout: 10 * time.Second}, 2)
	paths := []string{MaxPath, HashSizePath, netfilterDir + "nf_conntrack_tcp_timeout_close_wait", netfilterDir + "nf_conntrack_udp_timeout"}
	for i, w := range ws {
		if i >= len(paths) || w.Path != paths[i] {
			t.Fatalf("write %d is of %s; the cases are laid out for %v", i, w.Path, paths)
		}
	}
	for _, tc := range []struct {
		name    string
		sysctls [4]sysctl // in the order of paths
	}{
		{"host namespace: all written, hash size raised", [4]sysctl{
			{"262144\n", 0o644, Set, "131072"}, {"16384\n", 0o600, Set, "32768"}, {"60\n", 0o644, Set, "3600"}, {"30\n", 0o644, Set, "10"}}},
		{"hash size already large enough is not lowered", [4]sysctl{
			{"65536\n", 0o644, Set, "131072"}, {"65536\n", 0o600, Unchanged, ""}, {"3600\n", 0o644, Unchanged, ""}, {"10\n", 0o644, Unchanged, ""}}},
		{"another network namespace: nf_conntrack_max read-only, hash size untouched", [4]sysctl{
			{"262144\n", 0o444, Failed, ""}, {"16384\n", 0o600, Skipped, ""}, {"60\n", 0o644, Set, "3600"}, {"30\n", 0o644, Set, "10"}}},
		{"read-only nf_conntrack_max already right: hash size still untouched", [4]sysctl{
			{"131072\n", 0o444, Unchanged, ""}, {"16384\n", 0o600, Skipped, ""}, {"3600\n", 0o644, Unchanged, ""}, {"10\n", 0o644, Unchanged, ""}}},
		{"read-only sysctls everywhere", [4]sysctl{
			{"262144\n", 0o444, Failed, ""}, {"16384\n", 0o400, Skipped, ""}, {"60\n", 0o444, Failed, ""}, {"30\n", 0o444, Failed, ""}}},
		{"no nf_conntrack module", [4]sysctl{{want: Failed}, {want: Skipped}, {want: Failed}, {want: Failed}}},
		{"garbage in a file", [4]sysctl{
			{"lots\n", 0o644, Failed, ""}, {"16384\n", 0o600, Skipped, ""}, {"60\n", 0o644, Set, "3600"}, {"30\n", 0o644, Set, "10"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for i, f := range tc.sysctls {
				if f.before == "" {
					continue
				}
				path := filepath.Join(root, paths[i])
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(f.before), f.mode); err != nil {
					t.Fatal(err)
				}
			}
			rs := Apply(root, ws)
			if len(rs) != len(ws) {
				t.Fatalf("%d results for %d writes", len(rs), len(ws))
			}
			for i, r := range rs {
				want := tc.sysctls[i].want
				if r.Write != ws[i] || r.Outcome != want {
					t.Errorf("write %d (%s=%d): outcome %d (err %v), want %d", i, ws[i].Path, ws[i].Value, r.Outcome, r.Err, want)
				}
				if (r.Outcome == Failed) != (r.Err != nil) {
					t.Errorf("write %d: outcome %d with err %v", i, r.Outcome, r.Err)
				}
			}
			for i, f := range tc.sysctls {
				want := f.after
				if want == "" {
					want = f.before
				}
				b, err := os.ReadFile(filepath.Join(root, paths[i]))
				if want == "" {
					if !os.IsNotExist(err) {
						t.Errorf("%s = %q (%v), want no such file", paths[i], b, err)
					}
				} else if err != nil || string(b) != want {
					t.Errorf("%s = %q (%v), want %q", paths[i], b, err, want)
				}
			}
		})
	}
}

func TestApplyErrors(t *testing.T) {
	root := t.TempDir()
	rs := Apply(root, []Write{{Path: MaxPath, Value: 1}})
	if rs[0].Outcome != Failed || !strings.Contains(rs[0].Err.Error(), "nf_conntrack") {
		t.Errorf("missing sysctl: %+v", rs[0])
	}
	// A hash size first in the list has no nf_conntrack_max before it.
	if rs := Apply(root, []Write{{Path: HashSizePath, Value: 1, RaiseOnly: true}}); rs[0].Outcome != Skipped {
		t.Errorf("lone hash size: %+v", rs[0])
	}
}

func TestNumCPU(t *testing.T) {
	for _, tc := range []struct {
		online string
		want   int
	}{
		{"0-1\n", 2}, {"0\n", 1}, {"0-3,8,10-11\n", 7}, {"0-63", 64},
	} {
		root := t.TempDir()
		p := filepath.Join(root, "sys/devices/system/cpu/online")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(tc.online), 0o444); err != nil {
			t.Fatal(err)
		}
		if got := NumCPU(root); got != tc.want {
			t.Errorf("online %q: NumCPU = %d, want %d", tc.online, got, tc.want)
		}
	}
	for _, bad := range []string{"", "x", "3-1", "0-"} {
		if n, ok := countCPUs(bad); ok {
			t.Errorf("countCPUs(%q) = %d, ok", bad, n)
		}
	}
	if got, want := NumCPU(t.TempDir()), NumCPU("/nonexistent"); got != want || got < 1 {
		t.Errorf("fallback NumCPU = %d, %d", got, want)
	}
}
