package nftables

import (
	"context"
	"slices"
	"testing"

	gnft "github.com/google/nftables"

	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestKernelCleanupFailure: a stale chain the refill cannot delete (its
// name has a space, which nft cannot parse; netlink can create it) fails
// no sync: the table is what it should be, the failure is counted, and
// the next sync is a full one that tries again. Once the chain is gone,
// the retry counts nothing more.
func TestKernelCleanupFailure(t *testing.T) {
	_, fd := enterNetns(t)
	p, nft := kernelProxier(t, fd, pt.Config(pt.NodeIPs(pt.NodeIP), pt.ServiceRange("10.96.0.0/16")))
	ctx := context.Background()
	st := testState()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	want := content(t, nft)

	conn, err := gnft.New(gnft.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	stale := &gnft.Chain{Name: "old chain", Table: &gnft.Table{Name: TableName, Family: gnft.TableFamilyIPv4}}
	conn.AddChain(stale)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	hasStale := func() bool {
		chains, err := nft.List(ctx, "chains")
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(chains, stale.Name)
	}
	if !hasStale() {
		t.Fatal("the stale chain was not created")
	}

	p.ForceFullSync()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatalf("a failed cleanup failed the sync: %v", err)
	}
	if r := p.LastResult(); !r.Full || r.CleanupFailures != 1 {
		t.Errorf("after the refill: full %v, cleanup failures %d; want a full sync and 1", r.Full, r.CleanupFailures)
	}
	if !hasStale() {
		t.Error("the stale chain is gone: the test did not make the deletion fail")
	}
	// The next sync is a full one that tries again.
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); !r.Full || r.CleanupFailures != 2 {
		t.Errorf("the sync after: full %v, cleanup failures %d; want a full sync and 2", r.Full, r.CleanupFailures)
	}

	// nft cannot list it either: gone, the table is what it should be.
	conn.DelChain(stale)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := content(t, nft); !slices.Equal(got, want) {
		t.Errorf("after the failed cleanups:\n%s", diffLines(got, want))
	}
	// With nothing stale, the retry counts nothing and syncs go partial.
	for i, wantFull := range []bool{true, false} {
		if err := p.Sync(ctx, st); err != nil {
			t.Fatal(err)
		}
		if r := p.LastResult(); r.Full != wantFull || r.CleanupFailures != 2 {
			t.Errorf("sync %d with nothing stale: full %v, cleanup failures %d; want full %v, 2", i, r.Full, r.CleanupFailures, wantFull)
		}
	}
}
