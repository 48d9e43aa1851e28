package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a long-running program started inside a namespace, with its
// stdout and stderr going to a log file.
type Process struct {
	Name    string // for messages, e.g. "svcproxy"
	LogPath string
	Cmd     *exec.Cmd

	done    chan struct{}
	mu      sync.Mutex
	waitErr error
	logFile *os.File
}

// start runs argv inside ns with output appended to logPath. The process
// gets its own process group, so a Ctrl-C at the terminal reaches only the
// harness, which then stops everything in order.
func startProcess(ns *Netns, name, logPath string, stdout *bytes.Buffer, argv ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := ns.Command(context.Background(), argv...)
	cmd.Stderr = f
	cmd.Stdout = f
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, Cmd: cmd, done: make(chan struct{}), logFile: f}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		fmt.Fprintf(f, "=== %s: exited: %v\n", time.Now().Format(time.RFC3339Nano), exitString(err))
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func exitString(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// Pid is the process id (the program itself: ip netns exec execs it).
func (p *Process) Pid() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Wait waits for the process to exit, or ctx.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	if ok, _ := p.Exited(); ok {
		return nil
	}
	return p.Cmd.Process.Signal(sig)
}

// Stop sends sig and waits up to grace for the process to exit, then
// kills it. It returns how the process exited.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) error {
	if ok, err := p.Exited(); ok {
		return err
	}
	p.Signal(sig)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Cmd.Process.Kill()
		<-p.done
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Tail returns the last n lines of the process's log.
func (p *Process) Tail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// errExited describes a process that died while the harness waited for it.
func (p *Process) errExited() error {
	_, err := p.Exited()
	return fmt.Errorf("%s exited (%s); last log lines of %s:\n%s", p.Name, exitString(err), p.LogPath, p.Tail(30))
}
