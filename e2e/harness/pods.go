package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Pod is a network namespace on the node's bridge, with an echo server.
type Pod struct {
	Name string
	IP   string
	IP6  string
	NS   *Netns
	Echo *Process // nil until StartEcho

	env     *Env
	clients int
}

// AddPod creates <prefix>-<name> with the next free 10.244.1.N, attached to
// br0 with a veth whose bridge side has hairpin on (as kubelet sets it).
// name must be at most 13 characters (it names the veth v-<name>).
func (e *Env) AddPod(ctx context.Context, name string) (*Pod, error) {
	return e.addPod(ctx, name, e.Node, "10.244.1.", "fd00:10:244:1::", BridgeIP, BridgeIP6)
}

// addPod makes a pod on node's br0, addressed net4+N and net6+N (hex), with
// default routes via gw and gw6.
func (e *Env) addPod(ctx context.Context, name string, node *Netns, net4, net6, gw, gw6 string) (*Pod, error) {
	if len(name) > 13 || strings.ContainsAny(name, " /") {
		return nil, fmt.Errorf("pod name %q: want at most 13 characters, no spaces or slashes", name)
	}
	e.mu.Lock()
	if e.nextIP > 250 {
		e.mu.Unlock()
		return nil, fmt.Errorf("out of pod addresses")
	}
	ip := fmt.Sprintf("%s%d", net4, e.nextIP)
	ip6 := fmt.Sprintf("%s%x", net6, e.nextIP)
	e.nextIP++
	e.mu.Unlock()

	ns, err := e.newNetns(ctx, name)
	if err != nil {
		return nil, err
	}
	veth := "v-" + name
	// The veth is made in the node namespace and its peer moved straight
	// into the pod's: nothing appears in the host's namespace.
	if err := node.runAll(ctx,
		[]string{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		[]string{"ip", "link", "set", veth, "master", "br0"},
		[]string{"ip", "link", "set", veth, "up"},
		[]string{"bridge", "link", "set", "dev", veth, "hairpin", "on"},
	); err != nil {
		return nil, err
	}
	if err := ns.runAll(ctx,
		[]string{"ip", "addr", "add", ip + "/24", "dev", "eth0"},
		[]string{"ip", "link", "set", "eth0", "up"},
		[]string{"ip", "route", "add", "default", "via", gw},
		[]string{"ip", "-6", "addr", "add", ip6 + "/64", "dev", "eth0", "nodad"},
		[]string{"ip", "-6", "route", "add", "default", "via", gw6},
	); err != nil {
		return nil, err
	}
	p := &Pod{Name: name, IP: ip, IP6: ip6, NS: ns, env: e}
	e.mu.Lock()
	e.pods = append(e.pods, p)
	e.mu.Unlock()
	return p, nil
}

// AddEchoPods adds a pod per name (see AddPod), each running its echo
// server, and returns them in that order.
func (e *Env) AddEchoPods(ctx context.Context, names ...string) ([]*Pod, error) {
	var pods []*Pod
	for _, name := range names {
		p, err := e.AddPod(ctx, name)
		if err != nil {
			return nil, err
		}
		if err := p.StartEcho(ctx); err != nil {
			return nil, err
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// Pods returns the pods in the order they were added.
func (e *Env) Pods() []*Pod {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*Pod(nil), e.pods...)
}

// StartEcho runs `echo serve --name <pod> --port 8080` in the pod and waits
// until the node can connect to it.
func (p *Pod) StartEcho(ctx context.Context) error {
	proc, err := p.env.StartProcess(p.NS, "echo-"+p.Name, p.env.Bins.Echo, "serve", "--name", p.Name, "--port", strconv.Itoa(EchoPort))
	if err != nil {
		return err
	}
	p.Echo = proc
	addr := net.JoinHostPort(p.IP, strconv.Itoa(EchoPort))
	return p.env.poll(ctx, 10*time.Second, proc, "echo server in pod "+p.Name, func() (bool, error) {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := p.env.Node.DialContext(dctx, "tcp", addr)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
}

// ClientOptions are `echo client`'s flags.
type ClientOptions struct {
	Proto    string // "tcp" (default) or "udp"
	Target   string // IP:PORT
	Count    int    // attempts; 0 with Duration loops until it elapses
	Duration time.Duration
	Timeout  time.Duration // per attempt; default 2s
	Interval time.Duration
	SrcPort  int
	SrcIP    string
}

func (o ClientOptions) args() []string {
	proto := o.Proto
	if proto == "" {
		proto = "tcp"
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	a := []string{"client", "--proto", proto, "--target", o.Target, "--count", strconv.Itoa(o.Count), "--timeout", timeout.String()}
	if o.Duration > 0 {
		a = append(a, "--duration", o.Duration.String())
	}
	if o.Interval > 0 {
		a = append(a, "--interval", o.Interval.String())
	}
	if o.SrcPort > 0 {
		a = append(a, "--src-port", strconv.Itoa(o.SrcPort))
	}
	if o.SrcIP != "" {
		a = append(a, "--src-ip", o.SrcIP)
	}
	return a
}

// Reply is one attempt of `echo client`.
type Reply struct {
	Line    string // as printed
	Backend string // the answering echo server's name, "" on error
	Source  string // the source address the backend saw, "IP:port"
	Err     string // "refused", "timeout" or another error; "" on success
}

// SourceIP is the IP part of Source.
func (r Reply) SourceIP() string {
	host, _, err := net.SplitHostPort(r.Source)
	if err != nil {
		return r.Source
	}
	return host
}

func parseReplies(out string) []Reply {
	var rs []Reply
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		r := Reply{Line: line}
		if rest, ok := strings.CutPrefix(line, "ERR "); ok {
			r.Err = rest
		} else if name, src, ok := strings.Cut(line, " "); ok {
			r.Backend, r.Source = name, src
		} else {
			r.Err = "unparsable reply " + strconv.Quote(line)
		}
		rs = append(rs, r)
	}
	return rs
}

// Client is a running `echo client`.
type Client struct {
	proc   *Process
	stdout *bytes.Buffer
}

// StartClient starts `echo client` in the pod; Wait collects its replies.
func (p *Pod) StartClient(opts ClientOptions) (*Client, error) {
	p.env.mu.Lock()
	p.clients++
	log := filepath.Join(p.env.LogDir, fmt.Sprintf("client-%s-%d.log", p.Name, p.clients))
	p.env.mu.Unlock()
	var out bytes.Buffer
	proc, err := startProcess(p.NS, "echo client in "+p.Name, log, &out, append([]string{p.env.Bins.Echo}, opts.args()...)...)
	if err != nil {
		return nil, err
	}
	p.env.mu.Lock()
	p.env.procs = append(p.env.procs, proc)
	p.env.mu.Unlock()
	return &Client{proc: proc, stdout: &out}, nil
}

// Wait waits for the client to finish and returns one Reply per attempt.
func (c *Client) Wait(ctx context.Context) ([]Reply, error) {
	if err := c.proc.Wait(ctx); err != nil {
		c.proc.Stop(syscall.SIGKILL, 0)
		return nil, fmt.Errorf("echo client: %w; log %s:\n%s", err, c.proc.LogPath, c.proc.Tail(10))
	}
	return parseReplies(c.stdout.String()), nil
}

// Connect runs `echo client` in the pod to completion.
func (p *Pod) Connect(ctx context.Context, opts ClientOptions) ([]Reply, error) {
	c, err := p.StartClient(opts)
	if err != nil {
		return nil, err
	}
	return c.Wait(ctx)
}

// Tally counts replies per backend; errors count under "ERR <reason>".
func Tally(rs []Reply) map[string]int {
	m := map[string]int{}
	for _, r := range rs {
		if r.Err != "" {
			m["ERR "+r.Err]++
		} else {
			m[r.Backend]++
		}
	}
	return m
}

// FormatTally renders a tally as "a=20 b=19 c=21", sorted by key.
func FormatTally(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
