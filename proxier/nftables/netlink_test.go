package nftables

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl/nfnltest"
)

// msgSummary is what TestElemMessages compares of one element message.
type msgSummary struct {
	typ   uint16
	set   string
	elems int
}

// decodeElemMsg decodes m, which must be of svcproxy's IPv4 table.
func decodeElemMsg(t *testing.T, m netlink.Message) nfnltest.Msg {
	t.Helper()
	d := nfnltest.Decode(t, m)
	if d.Table != TableName || d.Family != unix.NFPROTO_IPV4 {
		t.Errorf("message of family %d table %q", d.Family, d.Table)
	}
	return d
}

// TestElemMessages: element ops are packed into one message per run of the
// same set and direction, split before an attribute would overflow, in order.
func TestElemMessages(t *testing.T) {
	ep := func(i int) elem {
		return elem{set: poolIP.endpointsMap("tcp"), key: tupleOf(addrAtom(netip.MustParseAddr("10.96.0.1")), portAtom(80), indexAtom(i)),
			value: [maxValue]atom{addrAtom(netip.MustParseAddr("10.1.0.1")), portAtom(8080)}}
	}
	svc := elem{set: mServiceIPs, key: tupleOf(addrAtom(netip.MustParseAddr("10.96.0.1")), protoAtom(proxier.TCP), portAtom(80)), verdict: gotoChain("lb-x")}
	var ops []elemOp
	for i := 0; i < 3000; i++ {
		ops = append(ops, elemOp{add: true, e: ep(i)})
	}
	ops = append(ops, elemOp{e: svc}, elemOp{add: true, e: svc}, elemOp{e: ep(0)})
	b, err := newElemWriter(proxier.IPv4, nil).encode(opsOf(ops))
	if err != nil {
		t.Fatal(err)
	}
	msgs := b.Messages()
	var got []msgSummary
	total := 0
	for _, m := range msgs {
		d := decodeElemMsg(t, m)
		got = append(got, msgSummary{d.Type, d.Set, len(d.Elems)})
		if d.Set == poolIP.endpointsMap("tcp") && d.Type == unix.NFT_MSG_NEWSETELEM {
			total += len(d.Elems)
		}
	}
	if total != 3000 || len(got) < 5 {
		t.Fatalf("3000 endpoint adds in %d messages (%d elements): %+v", len(got), total, got)
	}
	tail := got[len(got)-3:]
	want := []msgSummary{{unix.NFT_MSG_DELSETELEM, mServiceIPs, 1}, {unix.NFT_MSG_NEWSETELEM, mServiceIPs, 1}, {unix.NFT_MSG_DELSETELEM, poolIP.endpointsMap("tcp"), 1}}
	for i := range want {
		if tail[i] != want[i] {
			t.Errorf("message %d: %+v, want %+v", len(got)-3+i, tail[i], want[i])
		}
	}
}

// TestAppendElemVerdict: a goto verdict is encoded as nf_tables wants it.
func TestAppendElemVerdict(t *testing.T) {
	b, err := newElemWriter(proxier.IPv4, nil).encode(opsOf([]elemOp{{add: true, e: elem{set: mServiceIPs,
		key: tupleOf(addrAtom(netip.MustParseAddr("10.0.0.1")), protoAtom(proxier.UDP), portAtom(53)), verdict: gotoChain("lb-y")}}}))
	if err != nil {
		t.Fatal(err)
	}
	msgs := b.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	d := decodeElemMsg(t, msgs[0])
	if len(d.Elems) != 1 {
		t.Fatalf("%d elements, want 1", len(d.Elems))
	}
	want := nfnltest.Elem{Key: []byte{10, 0, 0, 1, unix.IPPROTO_UDP, 0, 0, 0, 0, 53, 0, 0}, Verdict: true, Code: 0xfffffffc, Chain: "lb-y"}
	if diff := cmp.Diff(want, d.Elems[0]); diff != "" {
		t.Errorf("element (-want +got):\n%s", diff)
	}
}
