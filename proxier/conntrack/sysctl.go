package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// Conntrack tuning, as kube-proxy does it at start
// (pkg/proxy/conntrack/sysctls.go): the table size from the number of CPUs,
// the TCP and UDP timeouts, and liberal TCP tracking. Sysctls return
// the writes a configuration asks for (pure); Apply makes them under a root
// directory, so tests can point it at a scratch tree. Unlike kube-proxy,
// which refuses to start, a sysctl that cannot be written is a warning: a
// container without privilege or a kernel without nf_conntrack still
// proxies.

// Tuning is kube-proxy's conntrack configuration (its
// KubeProxyConntrackConfiguration, flags --conntrack-*), defaults applied.
type Tuning struct {
	// MaxPerCore is the table size per CPU; 0 leaves nf_conntrack_max
	// (and Min) alone.
	MaxPerCore int
	// Min is the least table size MaxPerCore may give.
	Min int
	// The timeouts; 0 leaves a sysctl as it is.
	TCPEstablishedTimeout time.Duration
	TCPCloseWaitTimeout   time.Duration
	UDPTimeout            time.Duration
	UDPStreamTimeout      time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal (false leaves it).
	TCPBeLiberal bool
}

// DefaultTuning is kube-proxy's default (pkg/proxy/apis/config/v1alpha1).
var DefaultTuning = Tuning{
	MaxPerCore:            32 * 1024,
	Min:                   128 * 1024,
	TCPEstablishedTimeout: 24 * time.Hour,
	TCPCloseWaitTimeout:   time.Hour,
}

// maxLimit caps nf_conntrack_max on machines with many CPUs, as kube-proxy.
const maxLimit = 1 << 20

// The files Sysctls writes, relative to the root Apply is given.
const (
	netfilterDir = "proc/sys/net/netfilter/"
	MaxPath      = netfilterDir + "nf_conntrack_max"
	HashSizePath = "sys/module/nf_conntrack/parameters/hashsize"
)

// Write is one value to put in a file under the root.
type Write struct {
	Path  string
	Value int
	// RaiseOnly marks the hash size: written only when it is below Value,
	// and only after the write before it (nf_conntrack_max) took effect in
	// a file this namespace may write. The hash size is one for the whole
	// host; nf_conntrack_max is read-only outside the host's network
	// namespace, so a proxy in another namespace never resizes the host's
	// table.
	RaiseOnly bool
}

// Sysctls are the writes t asks for on a machine with numCPU CPUs, in
// kube-proxy's order: nf_conntrack_max = MaxPerCore × numCPU (at most
// 2^20) or Min if that is more, with the hash size raised to a quarter of
// it; then the timeouts in whole seconds, and tcp_be_liberal.
func Sysctls(t Tuning, numCPU int) []Write {
	var out []Write
	if t.MaxPerCore > 0 {
		max := t.MaxPerCore * numCPU
		switch {
		case max > maxLimit:
			max = maxLimit
		case max <= t.Min:
			max = t.Min
		}
		out = append(out, Write{Path: MaxPath, Value: max}, Write{Path: HashSizePath, Value: max / 4, RaiseOnly: true})
	}
	secs := func(d time.Duration) int { return int(d / time.Second) }
	for _, s := range []struct {
		name  string
		on    bool
		value int
	}{
		{"nf_conntrack_tcp_timeout_established", t.TCPEstablishedTimeout > 0, secs(t.TCPEstablishedTimeout)},
		{"nf_conntrack_tcp_timeout_close_wait", t.TCPCloseWaitTimeout > 0, secs(t.TCPCloseWaitTimeout)},
		{"nf_conntrack_tcp_be_liberal", t.TCPBeLiberal, 1},
		{"nf_conntrack_udp_timeout", t.UDPTimeout > 0, secs(t.UDPTimeout)},
		{"nf_conntrack_udp_timeout_stream", t.UDPStreamTimeout > 0, secs(t.UDPStreamTimeout)},
	} {
		if s.on {
			out = append(out, Write{Path: netfilterDir + s.name, Value: s.value})
		}
	}
	return out
}

// Outcome is what Apply did with one Write.
type Outcome int

const (
	Set       Outcome = iota // written
	Unchanged                // already held the value (or, for the hash size, more)
	Skipped                  // a hash size whose nf_conntrack_max did not take effect here
	Failed                   // missing, read-only or refused; Err says which
)

// Result is the outcome of one Write; Old is the value found (-1 if none).
type Result struct {
	Write
	Outcome Outcome
	Old     int
	Err     error
	// writable: the file may be written in this namespace.
	writable bool
}

// Apply makes ws under root ("/" on a node), logging each change and
// warning about each write that fails; it never stops at one.
func Apply(root string, ws []Write) []Result {
	out := make([]Result, 0, len(ws))
	for i, w := range ws {
		var r Result
		if w.RaiseOnly && (i == 0 || !out[i-1].tookEffect()) {
			r = Result{Write: w, Outcome: Skipped, Old: -1}
			klog.V(2).InfoS("Leaving the conntrack hash size: nf_conntrack_max is not set in this network namespace", "file", "/"+w.Path)
		} else {
			r = apply(root, w)
		}
		switch r.Outcome {
		case Set:
			klog.InfoS("Set conntrack sysctl", "file", "/"+w.Path, "value", w.Value, "was", r.Old)
		case Failed:
			klog.Warningf("Cannot set /%s to %d, leaving it: %v", w.Path, w.Value, r.Err)
		}
		out = append(out, r)
	}
	return out
}

func (r Result) tookEffect() bool {
	return r.writable && (r.Outcome == Set || r.Outcome == Unchanged)
}

func apply(root string, w Write) Result {
	path := filepath.Join(root, w.Path)
	r := Result{Write: w, Old: -1}
	st, err := os.Stat(path)
	if err == nil {
		r.Old, err = readInt(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		r.Outcome, r.Err = Failed, errors.New("no such sysctl (is nf_conntrack loaded?)")
		return r
	}
	if err != nil {
		r.Outcome, r.Err = Failed, err
		return r
	}
	// The kernel marks a sysctl it keeps for the host's namespace 0444 in
	// the others; root could still write a regular file of that mode.
	r.writable = st.Mode().Perm()&0o222 != 0
	switch {
	case r.Old == w.Value || (w.RaiseOnly && r.Old >= w.Value):
		r.Outcome = Unchanged
	case !r.writable:
		r.Outcome, r.Err = Failed, errors.New("read-only in this network namespace")
	default:
		if err := os.WriteFile(path, []byte(strconv.Itoa(w.Value)), 0o644); err != nil {
			r.Outcome, r.Err, r.writable = Failed, err, false
			return r
		}
		r.Outcome = Set
	}
	return r
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: not a number: %w", path, err)
	}
	return n, nil
}

// NumCPU is the number of online CPUs under root
// (sys/devices/system/cpu/online, as kube-proxy counts from sysfs rather
// than the CPUs this process may run on), or runtime.NumCPU when that
// cannot be read.
func NumCPU(root string) int {
	b, err := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/online"))
	if err != nil {
		return runtime.NumCPU()
	}
	n, ok := countCPUs(strings.TrimSpace(string(b)))
	if !ok || n < 1 {
		return runtime.NumCPU()
	}
	return n
}

// countCPUs counts a kernel CPU list such as "0-3,8,10-11".
func countCPUs(list string) (int, bool) {
	n := 0
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0, false
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, false
			}
		}
		n += b - a + 1
	}
	return n, true
}
