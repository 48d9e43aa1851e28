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
			out := b.String()
			for _, w := range tc.want {
				i := strings.Index(out, w)
				if i < 0 {
					t.Fatalf("output lacks %q (in order):\n%s", w, b.String())
				}
				out = out[i+len(w):]
			}
		})
	}
}
