package nftables

import (
	"context"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"
)

// TestServiceCIDRDropAfterClusterIPReject: a known ClusterIP on an unknown port is
// rejected, and any other address inside a service CIDR is dropped — in that order.
func TestServiceCIDRDropAfterClusterIPReject(t *testing.T) {
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(testConfig(), nft, []string{"10.96.0.0/16"})
	if err := p.Sync(context.Background(), testState()); err != nil {
		t.Fatal(err)
	}
	dump := nft.Dump()
	reject := "ip daddr @" + sClusterIPs + " reject"
	drop := "ip daddr { 10.96.0.0/16 } drop"
	ri, di := strings.Index(dump, reject), strings.Index(dump, drop)
	if ri < 0 || di < 0 || ri > di {
		t.Fatalf("want %q before %q in %s; got positions %d, %d", reject, drop, chClusterIPsCheck, ri, di)
	}
	if !strings.Contains(dump, "add element ip svcproxy "+sClusterIPs+" { 10.96.0.1 }") {
		t.Errorf("cluster IP 10.96.0.1 not in %s:\n%s", sClusterIPs, dump)
	}
	// Without a service CIDR there is no drop rule.
	nft2 := knftables.NewFake(knftables.IPv4Family, TableName)
	if err := New(testConfig(), nft2, nil).Sync(context.Background(), testState()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(nft2.Dump(), "} drop") && strings.Contains(nft2.Dump(), "10.96.0.0/16") {
		t.Errorf("drop rule present without service CIDRs")
	}
}
