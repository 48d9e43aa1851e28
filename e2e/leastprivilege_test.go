package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// Least privilege, proven: svcproxy runs as deploy/ runs it and serves as
// it does with full privilege.

// leastPrivilegeCases are cases of other files, run again against the
// confined svcproxy: ClusterIP, NodePort, health-check servers, REJECT and
// conntrack cleanup.
var leastPrivilegeCases = []struct {
	name string
	test func(*testing.T)
}{
	{"ClusterIPTCP", TestClusterIPTCP},
	{"ClusterIPUDP", TestClusterIPUDP},
	{"NoEndpoints", TestNoEndpoints},
	{"NodePortFromOutside", TestNodePortFromOutside},
	{"ExternalTrafficPolicyLocal", TestExternalTrafficPolicyLocal},
	{"ConntrackUDP", TestConntrackUDP},
	{"ConntrackUDPZeroToN", TestConntrackUDPZeroToN},
	{"MetricsAndHealthz", TestMetricsAndHealthz},
	{"Event", testEventRecorded},
	{"Repair", testRepairSeen},
}

// TestLeastPrivilege applies deploy/ to the API server and runs svcproxy
// as its DaemonSet does: the init container's command first (privileged),
// then the proxy with the token of deploy/'s ServiceAccount and its
// container's securityContext — exactly NET_ADMIN and NET_RAW (every
// other capability dropped, the bounding set too), no_new_privs, root uid,
// a read-only root filesystem and /proc/sys. It checks what the process
// holds, that RBAC is enforced and narrow, runs the cases above, and
// fails if svcproxy logged anything forbidden.
func TestLeastPrivilege(t *testing.T) {
	c := begin(t)
	var ds appsv1.DaemonSet
	typed(c, c.applyDeploy(), "DaemonSet", &ds)
	pod := &ds.Spec.Template.Spec
	conf, err := harness.ContainerConfinement(pod, "svcproxy")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := env.ServiceAccountToken(c.ctx, ds.Namespace, pod.ServiceAccountName)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("RBAC", func(t *testing.T) { checkRBAC(t, creds.Client) })
	t.Run("InitContainer", func(t *testing.T) { runInitContainer(t, pod, creds.Kubeconfig) })

	logPath := filepath.Join(env.LogDir, "svcproxy.log")
	st, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := c.startConfined(conf, "--kubeconfig", creds.Kubeconfig)
	problems, err := conf.Check(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := harness.ReadProcCaps(p.Pid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RESULT svcproxy pid %d as ServiceAccount %s/%s: %s; root filesystem read-only: %v", p.Pid(), ds.Namespace, pod.ServiceAccountName, pc, conf.ReadOnlyRoot)
	if len(problems) > 0 {
		// The cases would prove nothing.
		t.Fatalf("svcproxy (pid %d) is not confined as deploy/ asks:\n%s", p.Pid(), strings.Join(problems, "\n"))
	}

	for _, tt := range leastPrivilegeCases {
		t.Run(tt.name, tt.test)
	}

	if env.Svcproxy() != p {
		t.Fatalf("svcproxy was restarted during the cases: they ran unconfined")
	}
	if exited, err := p.Exited(); exited {
		t.Fatalf("confined svcproxy exited: %v", err)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var forbidden, warnings []string
	for _, line := range strings.Split(string(b[st.Size():]), "\n") {
		switch {
		case strings.Contains(strings.ToLower(line), "forbidden"):
			forbidden = append(forbidden, line)
		case klogWarning.MatchString(line):
			warnings = append(warnings, line)
		}
	}
	for _, line := range forbidden {
		t.Errorf("svcproxy was refused by the API server: %s", line)
	}
	t.Logf("RESULT no \"forbidden\" in svcproxy's log; its %d warning and error lines under confinement:\n%s", len(warnings), strings.Join(warnings, "\n"))
}

// klogWarning matches klog's warning and error lines.
var klogWarning = regexp.MustCompile(`^[WE]\d{4} `)

// startConfined restarts svcproxy under conf (with extra flags) and waits
// for its first sync; when the test ends it runs again as usual.
func (c *tc) startConfined(conf harness.Confinement, extra ...string) *harness.Process {
	c.Helper()
	c.Cleanup(func() {
		stopSvcproxyCleanly(c)
		if err := env.StartSvcproxyAndWait(context.Background(), 30*time.Second); err != nil {
			c.Errorf("restart svcproxy as usual: %v", err)
		}
	})
	p, err := env.StartSvcproxyConfined(c.ctx, conf, extra...)
	if err != nil {
		c.Fatal(err)
	}
	if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
		c.Fatalf("confined svcproxy: %v", err)
	}
	return p
}

// rbacCases are what svcproxy's ServiceAccount may do (everything svcproxy
// calls) and some of what it may not.
var rbacCases = []struct {
	verb, group, resource string
	allowed               bool
}{
	{"list", "", "services", true},
	{"watch", "", "services", true},
	{"list", "discovery.k8s.io", "endpointslices", true},
	{"watch", "discovery.k8s.io", "endpointslices", true},
	{"get", "", "nodes", true},
	{"list", "", "nodes", true},
	{"watch", "", "nodes", true},
	{"list", "networking.k8s.io", "servicecidrs", true},
	{"watch", "networking.k8s.io", "servicecidrs", true},
	{"create", "events.k8s.io", "events", true},
	{"patch", "events.k8s.io", "events", true},

	{"get", "", "services", false},
	{"create", "", "services", false},
	{"update", "", "nodes", false},
	{"delete", "discovery.k8s.io", "endpointslices", false},
	{"list", "", "secrets", false},
	{"list", "", "pods", false},
	{"create", "", "events", false},
	{"update", "events.k8s.io", "events", false},
}

// checkRBAC asks the API server, as the ServiceAccount, what it may do:
// with RBAC enforced (not AlwaysAllow) the answers follow deploy/'s role.
func checkRBAC(t *testing.T, client kubernetes.Interface) {
	c := beginWithoutSvcproxy(t)
	var allowed []string
	for _, rc := range rbacCases {
		what := fmt.Sprintf("%s %s", rc.verb, rc.resource)
		if rc.group != "" {
			what += "." + rc.group
		}
		ok, reason, err := harness.CanI(c.ctx, client, authorizationv1.ResourceAttributes{Verb: rc.verb, Group: rc.group, Resource: rc.resource})
		switch {
		case err != nil:
			t.Errorf("%s: %v", what, err)
		case ok != rc.allowed:
			t.Errorf("%s: allowed %v, want %v (%s)", what, ok, rc.allowed, reason)
		case ok:
			allowed = append(allowed, what)
		}
	}
	t.Logf("RESULT the ServiceAccount may %s; %d other requests refused", strings.Join(allowed, ", "), len(rbacCases)-len(allowed))
}

// runInitContainer runs the init container's command with the harness's
// flags, privileged, as kubelet runs it before the proxy.
func runInitContainer(t *testing.T, pod *v1.PodSpec, kubeconfig string) {
	c := begin(t)
	init := pod.InitContainers[0]
	help, _ := exec.Command(env.Bins.Svcproxy, "--help").CombinedOutput()
	if !strings.Contains(string(help), "init-only") {
		t.Skipf("this svcproxy has no --init-only, which %s's command %q needs", init.Name, init.Command)
	}
	argv := append(append([]string{env.Bins.Svcproxy}, init.Command[1:]...), env.SvcproxyArgs("--kubeconfig", kubeconfig)...)
	out, err := env.Node.Command(c.ctx, argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	t.Logf("RESULT init container (%s) exited 0:\n%s", strings.Join(init.Command, " "), out)
}

// testEventRecorded: svcproxy records a Warning Event about a Service it
// skips (an IPv6 external IP on an IPv4 Service).
func testEventRecorded(t *testing.T) {
	c := begin(t)
	svc := c.createService("lp-bad-input", v1.ServiceSpec{ExternalIPs: []string{"2001:db8::2"}})
	c.eventually("a Warning Event from svcproxy about "+svc.Name, func() string {
		evs, err := env.Client.EventsV1().Events(svc.Namespace).List(c.ctx, metav1.ListOptions{})
		if err != nil {
			return err.Error()
		}
		for _, e := range evs.Items {
			if e.Regarding.UID == svc.UID && e.ReportingController == "svcproxy" && e.Type == v1.EventTypeWarning {
				t.Logf("RESULT Event recorded: %s %s %q", e.Type, e.Reason, e.Note)
				return ""
			}
		}
		return fmt.Sprintf("%d Events in %s, none from svcproxy about %s", len(evs.Items), svc.Namespace, svc.Name)
	})
}

// testRepairSeen: svcproxy notices someone else's damage to its rules
// (nf_tables notifications or its rule checks, over netlink) and repairs it.
func testRepairSeen(t *testing.T) {
	c := begin(t)
	svc := c.service("leastpriv", "repair", []harness.Port{harness.TCP}, backends...)
	damage := map[string][]string{
		"iptables": {"iptables", "-t", "nat", "-F", "KUBE-SERVICES"},
		"nftables": {"nft", "flush", "map", "ip", "svcproxy", "service-ips"},
	}[env.ProxyMode]
	before := metricValue(c, "svcproxy_rules_repaired_total")
	mustRun(c, env.Node, damage...)
	c.eventually("traffic back after `"+strings.Join(damage, " ")+"`", func() string {
		rs := c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 3, Timeout: 300 * time.Millisecond})
		return landed(rs, backends, client.IP, "")
	})
	t.Logf("RESULT `%s` repaired; svcproxy_rules_repaired_total grew by %v", strings.Join(damage, " "), c.wantGrowth("svcproxy_rules_repaired_total", before, 1))
}

// TestLeastPrivilegeWhyEachCapability shows why the proxy needs each of
// its capabilities, with the tools it runs, in a scratch namespace:
// NET_ADMIN for every netfilter change and conntrack, NET_RAW for
// iptables-legacy (its raw socket). Every set with one of them missing
// fails on some host.
func TestLeastPrivilegeWhyEachCapability(t *testing.T) {
	c := beginWithoutSvcproxy(t)
	var ds appsv1.DaemonSet
	objs, err := harness.RenderKustomization(filepath.Join(env.Root, "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	typed(c, objs, "DaemonSet", &ds)
	conf, err := harness.ContainerConfinement(&ds.Spec.Template.Spec, "svcproxy")
	if err != nil {
		t.Fatal(err)
	}
	ns, remove, err := env.ScratchNetns(c.ctx, "caps")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := remove(); err != nil {
			t.Errorf("delete %s: %v", ns.Name, err)
		}
	}()
	const restore = "*nat\n:KUBE-LEASTPRIV - [0:0]\nCOMMIT\n"
	tools := []struct {
		name  string
		argv  []string
		stdin string
		needs []string
	}{
		{"iptables-nft-restore", []string{"iptables-nft-restore", "--noflush"}, restore, []string{"NET_ADMIN"}},
		{"iptables-legacy-restore", []string{"iptables-legacy-restore", "--noflush", "-w", "5"}, restore, []string{"NET_ADMIN", "NET_RAW"}},
		{"nft", []string{"nft", "-f", "-"}, "add table ip leastpriv\n", []string{"NET_ADMIN"}},
		{"conntrack -L", []string{"conntrack", "-L"}, "", []string{"NET_ADMIN"}},
	}
	sets := [][]string{conf.Caps, {"NET_ADMIN"}, {"NET_RAW"}, nil}
	for _, set := range sets {
		for _, tool := range tools {
			cc := conf
			cc.Caps = set
			out, err := cc.RunConfined(c.ctx, ns, tool.stdin, tool.argv...)
			want := subset(tool.needs, set)
			if (err == nil) != want {
				t.Errorf("%s with capabilities %v: error %v, want success %v:\n%s", tool.name, set, err, want, out)
			}
			t.Logf("RESULT %s with %v: ok=%v %s", tool.name, set, err == nil, firstLine(out))
		}
	}
}

// subset reports whether every one of a is in b.
func subset(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
