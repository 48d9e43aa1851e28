package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a named network namespace (ip netns add) made by this run.
type Netns struct {
	Name string
}

// Path is the namespace's bind mount, usable with setns(2).
func (n *Netns) Path() string { return filepath.Join("/run/netns", n.Name) }

// Command returns a command that runs argv inside the namespace
// (ip netns exec, which execs argv: the process is argv itself).
func (n *Netns) Command(ctx context.Context, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name}, argv...)...)
}

// Run runs argv inside the namespace and returns its stdout. The error
// carries stderr.
func (n *Netns) Run(ctx context.Context, argv ...string) (string, error) {
	return runCmd(n.Command(ctx, argv...))
}

// runAll runs each argv in turn inside the namespace, stopping at the
// first error.
func (n *Netns) runAll(ctx context.Context, cmds ...[]string) error {
	for _, argv := range cmds {
		if _, err := n.Run(ctx, argv...); err != nil {
			return err
		}
	}
	return nil
}

// Sysctl sets key=value inside the namespace.
func (n *Netns) Sysctl(ctx context.Context, key, value string) error {
	_, err := n.Run(ctx, "sysctl", "-q", "-w", key+"="+value)
	return err
}

// DialContext dials address (an IP literal and port) from inside the
// namespace: the socket is created on a thread that has joined the
// namespace, so nothing listens or connects in the host namespace.
func (n *Netns) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := n.dial(ctx, network, address)
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func (n *Netns) dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	if net.ParseIP(host) == nil {
		// A name would be resolved on other threads, outside the namespace.
		return nil, fmt.Errorf("netns dial: %q is not an IP address", host)
	}
	var c net.Conn
	err = n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, err
}

// Do runs f on a thread that has joined the namespace, so that the sockets
// f creates belong to it (and stay in it whatever thread uses them
// afterwards); f must create them on its own goroutine. Do returns f's
// error, or the error of joining or leaving the namespace: when it fails,
// the caller releases whatever f made.
func (n *Netns) Do(f func() error) error {
	type result struct{ fErr, err error }
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("netns %s: %w", n.Name, err)}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("netns %s: %w", n.Name, err)}
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("netns %s: setns: %w", n.Name, err)}
			return
		}
		fErr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// This thread cannot go back: leave it locked, so the runtime
			// destroys it when this goroutine ends.
			ch <- result{fErr, fmt.Errorf("netns %s: setns back: %w", n.Name, err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fErr: fErr}
	}()
	r := <-ch
	if r.err != nil {
		return r.err
	}
	return r.fErr
}

// ListNetns returns the names of the named network namespaces.
func ListNetns() ([]string, error) {
	out, err := runCmd(exec.Command("ip", "netns", "list"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// netnsPids lists the processes inside a namespace.
func netnsPids(name string) []int {
	out, err := runCmd(exec.Command("ip", "netns", "pids", name))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		var p int
		if _, err := fmt.Sscan(f, &p); err == nil && p > 0 {
			pids = append(pids, p)
		}
	}
	return pids
}

// deleteNetns kills whatever still runs inside the namespace and deletes
// it. Processes are ours: only this run starts anything in its namespaces.
func deleteNetns(name string) error {
	for i := 0; i < 50; i++ {
		pids := netnsPids(name)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			unix.Kill(p, unix.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err := runCmd(exec.Command("ip", "netns", "delete", name))
	return err
}

func runCmd(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
