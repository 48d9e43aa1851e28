package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// The forward path (iptables mode): KUBE-FORWARD under a DROP policy and
// its conntrack-INVALID drop.

// TestForwardPolicyDrop (iptables mode): with the filter FORWARD policy at
// DROP, KUBE-FORWARD still lets Service traffic through.
func TestForwardPolicyDrop(t *testing.T) {
	c := begin(t)
	c.onlyIn("iptables", "KUBE-FORWARD is iptables mode's")
	svc := c.createService("forward-drop", v1.ServiceSpec{Type: v1.ServiceTypeNodePort})
	c.slice(svc, at(backends[0], harness.NodeName), at(backends[1], harness.NodeName))
	if out, err := env.Node.Run(c.ctx, "iptables", "-P", "FORWARD", "DROP"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { env.Node.Run(context.Background(), "iptables", "-P", "FORWARD", "ACCEPT") })
	var rs []harness.Reply
	c.eventually("NodePort through a DROP forward policy", func() string {
		rs = c.external(harness.ExtAllowedIP, nodePortTarget(svc), 10, time.Second)
		return landed(rs, backends[:2], "", "")
	})
	t.Logf("RESULT FORWARD policy DROP, external to NodePort: %s", harness.FormatTally(harness.Tally(rs)))
}

// TestForwardDropInvalid (iptables mode): KUBE-FORWARD drops forwarded
// packets conntrack marks INVALID (kube-proxy's workaround for issue 74839,
// unless nf_conntrack_tcp_be_liberal is set). A pod sends, through the
// node, to a pod on the second node: a plain SYN arrives; a SYN+FIN (an
// invalid TCP flag combination: conntrack state INVALID) does not, and the
// INVALID DROP rule counts it.
func TestForwardDropInvalid(t *testing.T) {
	c := begin(t)
	c.onlyIn("iptables", "kube-proxy's nftables mode installs no conntrack-INVALID drop (the iptables KUBE-FORWARD rule has no nftables counterpart); nothing to test")
	if v, err := env.Node.Run(c.ctx, "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"); err == nil && strings.TrimSpace(v) != "0" {
		t.Skipf("nf_conntrack_tcp_be_liberal=%s in the node namespace: kube-proxy installs no INVALID drop then", strings.TrimSpace(v))
	}
	// Some Service, so that svcproxy has synced its filter rules.
	svc := c.createService("invalid-drop", v1.ServiceSpec{})
	c.slice(svc, at(backends[0], harness.NodeName))
	c.waitDNATs(svc, "tcp", backends[0])
	rule := c.waitRule("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-j DROP")
	dst := c.remotePod("inval-dst")
	sniff, err := newTCPSniffer(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer sniff.Close()
	send, err := newRawTCPSender(client)
	if err != nil {
		t.Fatal(err)
	}
	defer send.Close()

	const n = 5
	count := func(base int) (seen int) {
		for p := base; p < base+40; p++ {
			seen += sniff.from(client.IP, uint16(p))
		}
		return seen
	}
	// One source port per segment (a fresh connection each), 10 more on
	// each attempt.
	const validBase, invalidBase = 40400, 40450
	for attempt := 1; ; attempt++ {
		before, _, ok := c.ruleCounter("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-j DROP")
		if !ok {
			t.Fatalf("no INVALID DROP rule in KUBE-FORWARD")
		}
		for i := 0; i < n; i++ {
			off := uint16(10*(attempt-1) + i)
			if err := send.send(dst.IP, validBase+off, 9, uint32(1000+i), tcpSYN); err != nil {
				t.Fatal(err)
			}
			if err := send.send(dst.IP, invalidBase+off, 9, uint32(2000+i), tcpSYN|tcpFIN); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond)
		after, _, _ := c.ruleCounter("filter", "-A KUBE-FORWARD", "--ctstate INVALID", "-j DROP")
		valid, invalid := count(validBase), count(invalidBase)
		t.Logf("attempt %d: %s: counter %d -> %d; at %s: %d of %d SYN, %d of %d SYN+FIN", attempt, rule, before, after, dst.Name, valid, attempt*n, invalid, attempt*n)
		if valid < attempt*n {
			t.Fatalf("only %d of %d plain SYNs from %s reached %s: the path itself is broken", valid, attempt*n, client.Name, dst.Name)
		}
		if invalid > 0 {
			t.Fatalf("%d conntrack-INVALID SYN+FIN segments were forwarded to %s; KUBE-FORWARD should drop them", invalid, dst.Name)
		}
		// A sync between the two reads may rewrite KUBE-FORWARD and reset
		// its counters: try again then.
		if after >= before+n {
			t.Logf("RESULT forward path %s -> %s: plain SYNs forwarded (%d), SYN+FIN (conntrack INVALID) dropped by %q (counter +%d)",
				client.Name, dst.Name, valid, rule, after-before)
			break
		}
		if attempt == 3 {
			t.Fatalf("the INVALID DROP rule's counter went %d -> %d after %d invalid segments", before, after, n)
		}
	}

	// Control: without the rule the same segments are forwarded, so the
	// check above can fail. The rule is put back at once (and svcproxy's
	// next full sync rewrites KUBE-FORWARD anyway).
	// The rule as the kernel lists it (with its nfacct match, if any).
	spec := strings.Fields(rule)[2:]
	del := append([]string{"iptables", "-t", "filter", "-D", "KUBE-FORWARD"}, spec...)
	if out, err := env.Node.Run(c.ctx, del...); err != nil {
		t.Fatalf("%v: %v: %s", del, err, out)
	}
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		if out, err := env.Node.Run(context.Background(), append([]string{"iptables", "-t", "filter", "-I", "KUBE-FORWARD", "1"}, spec...)...); err != nil {
			t.Errorf("put the INVALID rule back: %v: %s", err, out)
		}
	}
	defer restore()
	const controlBase = 40500
	for i := 0; i < n; i++ {
		if err := send.send(dst.IP, uint16(controlBase+i), 9, uint32(3000+i), tcpSYN|tcpFIN); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	restore()
	if got := count(controlBase); got < n {
		t.Fatalf("control: with the INVALID rule removed only %d of %d SYN+FIN segments reached %s: the check above proves nothing", got, n, dst.Name)
	}
	t.Logf("RESULT control: with the INVALID DROP rule removed, %d of %d SYN+FIN segments were forwarded", count(controlBase), n)
}

// Hand-made TCP segments, sent and seen from inside pods: a normal socket
// cannot send a SYN+FIN.

// rawTCPSocket is a raw IPv4 TCP socket in pod p's namespace.
func rawTCPSocket(p *harness.Pod) (int, error) {
	fd := -1
	err := p.NS.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return err
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("raw socket in %s: %w", p.Name, err)
	}
	return fd, nil
}

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// tcpSegment builds a 20-byte TCP header (no payload) with a correct
// checksum for src → dst.
func tcpSegment(src, dst net.IP, sport, dport uint16, seq uint32, flags byte) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint32(h[4:], seq)
	h[12] = 5 << 4
	h[13] = flags
	binary.BigEndian.PutUint16(h[14:], 65535)
	pseudo := make([]byte, 0, 12+len(h))
	pseudo = append(pseudo, src.To4()...)
	pseudo = append(pseudo, dst.To4()...)
	pseudo = append(pseudo, 0, unix.IPPROTO_TCP, 0, byte(len(h)))
	pseudo = append(pseudo, h...)
	var sum uint32
	for i := 0; i+1 < len(pseudo); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pseudo[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(h[16:], ^uint16(sum))
	return h
}

// rawTCPSender sends hand-made TCP segments from inside a pod.
type rawTCPSender struct {
	fd  int
	src net.IP
}

func newRawTCPSender(p *harness.Pod) (*rawTCPSender, error) {
	fd, err := rawTCPSocket(p)
	if err != nil {
		return nil, err
	}
	return &rawTCPSender{fd: fd, src: net.ParseIP(p.IP).To4()}, nil
}

func (s *rawTCPSender) send(dst string, sport, dport uint16, seq uint32, flags byte) error {
	ip := net.ParseIP(dst).To4()
	sa := &unix.SockaddrInet4{}
	copy(sa.Addr[:], ip)
	return unix.Sendto(s.fd, tcpSegment(s.src, ip, sport, dport, seq, flags), 0, sa)
}

func (s *rawTCPSender) Close() { unix.Close(s.fd) }

// seenSegment is a TCP segment a tcpSniffer saw arrive.
type seenSegment struct {
	src          string
	sport, dport uint16
	flags        byte
}

// tcpSniffer records the TCP segments that reach a pod's IP stack (a raw
// socket gets a copy of each before TCP handles it).
type tcpSniffer struct {
	fd   int
	mu   sync.Mutex
	seen []seenSegment
	done chan struct{}
}

func newTCPSniffer(p *harness.Pod) (*tcpSniffer, error) {
	fd, err := rawTCPSocket(p)
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	s := &tcpSniffer{fd: fd, done: make(chan struct{})}
	go s.loop()
	return s, nil
}

func (s *tcpSniffer) loop() {
	buf := make([]byte, 65536)
	for {
		select {
		case <-s.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil || n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		if buf[9] != unix.IPPROTO_TCP || n < ihl+14 {
			continue
		}
		tcp := buf[ihl:n]
		s.mu.Lock()
		s.seen = append(s.seen, seenSegment{
			src:   net.IP(buf[12:16]).String(),
			sport: binary.BigEndian.Uint16(tcp[0:]),
			dport: binary.BigEndian.Uint16(tcp[2:]),
			flags: tcp[13],
		})
		s.mu.Unlock()
	}
}

// from counts the segments seen from src:sport.
func (s *tcpSniffer) from(src string, sport uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, g := range s.seen {
		if g.src == src && g.sport == sport {
			n++
		}
	}
	return n
}

func (s *tcpSniffer) Close() {
	close(s.done)
	time.Sleep(150 * time.Millisecond) // let loop see done after its read times out
	unix.Close(s.fd)
}
