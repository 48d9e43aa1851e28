package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Running svcproxy as an installer's manifest runs kube-proxy: with that
// argument list alone, instead of SvcproxyArgs.

// Launch is one way to start svcproxy with StartSvcproxyAs.
type Launch struct {
	// Args is svcproxy's whole argument list: neither SvcproxyArgs nor
	// Options.SvcproxyArgs are added.
	Args []string
	// Hostname, when set, runs svcproxy in a UTS namespace of its own with
	// this hostname: a list without --hostname-override names the node by
	// its hostname, as on a node whose hostname is its Node's name.
	Hostname string
}

// argv is the command line that runs svcproxy as l says.
func (l Launch) argv(bin string) []string {
	argv := append([]string{bin}, l.Args...)
	if l.Hostname == "" {
		return argv
	}
	// unshare and sh exec: the process is svcproxy itself, with the pid
	// the harness signals.
	return append([]string{"unshare", "--uts", "sh", "-c", `hostname "$0" && exec "$@"`, l.Hostname}, argv...)
}

// StartSvcproxyAs starts svcproxy in the node namespace as l says, as
// StartSvcproxy does otherwise (its log, and it is the running svcproxy the
// harness waits for and stops). Only one runs at a time.
func (e *Env) StartSvcproxyAs(ctx context.Context, l Launch) (*Process, error) {
	if e.Bins.Svcproxy == "" {
		return nil, errors.New("svcproxy was not built (Options.SkipSvcproxy)")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.svcproxy != nil {
		if exited, _ := e.svcproxy.Exited(); !exited {
			return nil, fmt.Errorf("svcproxy is already running (pid %d)", e.svcproxy.Pid())
		}
	}
	p, err := startProcess(e.Node, "svcproxy", filepath.Join(e.LogDir, "svcproxy.log"), nil, l.argv(e.Bins.Svcproxy)...)
	if err != nil {
		return nil, err
	}
	e.procs = append(e.procs, p)
	e.svcproxy = p
	return p, nil
}

// KubeconfigWithServer writes a copy of Kubeconfig, named name in the work
// directory, whose server is server, and returns its path: with a server
// that does not answer, only --master can reach the API server.
func (e *Env) KubeconfigWithServer(name, server string) (string, error) {
	path := filepath.Join(e.WorkDir, name)
	return path, os.WriteFile(path, []byte(kubeconfig(server, e.Token)), 0o600)
}
