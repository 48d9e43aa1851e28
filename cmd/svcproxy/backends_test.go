package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptables"
)

// TestDryRun: each family's rules, in the mode's own input format; in
// iptables mode under a comment naming the restore command.
func TestDryRun(t *testing.T) {
	cfgs := []familyConfig{{Config: proxier.Config{Family: proxier.IPv4, MasqueradeBit: 14}},
		{Config: proxier.Config{Family: proxier.IPv6, MasqueradeBit: 14}}}
	states := map[proxier.IPFamily]*proxier.State{proxier.IPv4: {Family: proxier.IPv4}, proxier.IPv6: {Family: proxier.IPv6}}
	for _, tc := range []struct {
		mode string
		want []string // in this order
	}{
		{"iptables", []string{"# IPv4: iptables-restore input\n*filter", "*nat", "# IPv6: ip6tables-restore input\n*filter", "*nat"}},
		{"nftables", []string{"table ip svcproxy", "table ip6 svcproxy"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			var b bytes.Buffer
			if err := dryRun(&b, tc.mode, cfgs, states, iptables.Options{}); err != nil {
				t.Fatal(err)
			}
			if w, ok := missingInOrder(b.String(), tc.want); ok {
				t.Fatalf("output lacks %q (in order):\n%s", w, b.String())
			}
		})
	}
}

// missingInOrder returns the first of want that text lacks after the ones
// before it, and true; or false when text holds them all in that order.
func missingInOrder(text string, want []string) (string, bool) {
	for _, w := range want {
		i := strings.Index(text, w)
		if i < 0 {
			return w, true
		}
		text = text[i+len(w):]
	}
	return "", false
}

func TestMissingInOrder(t *testing.T) {
	for _, tc := range []struct {
		text, missing string
		want          []string
	}{
		{"abc", "", []string{"a", "c"}},
		{"abc", "", nil},
		{"abc", "a", []string{"c", "a"}},
		{"abcb", "", []string{"b", "c", "b"}},
		{"abc", "d", []string{"a", "d", "c"}},
		{"aa", "a", []string{"aa", "a"}},
	} {
		if got, ok := missingInOrder(tc.text, tc.want); got != tc.missing || ok != (tc.missing != "") {
			t.Errorf("missingInOrder(%q, %q) = %q, %v; want %q", tc.text, tc.want, got, ok, tc.missing)
		}
	}
}
