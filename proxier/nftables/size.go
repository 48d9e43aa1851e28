package nftables

import (
	"math/bits"
)

// The sets and maps that hold many elements are declared with a size: a
// set with one gets nf_tables' fixed-size hash, which takes elements in
// about half the time of the resizable hash a set without one gets
// (BenchmarkKernelSetSize), and taking elements is most of a full sync at
// scale. A size is also a limit the kernel enforces, so a size leaves room
// for sizeRoom times the elements, sizes only grow while a table lives,
// and a partial sync that would overflow one becomes a full sync that
// declares more. The kernel allocates the hash's buckets for the size it
// is created with (8 bytes each, a power of two at or above 4/3 of the
// size: 4 MB for the size 262,144 that 100,000 endpoints get); a size
// grown later is a limit only, and the hash stays fast while it holds up
// to about one element per bucket.

const (
	// sizedFrom is how many elements a set holds before it is sized.
	sizedFrom = 8192
	// sizeRoom is how many times its elements a new size holds.
	sizeRoom = 2
)

// sizeFor is the size for n elements: the power of two at or above
// sizeRoom × n.
func sizeFor(n int) uint64 { return 1 << bits.Len(uint(sizeRoom*n-1)) }

// setSizes sizes the netlink-written sets of x and fixed: a set that last
// sized keeps its size while its elements fit; one that holds sizedFrom
// elements or more, or outgrew its size, gets sizeFor its count.
func setSizes(x *index, fixed []elem, last map[string]uint64) map[string]uint64 {
	count := map[string]int{}
	for s, m := range x.sets {
		count[s] = len(m)
	}
	for _, e := range fixed {
		count[e.set]++
	}
	out := map[string]uint64{}
	for s, n := range count {
		switch l, ok := last[s]; {
		case !netlinkWrites(s):
		case ok && uint64(n) <= l:
			out[s] = l
		case ok || n >= sizedFrom:
			out[s] = sizeFor(n)
		}
	}
	for s, l := range last {
		if _, ok := out[s]; !ok {
			// Emptied: the kernel's set keeps its size.
			out[s] = l
		}
	}
	return out
}

// overflows reports whether ops, applied to x, leave a sized set with more
// elements than its size.
func overflows(x *index, ops []elemOp, sizes map[string]uint64) bool {
	net := map[string]int{}
	for _, op := range ops {
		if _, ok := sizes[op.e.set]; !ok {
			continue
		}
		if op.add {
			net[op.e.set]++
		} else {
			net[op.e.set]--
		}
	}
	for s, n := range net {
		if uint64(len(x.sets[s])+n) > sizes[s] {
			return true
		}
	}
	return false
}

// sized declares sizes on the skeleton's sets and maps.
func (sk *skeleton) sized(sizes map[string]uint64) {
	for _, s := range sk.sets {
		if n, ok := sizes[s.Name]; ok {
			s.Size = ptr(n)
		}
	}
	for _, m := range sk.maps {
		if n, ok := sizes[m.Name]; ok {
			m.Size = ptr(n)
		}
	}
}
