package harness

import (
	"bufio"
	"context"
	"fmt"
	"math/bits"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"
)

// Running a process as a container's securityContext would: with only its
// capabilities, no_new_privs, and a read-only root filesystem.

// capNames are Linux's capabilities by number, as setpriv spells them.
var capNames = []string{
	"chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
	"setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
	"ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
	"sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
	"lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
	"wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
}

// CapMask is the capability set of names, spelt as Kubernetes does
// ("NET_ADMIN", or "CAP_NET_ADMIN").
func CapMask(names ...string) (uint64, error) {
	var m uint64
	for _, n := range names {
		i := capNumber(n)
		if i < 0 {
			return 0, fmt.Errorf("unknown capability %q", n)
		}
		m |= 1 << i
	}
	return m, nil
}

func capNumber(name string) int {
	n := strings.TrimPrefix(strings.ToLower(name), "cap_")
	for i, c := range capNames {
		if c == n {
			return i
		}
	}
	return -1
}

// CapList names the capabilities of mask ("net_admin,net_raw"; "none").
func CapList(mask uint64) string {
	var out []string
	for i := 0; i < 64; i++ {
		if mask&(1<<i) == 0 {
			continue
		}
		if i < len(capNames) {
			out = append(out, capNames[i])
		} else {
			out = append(out, "cap_"+strconv.Itoa(i))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ",")
}

// Confinement is what a container's securityContext leaves the process in
// it (running as root, as svcproxy's does).
type Confinement struct {
	// Caps are the only capabilities the process holds: effective,
	// permitted and bounding; none inheritable or ambient.
	Caps []string
	// NoNewPrivs is allowPrivilegeEscalation: false.
	NoNewPrivs bool
	// ReadOnlyRoot is readOnlyRootFilesystem: true. Every mount but /dev
	// and /proc is read-only to the process, /proc/sys too (as a runtime
	// mounts it for an unprivileged container), except Writable.
	ReadOnlyRoot bool
	// Writable are the host paths the container mounts writable (hostPath
	// volumes).
	Writable []string
}

// ContainerConfinement is the confinement of the container called name in
// pod, or an error when it is not one the harness reproduces: privileged,
// capabilities not started from none (drop ALL), or a uid other than root.
func ContainerConfinement(pod *v1.PodSpec, name string) (Confinement, error) {
	var c *v1.Container
	for i := range pod.Containers {
		if pod.Containers[i].Name == name {
			c = &pod.Containers[i]
		}
	}
	if c == nil {
		return Confinement{}, fmt.Errorf("no container %q", name)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		return Confinement{}, fmt.Errorf("container %s has no securityContext", name)
	case sc.Privileged != nil && *sc.Privileged:
		return Confinement{}, fmt.Errorf("container %s is privileged", name)
	case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
		return Confinement{}, fmt.Errorf("container %s does not drop ALL capabilities", name)
	case sc.RunAsUser != nil && *sc.RunAsUser != 0:
		return Confinement{}, fmt.Errorf("container %s runs as uid %d, not root", name, *sc.RunAsUser)
	}
	conf := Confinement{
		NoNewPrivs:   sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		ReadOnlyRoot: sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
	}
	for _, cp := range sc.Capabilities.Add {
		conf.Caps = append(conf.Caps, string(cp))
	}
	hostPaths := map[string]string{}
	for _, vol := range pod.Volumes {
		if vol.HostPath != nil {
			hostPaths[vol.Name] = vol.HostPath.Path
		}
	}
	for _, m := range c.VolumeMounts {
		if p, ok := hostPaths[m.Name]; ok && !m.ReadOnly {
			conf.Writable = append(conf.Writable, p)
		}
	}
	return conf, nil
}

// Command is argv run under the confinement: in a mount namespace of its
// own when the root is read-only, then through setpriv, which drops every
// other capability (the bounding set too, so no exec regains one) before
// it execs argv. The process keeps argv's pid.
func (c Confinement) Command(argv ...string) ([]string, error) {
	caps := "-all"
	for _, n := range c.Caps {
		if capNumber(n) < 0 {
			return nil, fmt.Errorf("unknown capability %q", n)
		}
		caps += ",+" + capNames[capNumber(n)]
	}
	cmd := []string{"setpriv", "--bounding-set=" + caps, "--inh-caps=-all", "--ambient-caps=-all"}
	if c.NoNewPrivs {
		cmd = append(cmd, "--no-new-privs")
	}
	cmd = append(append(cmd, "--"), argv...)
	if !c.ReadOnlyRoot {
		return cmd, nil
	}
	var quoted []string
	for _, w := range c.Writable {
		if strings.ContainsAny(w, "'\n") {
			return nil, fmt.Errorf("writable path %q", w)
		}
		quoted = append(quoted, "'"+w+"'")
	}
	script := fmt.Sprintf(readOnlyScript, strings.Join(quoted, " "))
	return append([]string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "confine"}, cmd...), nil
}

// readOnlyScript runs in a new mount namespace with propagation private,
// so nothing it does is seen outside. Each remount is "bind": it changes
// this namespace's mount, never the filesystem. The writable paths are
// bind-mounted onto themselves first, so they stay writable mounts of
// their own. A mount left writable is found by Check, not here.
const readOnlyScript = `set -eu
for w in %[1]s; do
	if [ -e "$w" ]; then mount --bind "$w" "$w"; fi
done
mount --bind /proc/sys /proc/sys
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
	case "$m" in /dev|/dev/*|/proc) continue ;; esac
	for w in %[1]s; do
		if [ "$m" = "$w" ]; then continue 2; fi
	done
	mount -o remount,bind,ro "$m" || echo "confine: cannot make $m read-only" >&2
done
exec "$@"
`

// ProcCaps are a process's capability sets and no_new_privs, as
// /proc/<pid>/status shows them.
type ProcCaps struct {
	UID                     int // effective
	Inh, Prm, Eff, Bnd, Amb uint64
	NoNewPrivs              bool
	status                  string // the lines read
}

// ReadProcCaps reads pid's /proc/<pid>/status.
func ReadProcCaps(pid int) (ProcCaps, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ProcCaps{}, err
	}
	defer f.Close()
	var pc ProcCaps
	var lines []string
	set := map[string]*uint64{"CapInh": &pc.Inh, "CapPrm": &pc.Prm, "CapEff": &pc.Eff, "CapBnd": &pc.Bnd, "CapAmb": &pc.Amb}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch {
		case set[k] != nil:
			if *set[k], err = strconv.ParseUint(v, 16, 64); err != nil {
				return pc, fmt.Errorf("%s: %q: %w", k, v, err)
			}
		case k == "NoNewPrivs":
			pc.NoNewPrivs = v == "1"
		case k == "Uid":
			pc.UID, _ = strconv.Atoi(strings.Fields(v)[1])
		default:
			continue
		}
		lines = append(lines, k+": "+v)
	}
	pc.status = strings.Join(lines, ", ")
	return pc, sc.Err()
}

// String is the status lines read, with the sets named.
func (pc ProcCaps) String() string {
	return fmt.Sprintf("%s (effective: %s; bounding: %s)", pc.status, CapList(pc.Eff), CapList(pc.Bnd))
}

// Check compares what process pid holds with the confinement and returns
// every difference: capability sets, no_new_privs, uid, and (ReadOnlyRoot)
// each mount it may write that a container could not.
func (c Confinement) Check(pid int) ([]string, error) {
	want, err := CapMask(c.Caps...)
	if err != nil {
		return nil, err
	}
	pc, err := ReadProcCaps(pid)
	if err != nil {
		return nil, err
	}
	var bad []string
	for _, s := range []struct {
		name      string
		got, want uint64
	}{{"effective", pc.Eff, want}, {"permitted", pc.Prm, want}, {"bounding", pc.Bnd, want}, {"inheritable", pc.Inh, 0}, {"ambient", pc.Amb, 0}} {
		if s.got != s.want {
			bad = append(bad, fmt.Sprintf("%s capabilities %s (%d of them), want %s", s.name, CapList(s.got), bits.OnesCount64(s.got), CapList(s.want)))
		}
	}
	if pc.NoNewPrivs != c.NoNewPrivs {
		bad = append(bad, fmt.Sprintf("no_new_privs %v, want %v", pc.NoNewPrivs, c.NoNewPrivs))
	}
	if pc.UID != 0 {
		bad = append(bad, fmt.Sprintf("uid %d, want 0", pc.UID))
	}
	if c.ReadOnlyRoot {
		rw, err := WritableMounts(pid)
		if err != nil {
			return bad, err
		}
		for _, m := range rw {
			if !c.mayWrite(m) {
				bad = append(bad, "writable mount "+m)
			}
		}
	}
	return bad, nil
}

// mayWrite: a container's /dev and /proc (but /proc/sys) are writable
// mounts, and so are its writable hostPath volumes.
func (c Confinement) mayWrite(mount string) bool {
	if mount == "/dev" || strings.HasPrefix(mount, "/dev/") || mount == "/proc" {
		return true
	}
	for _, w := range c.Writable {
		if mount == w {
			return true
		}
	}
	return false
}

// WritableMounts are the mount points process pid sees mounted read-write.
func WritableMounts(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		return nil, err
	}
	var rw []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		// Field 6 holds the mount's own options: "rw,..." or "ro,...".
		if strings.Split(f[5], ",")[0] == "rw" {
			rw = append(rw, f[4])
		}
	}
	return rw, nil
}

// StartSvcproxyConfined stops the running svcproxy and starts it again
// (flags as StartSvcproxy, then extra) under c, in the node namespace.
func (e *Env) StartSvcproxyConfined(ctx context.Context, c Confinement, extra ...string) (*Process, error) {
	if e.Bins.Svcproxy == "" {
		return nil, fmt.Errorf("svcproxy was not built (Options.SkipSvcproxy)")
	}
	if err := e.StopSvcproxy(syscall.SIGTERM); err != nil {
		return nil, fmt.Errorf("stop svcproxy: %w", err)
	}
	argv, err := c.Command(append([]string{e.Bins.Svcproxy}, e.SvcproxyArgs(extra...)...)...)
	if err != nil {
		return nil, err
	}
	p, err := e.StartProcess(e.Node, "svcproxy", argv...)
	if err == nil {
		// The svcproxy the harness waits for, stops and describes.
		e.mu.Lock()
		defer e.mu.Unlock()
		e.svcproxy = p
	}
	return p, err
}

// RunConfined runs argv under c inside ns, with stdin, and returns its
// combined output.
func (c Confinement) RunConfined(ctx context.Context, ns *Netns, stdin string, argv ...string) (string, error) {
	cmdArgv, err := c.Command(argv...)
	if err != nil {
		return "", err
	}
	cmd := ns.Command(ctx, cmdArgv...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ScratchNetns makes the network namespace <prefix>-<suffix> for a test's
// own use; remove deletes it (Close and the reaper do, if it is left).
func (e *Env) ScratchNetns(ctx context.Context, suffix string) (ns *Netns, remove func() error, err error) {
	ns = &Netns{Name: e.Prefix + "-" + suffix}
	if _, err := runCmd(exec.CommandContext(ctx, "ip", "netns", "add", ns.Name)); err != nil {
		return nil, nil, err
	}
	return ns, func() error { return deleteNetns(ns.Name) }, nil
}
