package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Hand-made TCP segments sent and seen from inside pods, for checks that
// a normal socket cannot make (TestForwardDropInvalid).

// inNetns creates a socket with mk on a thread that has joined ns; the
// socket stays in ns whatever thread uses it afterwards.
func inNetns(ns *harness.Netns, mk func() (int, error)) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(ns.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, err}
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("setns %s: %w", ns.Name, err)}
			return
		}
		fd, mkErr := mk()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the runtime destroys this thread when the
			// goroutine ends.
			if fd >= 0 {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, mkErr}
	}()
	r := <-ch
	return r.fd, r.err
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
	fd, err := inNetns(p.NS, func() (int, error) {
		return unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	})
	if err != nil {
		return nil, fmt.Errorf("raw socket in %s: %w", p.Name, err)
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
	fd, err := inNetns(p.NS, func() (int, error) {
		return unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	})
	if err != nil {
		return nil, fmt.Errorf("raw socket in %s: %w", p.Name, err)
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
