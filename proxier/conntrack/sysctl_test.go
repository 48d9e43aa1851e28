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
	type file struct {
		value string
		mode  os.FileMode
	}
	ws := Sysctls(Tuning{MaxPerCore: 65536, Min: 131072, TCPCloseWaitTimeout: time.Hour, UDPTimeout: 10 * time.Second}, 2)
	cw, udp := netfilterDir+"nf_conntrack_tcp_timeout_close_wait", netfilterDir+"nf_conntrack_udp_timeout"
	for _, tc := range []struct {
		name  string
		files map[string]file // absent: no such file
		want  []Outcome       // per write of ws
		after map[string]string
	}{
		{name: "host namespace: all written, hash size raised",
			files: map[string]file{MaxPath: {"262144\n", 0o644}, HashSizePath: {"16384\n", 0o600}, cw: {"60\n", 0o644}, udp: {"30\n", 0o644}},
			want:  []Outcome{Set, Set, Set, Set},
			after: map[string]string{MaxPath: "131072", HashSizePath: "32768", cw: "3600", udp: "10"}},
		{name: "hash size already large enough is not lowered",
			files: map[string]file{MaxPath: {"65536\n", 0o644}, HashSizePath: {"65536\n", 0o600}, cw: {"3600\n", 0o644}, udp: {"10\n", 0o644}},
			want:  []Outcome{Set, Unchanged, Unchanged, Unchanged},
			after: map[string]string{MaxPath: "131072", HashSizePath: "65536\n"}},
		{name: "another network namespace: nf_conntrack_max read-only, hash size untouched",
			files: map[string]file{MaxPath: {"262144\n", 0o444}, HashSizePath: {"16384\n", 0o600}, cw: {"60\n", 0o644}, udp: {"30\n", 0o644}},
			want:  []Outcome{Failed, Skipped, Set, Set},
			after: map[string]string{MaxPath: "262144\n", HashSizePath: "16384\n", cw: "3600", udp: "10"}},
		{name: "read-only nf_conntrack_max already right: hash size still untouched",
			files: map[string]file{MaxPath: {"131072\n", 0o444}, HashSizePath: {"16384\n", 0o600}, cw: {"3600\n", 0o644}, udp: {"10\n", 0o644}},
			want:  []Outcome{Unchanged, Skipped, Unchanged, Unchanged},
			after: map[string]string{HashSizePath: "16384\n"}},
		{name: "read-only sysctls everywhere",
			files: map[string]file{MaxPath: {"262144\n", 0o444}, HashSizePath: {"16384\n", 0o400}, cw: {"60\n", 0o444}, udp: {"30\n", 0o444}},
			want:  []Outcome{Failed, Skipped, Failed, Failed},
			after: map[string]string{MaxPath: "262144\n", HashSizePath: "16384\n", cw: "60\n", udp: "30\n"}},
		{name: "no nf_conntrack module", files: map[string]file{},
			want: []Outcome{Failed, Skipped, Failed, Failed}},
		{name: "garbage in a file",
			files: map[string]file{MaxPath: {"lots\n", 0o644}, HashSizePath: {"16384\n", 0o600}, cw: {"60\n", 0o644}, udp: {"30\n", 0o644}},
			want:  []Outcome{Failed, Skipped, Set, Set},
			after: map[string]string{MaxPath: "lots\n", HashSizePath: "16384\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, f := range tc.files {
				path := filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(f.value), f.mode); err != nil {
					t.Fatal(err)
				}
			}
			rs := Apply(root, ws)
			if len(rs) != len(ws) {
				t.Fatalf("%d results for %d writes", len(rs), len(ws))
			}
			for i, r := range rs {
				if r.Write != ws[i] || r.Outcome != tc.want[i] {
					t.Errorf("write %d (%s=%d): outcome %d (err %v), want %d", i, ws[i].Path, ws[i].Value, r.Outcome, r.Err, tc.want[i])
				}
				if (r.Outcome == Failed) != (r.Err != nil) {
					t.Errorf("write %d: outcome %d with err %v", i, r.Outcome, r.Err)
				}
			}
			for p, want := range tc.after {
				b, err := os.ReadFile(filepath.Join(root, p))
				if err != nil || string(b) != want {
					t.Errorf("%s = %q (%v), want %q", p, b, err, want)
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
