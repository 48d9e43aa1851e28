package iptables

import "testing"

func TestPickBackend(t *testing.T) {
	hint := "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	rules := "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j X\n-A PREROUTING -j Y\nCOMMIT\n"
	for _, tc := range []struct {
		name, nft, legacy, want string
	}{
		{"nothing anywhere: nft", "", "", "nft"},
		{"hint in legacy wins over rules in nft", rules, hint, "legacy"},
		{"hint in nft", hint, rules, "nft"},
		{"kubelet canary", "", "*nat\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n", "legacy"},
		{"more legacy rules", "", rules, "legacy"},
		{"tie: nft", rules, rules, "nft"},
	} {
		if got := pickBackend(tc.nft, tc.legacy); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}
