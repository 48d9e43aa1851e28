package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	discovery "k8s.io/api/discovery/v1"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Helpers of features_more_test.go.

// hintedEndpoint is a ready endpoint on node with topology hints.
func hintedEndpoint(ip, node string, forNodes, forZones []string) discovery.Endpoint {
	e := readyEndpoint(ip, node)
	if len(forNodes) > 0 || len(forZones) > 0 {
		e.Hints = &discovery.EndpointHints{}
		for _, n := range forNodes {
			e.Hints.ForNodes = append(e.Hints.ForNodes, discovery.ForNode{Name: n})
		}
		for _, z := range forZones {
			e.Hints.ForZones = append(e.Hints.ForZones, discovery.ForZone{Name: z})
		}
	}
	return e
}

// exactly complains unless every reply came from one of pods (with source
// wantSource, if set) and each of pods answered.
func exactly(rs []harness.Reply, pods []*harness.Pod, wantSource string) string {
	if m := landed(rs, pods, wantSource, ""); m != "" {
		return m
	}
	return allReached(rs, pods)
}

// only names the one backend every reply came from, or "" when the replies
// failed or came from several.
func only(rs []harness.Reply) string {
	t := harness.Tally(rs)
	if len(t) != 1 || len(rs) == 0 || rs[0].Err != "" {
		return ""
	}
	return rs[0].Backend
}

// conntrackList runs `conntrack -L args...` in the node namespace and
// returns the entries (one a line).
func (c *tc) conntrackList(args ...string) []string {
	c.Helper()
	out, err := env.Node.Run(c.ctx, append([]string{"conntrack", "-L"}, args...)...)
	if err != nil {
		c.Fatalf("conntrack -L %v: %v", args, err)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

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

// iptCounterRe matches `iptables-save -c` rule lines: "[pkts:bytes] -A ...".
var iptCounterRe = regexp.MustCompile(`^\[(\d+):(\d+)\] (-A .*)$`)

// ruleCounter returns the packet counter of the first rule in
// `iptables-save -c -t table` whose text contains every one of parts.
func (c *tc) ruleCounter(table string, parts ...string) (uint64, string, bool) {
	c.Helper()
	out, err := env.Node.Run(c.ctx, "iptables-save", "-c", "-t", table)
	if err != nil {
		c.Fatalf("iptables-save -c -t %s: %v", table, err)
	}
	for _, line := range strings.Split(out, "\n") {
		m := iptCounterRe.FindStringSubmatch(line)
		if m != nil && containsAll(m[3], parts) {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			return n, m[3], true
		}
	}
	return 0, out, false
}

// builtinJumps returns, per built-in chain of an iptables-save dump of one
// table, the rules that jump to a KUBE- chain, in order.
func builtinJumps(dump string) map[string][]string {
	builtin := map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}
	out := map[string][]string{}
	for _, line := range strings.Split(dump, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-A" || !builtin[f[1]] {
			continue
		}
		if j := jumpOf(line); strings.HasPrefix(j, "KUBE-") {
			out[f[1]] = append(out[f[1]], line)
		}
	}
	return out
}

// jumpOf is the -j target of a saved rule.
func jumpOf(rule string) string {
	f := strings.Fields(rule)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" || f[i] == "-g" {
			return f[i+1]
		}
	}
	return ""
}

// nftBaseChain is one base chain of `nft -j list table`.
type nftBaseChain struct {
	Name, Type, Hook string
	Prio             int
	Rules            []string // each rule's expressions as JSON
}

// nftBaseChains lists the base chains of table (family ip or ip6) in the
// node namespace, with their rules.
func (c *tc) nftBaseChains(family, table string) map[string]*nftBaseChain {
	c.Helper()
	out, err := env.Node.Run(c.ctx, "nft", "-j", "list", "table", family, table)
	if err != nil {
		c.Fatalf("nft -j list table %s %s: %v", family, table, err)
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		c.Fatalf("nft -j output: %v", err)
	}
	chains := map[string]*nftBaseChain{}
	var rules []struct {
		Chain string          `json:"chain"`
		Expr  json.RawMessage `json:"expr"`
	}
	for _, obj := range doc.Nftables {
		if raw, ok := obj["chain"]; ok {
			var ch struct {
				Name, Type, Hook string
				Prio             *int `json:"prio"`
			}
			if err := json.Unmarshal(raw, &ch); err != nil {
				c.Fatalf("nft chain %s: %v", raw, err)
			}
			if ch.Hook != "" && ch.Prio != nil {
				chains[ch.Name] = &nftBaseChain{Name: ch.Name, Type: ch.Type, Hook: ch.Hook, Prio: *ch.Prio}
			}
		}
		if raw, ok := obj["rule"]; ok {
			var r struct {
				Chain string          `json:"chain"`
				Expr  json.RawMessage `json:"expr"`
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				c.Fatalf("nft rule %s: %v", raw, err)
			}
			rules = append(rules, r)
		}
	}
	for _, r := range rules {
		if ch := chains[r.Chain]; ch != nil {
			ch.Rules = append(ch.Rules, string(r.Expr))
		}
	}
	return chains
}

// hookSignature renders base chains as sorted "type/hook/priority" strings.
func hookSignature(chains map[string]*nftBaseChain) []string {
	var out []string
	for _, ch := range chains {
		out = append(out, fmt.Sprintf("%s/%s/%d", ch.Type, ch.Hook, ch.Prio))
	}
	sort.Strings(out)
	return out
}

// syncCount is kubeproxy_sync_proxy_rules_duration_seconds_count.
func syncCount(c *tc) float64 {
	return metricValue(c, "kubeproxy_sync_proxy_rules_duration_seconds_count")
}
