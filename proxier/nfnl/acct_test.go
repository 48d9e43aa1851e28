package nfnl

import (
	"context"
	"encoding/binary"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// acctAttrs encodes an nfacct object message's attributes as the kernel
// sends them: name, then the two counters (zero-length b: left out).
func acctAttrs(t *testing.T, name string, pkts, bytes []byte) []byte {
	t.Helper()
	attrs := []netlink.Attribute{}
	if name != "" {
		attrs = append(attrs, nameAttr(acctName, name))
	}
	if pkts != nil {
		attrs = append(attrs, netlink.Attribute{Type: acctPackets, Data: pkts})
	}
	if bytes != nil {
		attrs = append(attrs, netlink.Attribute{Type: acctBytes, Data: bytes})
	}
	// The kernel's use count and flags come after, and are ignored.
	attrs = append(attrs, netlink.Attribute{Type: 4, Data: []byte{0, 0, 0, 1}})
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func TestParseAcct(t *testing.T) {
	for _, tc := range []struct {
		name    string
		attrs   []byte
		want    Acct
		wantErr string
	}{
		{"counters", acctAttrs(t, "ct_state_invalid_dropped_pkts", be64(7), be64(420)),
			Acct{Name: "ct_state_invalid_dropped_pkts", Packets: 7, Bytes: 420}, ""},
		{"big counts", acctAttrs(t, "x", be64(1<<40+3), be64(1<<50)), Acct{Name: "x", Packets: 1<<40 + 3, Bytes: 1 << 50}, ""},
		{"no name", acctAttrs(t, "", be64(1), be64(1)), Acct{}, "without a name"},
		{"no packets", acctAttrs(t, "x", nil, be64(1)), Acct{Name: "x"}, "counter 2"},
		{"short bytes", acctAttrs(t, "x", be64(1), []byte{0, 1}), Acct{Name: "x", Packets: 1}, "counter 3"},
	} {
		got, err := parseAcct(tc.attrs)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.wantErr)
		}
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestAcctMessage: a request is of subsystem NFNL_SUBSYS_ACCT, carries an
// nfgenmsg and the object's NUL-terminated name (a dump none), and names
// are checked.
func TestAcctMessage(t *testing.T) {
	m, err := acctMessage(acctMsgGet, netlink.Request, "localhost_nps_accepted_pkts")
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Type != netlink.HeaderType(7<<8|1) || m.Header.Flags != netlink.Request {
		t.Errorf("header type %#x flags %v, want 0x701 request", m.Header.Type, m.Header.Flags)
	}
	want := append([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, acctAttrs(t, "localhost_nps_accepted_pkts", nil, nil)...)
	want = want[:len(want)-8] // acctAttrs's trailing use count
	if d := cmp.Diff(want, m.Data); d != "" {
		t.Errorf("data (-want +got):\n%s", d)
	}
	dump, err := acctMessage(acctMsgGet, netlink.Request|netlink.Dump, "")
	if err != nil || len(dump.Data) != 4 {
		t.Errorf("dump request: data %v, %v; want the nfgenmsg alone", dump.Data, err)
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"", false}, {strings.Repeat("n", AcctNameMax), true}, {strings.Repeat("n", AcctNameMax+1), false}} {
		if err := checkAcctName(tc.name); (err == nil) != tc.ok {
			t.Errorf("name of %d bytes: %v, want ok %v", len(tc.name), err, tc.ok)
		}
	}
}

// TestKernelAcct: an nfacct object is created once and then kept with its
// counts, and counts the packets of an iptables rule that names it.
func TestKernelAcct(t *testing.T) {
	ns, fd, c := dialNSFD(t)
	ctx := context.Background()
	const name = "svcproxy_test_pkts"
	if _, err := c.Acct(ctx, name); !IsNotFound(err) {
		t.Fatalf("before EnsureAcct: %v, want not found", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.EnsureAcct(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if a, err := c.Acct(ctx, name); err != nil || a != (Acct{Name: name}) {
		t.Fatalf("new object: %+v, %v", a, err)
	}
	if err := c.EnsureAcct(ctx, strings.Repeat("n", 40)); err == nil {
		t.Error("a name over the kernel's limit was accepted")
	}

	for _, argv := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "nfacct", "--nfacct-name", name},
	} {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	const n, payload = 5, 10
	sendUDP(t, fd, "127.0.0.1:9", n, payload)
	want := Acct{Name: name, Packets: n, Bytes: n * (20 + 8 + payload)}
	if a, err := c.Acct(ctx, name); err != nil || a != want {
		t.Fatalf("after %d datagrams: %+v, %v; want %+v", n, a, err, want)
	}
	// Ensuring it again (a restart) keeps the counts.
	if err := c.EnsureAcct(ctx, name); err != nil {
		t.Fatal(err)
	}
	if a, err := c.Acct(ctx, name); err != nil || a != want {
		t.Errorf("after a second EnsureAcct: %+v, %v; want %+v", a, err, want)
	}
}

// sendUDP sends n datagrams of size bytes to addr from the namespace fd.
func sendUDP(t *testing.T, fd int, addr string, n, size int) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked and ends with the goroutine, so it never
		// returns to the test's namespace.
		runtime.LockOSThread()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		// Unconnected: the ICMP errors of a closed port fail no write.
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			errc <- err
			return
		}
		defer conn.Close()
		dst, err := net.ResolveUDPAddr("udp4", addr)
		for i := 0; i < n && err == nil; i++ {
			_, err = conn.WriteTo(make([]byte, size), dst)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
