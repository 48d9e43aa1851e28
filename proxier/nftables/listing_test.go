package nftables

import (
	"strings"
	"testing"
)

// TestNormalizeListing: two listings of the same table made in different
// orders, with different counters and affinity state, normalize to the
// same text; the text keeps rule order and every static element.
func TestNormalizeListing(t *testing.T) {
	a := `table ip svcproxy {
	comment "rules for svcproxy"
	set hairpin {
		type ipv4_addr . ipv4_addr
		size 32768
		elements = { 10.0.0.2 . 10.0.0.2,
			     10.0.0.1 . 10.0.0.1 }
	}
	set affinity-tcp-600 {
		type ipv4_addr . ipv4_addr . inet_service . ipv4_addr . inet_service
		size 65535
		flags dynamic,timeout
		timeout 10m
		elements = { 192.0.2.1 . 10.96.0.40 . 80 . 10.0.0.1 . 8080 timeout 10m expires 9m58s }
	}
	map affinity-dests-tcp-600 {
		type ipv4_addr . inet_service : verdict
		elements = { 10.96.0.40 . 80 : goto affinity-rec-1 }
	}
	chain b {
		counter packets 12 bytes 960 jump a
		update @affinity-tcp-600 { ip saddr . 10.96.0.40 . 80 . ip daddr . th dport }
	}
	chain a {
		ip daddr 10.0.0.1 drop
		ip daddr 10.0.0.2 accept
	}
}
`
	b := `table ip svcproxy {
	comment "rules for svcproxy"
	chain a {
		ip daddr 10.0.0.1 drop
		ip daddr 10.0.0.2 accept
	}
	map affinity-dests-tcp-600 {
		type ipv4_addr . inet_service : verdict
		elements = { 10.96.0.40 . 80 : goto affinity-rec-1 }
	}
	set hairpin {
		type ipv4_addr . ipv4_addr
		elements = { 10.0.0.1 . 10.0.0.1, 10.0.0.2 . 10.0.0.2 }
	}
	set affinity-tcp-600 {
		type ipv4_addr . ipv4_addr . inet_service . ipv4_addr . inet_service
		size 65535
		flags dynamic,timeout
		timeout 10m
	}
	chain b {
		counter packets 0 bytes 0 jump a
		update @affinity-tcp-600 { ip saddr . 10.96.0.40 . 80 . ip daddr . th dport }
	}
}
`
	na, nb := NormalizeListing(a), NormalizeListing(b)
	if na != nb {
		t.Fatalf("differ:\n%s\n---\n%s", na, nb)
	}
	mustContain(t, "normalized listing", na,
		"\tchain a {\n\t\tip daddr 10.0.0.1 drop\n\t\tip daddr 10.0.0.2 accept\n\t}\n\tchain b {",
		"\t\telements = {\n\t\t\t10.0.0.1 . 10.0.0.1,\n\t\t\t10.0.0.2 . 10.0.0.2,\n\t\t}",
		"\t\t\t10.96.0.40 . 80 : goto affinity-rec-1,",
		"counter packets 0 bytes 0 jump a")
	if strings.Contains(na, "192.0.2.1") {
		t.Errorf("normalized listing keeps an affinity set's element")
	}
	if strings.Contains(na, "size ") {
		t.Errorf("normalized listing keeps a set's size")
	}
	if t.Failed() {
		t.Logf("normalized listing:\n%s", na)
	}
	// A rule in another order is a difference.
	c := strings.Replace(b, "\t\tip daddr 10.0.0.1 drop\n\t\tip daddr 10.0.0.2 accept", "\t\tip daddr 10.0.0.2 accept\n\t\tip daddr 10.0.0.1 drop", 1)
	if NormalizeListing(c) == nb {
		t.Error("rule order is lost")
	}
}
