package harness

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
)

// EmptyNetns creates a network namespace <prefix>-<suffix> with nothing
// in it but loopback (no rules, no routes beyond it), removed at Close.
func (e *Env) EmptyNetns(ctx context.Context, suffix string) (*Netns, error) {
	return e.newNetns(ctx, suffix)
}

// RunSvcproxy runs the svcproxy binary with exactly args (none of
// SvcproxyArgs) in ns and returns its stdout, stderr and exit status; err
// is for a command that could not run at all.
func (e *Env) RunSvcproxy(ctx context.Context, ns *Netns, args ...string) (stdout, stderr string, status int, err error) {
	if e.Bins.Svcproxy == "" {
		return "", "", 0, errors.New("svcproxy was not built (Options.SkipSvcproxy)")
	}
	cmd := ns.Command(ctx, append([]string{e.Bins.Svcproxy}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), ExitStatus(err), nonExit(err)
}

// ExitStatus is a command's exit status from its Run error: 0 for nil,
// -1 when it did not exit normally.
func ExitStatus(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

// nonExit is err unless it only reports a non-zero exit status.
func nonExit(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() >= 0 {
		return nil
	}
	return err
}
