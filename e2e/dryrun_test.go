package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestDryRun: `svcproxy --dry-run` prints the complete iptables-restore
// input (mentioning the Service's ClusterIP, DNATing to its endpoints),
// exits 0, and leaves the kernel exactly as it was: iptables-save of every
// table, ip6tables-save and `nft list ruleset` in the node namespace are
// identical before and after (ignoring counters and date comments).
func TestDryRun(t *testing.T) {
	c := begin(t)
	svc := c.service("dry-run", "web", []harness.Port{harness.TCP}, backends...)

	before := kernelSnapshot(c)
	start := time.Now()
	out, stderr, err := env.DryRun(c.ctx)
	c.since(fmt.Sprintf("svcproxy --dry-run (%d lines of output)", strings.Count(out, "\n")), start)
	if err != nil {
		t.Fatalf("svcproxy --dry-run: %v\nstderr:\n%s", err, stderr)
	}
	wantText := []string{"*nat", "*filter", "COMMIT", ":KUBE-SERVICES", svc.Spec.ClusterIP}
	dnats := harness.ServiceDNATs(out, svc.Namespace, svc.Name, "tcp")
	if env.ProxyMode == "nftables" {
		wantText = []string{"add table ip svcproxy", "add map ip svcproxy endpoints-ip-tcp", svc.Spec.ClusterIP}
		dnats = harness.NFTServiceDNATs(out, svc.Spec.ClusterIP, "80")
	}
	for _, want := range wantText {
		if !strings.Contains(out, want) {
			c.Errorf("dry-run output lacks %q", want)
		}
	}
	var want []string
	for _, p := range backends {
		want = append(want, net.JoinHostPort(p.IP, strconv.Itoa(harness.EchoPort)))
	}
	if got := dnats; strings.Join(got, ",") != strings.Join(want, ",") {
		c.Errorf("dry-run DNATs %s/%s:tcp to %v, want %v", svc.Namespace, svc.Name, got, want)
	}
	// The cluster is dual-stack: both families are printed, and each is
	// valid input for the command that would load it (checked, not
	// applied).
	checks := map[string][]string{}
	if env.ProxyMode == "nftables" {
		if !strings.Contains(out, "add table ip6 svcproxy") {
			c.Errorf("dry-run output has no IPv6 table")
		}
		checks[out] = []string{"nft", "-c", "-f", "-"}
	} else {
		v4, v6, ok := strings.Cut(out, "# IPv6: ip6tables-restore input\n")
		if !ok || !strings.Contains(v6, "*nat") {
			c.Errorf("dry-run output has no IPv6 section")
		}
		checks[v4] = []string{"iptables-restore", "--test"}
		checks[v6] = []string{"ip6tables-restore", "--test"}
	}
	for input, argv := range checks {
		cmd := env.Node.Command(c.ctx, argv...)
		cmd.Stdin = strings.NewReader(input)
		if o, err := cmd.CombinedOutput(); err != nil {
			c.Errorf("%s rejects the dry-run output: %v: %s", strings.Join(argv, " "), err, o)
		}
	}
	if c.Failed() {
		c.Logf("dry-run output:\n%s", out)
	}

	after := kernelSnapshot(c)
	for _, k := range []string{"iptables-save", "ip6tables-save", "nft list ruleset"} {
		if before[k] != after[k] {
			c.Errorf("%s changed across svcproxy --dry-run:\n%s", k, lineDiff(before[k], after[k]))
		}
	}
}

var (
	counterRe    = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounterRe = regexp.MustCompile(`counter packets \d+ bytes \d+`)
	nftExpiresRe = regexp.MustCompile(` expires [0-9dhms]+`)
)

// kernelSnapshot is the node's whole ruleset in three views, without
// counters, date comments and the time left to dynamic set elements.
func kernelSnapshot(c *tc) map[string]string {
	c.Helper()
	m := map[string]string{}
	for k, argv := range map[string][]string{
		"iptables-save":    {"iptables-save"},
		"ip6tables-save":   {"ip6tables-save"},
		"nft list ruleset": {"nft", "list", "ruleset"},
	} {
		out, err := env.Node.Run(c.ctx, argv...)
		if err != nil {
			c.Fatalf("%s: %v", k, err)
		}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			l = counterRe.ReplaceAllString(l, "[0:0]")
			l = nftCounterRe.ReplaceAllString(l, "counter")
			l = nftExpiresRe.ReplaceAllString(l, "")
			lines = append(lines, l)
		}
		m[k] = strings.Join(lines, "\n")
	}
	return m
}

// lineDiff lists the lines only in a ("-") and only in b ("+").
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if count[l] > 0 {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if count[l] < 0 {
			out = append(out, "+ "+l)
		}
	}
	if len(out) == 0 {
		return "(same lines, different order)"
	}
	return strings.Join(out, "\n")
}

// dryRunManifests are the files of TestDryRunManifests: a dual-stack node
// with a ClusterIP, a NodePort, a LoadBalancer with source ranges and
// externalTrafficPolicy Local, session affinity and a Service without
// endpoints, as a multi-document YAML file and a JSON List.
var dryRunManifests = map[string]string{
	"services.yaml": `apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.0.10}, {type: InternalIP, address: "fd00:192::10"}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIPs: [10.96.0.10, "fd00:10:96::10"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [203.0.113.0/24]
  ports: [{name: https, port: 443, targetPort: 8443, nodePort: 30443}]
status:
  loadBalancer: {ingress: [{ip: 198.51.100.7}]}
---
apiVersion: v1
kind: Service
metadata: {name: sticky, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: http, port: 80}]
`,
	"slices.json": `{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
   "metadata": {"name": "web-4", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
   "addressType": "IPv4",
   "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-a"}, {"addresses": ["10.244.2.5"], "nodeName": "node-b"}],
   "ports": [{"name": "http", "port": 8080}]},
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
   "metadata": {"name": "web-6", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
   "addressType": "IPv6",
   "endpoints": [{"addresses": ["fd00:10:244:1::5"], "nodeName": "node-a"}],
   "ports": [{"name": "http", "port": 8080}]},
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
   "metadata": {"name": "np", "namespace": "shop", "labels": {"kubernetes.io/service-name": "np"}},
   "addressType": "IPv4",
   "endpoints": [{"addresses": ["10.244.2.7"], "nodeName": "node-b"}],
   "ports": [{"name": "http", "port": 8080}]},
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
   "metadata": {"name": "lb", "namespace": "shop", "labels": {"kubernetes.io/service-name": "lb"}},
   "addressType": "IPv4",
   "endpoints": [{"addresses": ["10.244.1.8"], "nodeName": "node-a"}, {"addresses": ["10.244.2.8"], "nodeName": "node-b"}],
   "ports": [{"name": "https", "port": 8443}]},
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
   "metadata": {"name": "sticky", "namespace": "shop", "labels": {"kubernetes.io/service-name": "sticky"}},
   "addressType": "IPv4",
   "endpoints": [{"addresses": ["10.244.1.9"], "nodeName": "node-a"}, {"addresses": ["10.244.2.9"], "nodeName": "node-b"}],
   "ports": [{"name": "http", "port": 8080}]}
]}
`,
}

// TestDryRunManifests: `svcproxy --dry-run --manifests DIR`, run with no
// cluster in a fresh empty namespace, prints the same bytes twice; both
// families (the files are dual-stack, no flag says so), each accepted as
// is by nft -c -f or iptables-restore --test / ip6tables-restore --test in
// that empty namespace, which holds no rules afterwards. A broken file
// fails it with nothing on stdout and an error naming the file and object.
func TestDryRunManifests(t *testing.T) {
	c := beginWithoutSvcproxy(t)
	dir := t.TempDir()
	for name, text := range dryRunManifests {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	empty, err := env.EmptyNetns(c.ctx, "dryrun-empty")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--dry-run", "--manifests", dir, "--hostname-override", "node-a", "--proxy-mode", env.ProxyMode}
	var outs []string
	for range 2 {
		out, stderr, status, err := env.RunSvcproxy(c.ctx, empty, args...)
		if err != nil || status != 0 {
			t.Fatalf("svcproxy %s: status %d, %v\nstderr:\n%s", strings.Join(args, " "), status, err, stderr)
		}
		outs = append(outs, out)
	}
	out := outs[0]
	if outs[1] != out {
		t.Errorf("two runs differ:\n%s", lineDiff(outs[0], outs[1]))
	}
	for _, want := range []string{"10.96.0.10", "fd00:10:96::10", "10.244.1.5", "fd00:10:244:1::5", "198.51.100.7", "203.0.113.0/24", "30080"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s", want)
		}
	}
	checks := map[string][]string{out: {"nft", "-c", "-f", "-"}}
	if env.ProxyMode == "nftables" {
		if !strings.Contains(out, "add table ip6 svcproxy") {
			t.Errorf("output has no IPv6 table")
		}
	} else {
		v4, v6, ok := strings.Cut(out, "# IPv6: ip6tables-restore input\n")
		if !ok || !strings.Contains(v6, "*nat") {
			t.Errorf("output has no IPv6 section")
		}
		checks = map[string][]string{v4: {"iptables-restore", "--test"}, v6: {"ip6tables-restore", "--test"}}
	}
	for input, argv := range checks {
		cmd := empty.Command(c.ctx, argv...)
		cmd.Stdin = strings.NewReader(input)
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s in an empty namespace rejects the output: %v: %s", strings.Join(argv, " "), err, o)
		}
	}
	if rs, err := empty.Run(c.ctx, "nft", "list", "ruleset"); err != nil || strings.Contains(rs, "svcproxy") || strings.Contains(rs, "KUBE-") {
		t.Errorf("the empty namespace holds rules after the checks (%v):\n%s", err, rs)
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}

	bad := filepath.Join(dir, "zz-bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-x, namespace: shop}\naddressType: IPv4\nendpoints: [{addresses: [10.244.1.300]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, status, err := env.RunSvcproxy(c.ctx, empty, args...)
	if err != nil || status == 0 || out != "" {
		t.Errorf("with a bad file: status %d, %v, %d bytes on stdout, want a failure and none", status, err, len(out))
	}
	for _, want := range []string{bad, "EndpointSlice shop/web-x", "10.244.1.300"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// TestDryRunDiff: `svcproxy --dry-run --diff` against the node right after
// svcproxy synced, and after connections filled session affinity state,
// exits 0 and prints nothing; with svcproxy stopped (so it cannot repair)
// and one of its rules (iptables) or map elements (nftables) removed by
// hand, it exits 1 and its diff adds back that one line, leaving the
// node's rules as they were. An unusable input exits 2.
func TestDryRunDiff(t *testing.T) {
	c := begin(t)
	svc := c.service("dry-run-diff", "web", []harness.Port{harness.TCP}, backends...)
	ip := svc.Spec.ClusterIP
	// Traffic with session affinity fills state the packet path keeps (the
	// recent module's lists; nftables' affinity set): no difference.
	sticky := c.createService("dry-run-diff-sticky", affinity(300, v1.ServiceSpec{}))
	c.endpoints(sticky, backends...)
	c.waitDNATs(sticky, "tcp", backends...)
	if rs := c.connect(client, harness.ClientOptions{Proto: "tcp", Target: net.JoinHostPort(sticky.Spec.ClusterIP, "80"), Count: 3}); only(rs) == "" {
		t.Fatalf("3 connections with ClientIP affinity: %s, want one backend", harness.FormatTally(harness.Tally(rs)))
	}
	if env.ProxyMode == "nftables" {
		out, err := env.Node.Run(c.ctx, "nft", "list", "set", "ip", "svcproxy", "affinity-tcp-300")
		if err != nil || !strings.Contains(out, client.IP+" . "+sticky.Spec.ClusterIP+" . 80") {
			t.Fatalf("the affinity set has no entry for %s: %v\n%s", client.IP, err, out)
		}
	}

	// Deleted Services of earlier tests may still be syncing: wait for
	// the node to settle, but no longer than a generous bound.
	var out, stderr string
	var status int
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 1; ; attempt++ {
		var err error
		out, stderr, err = env.DryRun(c.ctx, "--diff")
		c.Logf("--diff attempt %d: status %d, %d bytes of diff", attempt, harness.ExitStatus(err), len(out))
		status = harness.ExitStatus(err)
		if status == 0 && out == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if status != 0 || out != "" {
		t.Fatalf("--diff right after a sync: status %d, want 0 and no output; stdout:\n%s\nstderr:\n%s", status, out, stderr)
	}

	if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
		c.Logf("svcproxy stop: %v", err)
	}
	c.Cleanup(func() {
		if err := env.StartSvcproxyAndWait(context.Background(), 30*time.Second); err != nil {
			c.Errorf("restart svcproxy: %v", err)
		}
	})
	var want string
	if env.ProxyMode == "nftables" {
		elem := ip + " . tcp . 80"
		if _, err := env.Node.Run(c.ctx, "nft", "delete", "element", "ip", "svcproxy", "service-ips", "{", elem, "}"); err != nil {
			t.Fatal(err)
		}
		want = "+\t\t\t" + elem + " : goto cluster-ip,"
	} else {
		nat, err := env.IPTablesSave(c.ctx, "nat")
		if err != nil {
			t.Fatal(err)
		}
		comment := fmt.Sprintf(`--comment "%s/%s:tcp cluster IP"`, svc.Namespace, svc.Name)
		for _, l := range strings.Split(nat, "\n") {
			if strings.HasPrefix(l, "-A KUBE-SERVICES ") && strings.Contains(l, comment) {
				want = "+" + l
				cmd := env.Node.Command(c.ctx, "iptables-restore", "--noflush")
				cmd.Stdin = strings.NewReader("*nat\n-D" + strings.TrimPrefix(l, "-A") + "\nCOMMIT\n")
				if o, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("deleting %s: %v: %s", l, err, o)
				}
			}
		}
		if want == "" {
			t.Fatalf("no KUBE-SERVICES rule with %s:\n%s", comment, nat)
		}
	}
	// The desired rules are loaded into a scratch namespace, never the
	// node's: its rules are the same before and after.
	before := kernelSnapshot(c)
	out, stderr, err := env.DryRun(c.ctx, "--diff")
	after := kernelSnapshot(c)
	for _, k := range []string{"iptables-save", "ip6tables-save", "nft list ruleset"} {
		if before[k] != after[k] {
			c.Errorf("%s changed across svcproxy --dry-run --diff:\n%s", k, lineDiff(before[k], after[k]))
		}
	}
	if status := harness.ExitStatus(err); status != 1 {
		t.Errorf("--diff after the damage: status %d (%v), want 1", status, err)
	}
	c.Logf("--diff after removing one by hand:\n%s", out)
	if !strings.Contains(out, want) {
		t.Errorf("the diff lacks %q:\n%s", want, out)
	}
	var changed []string
	for _, l := range strings.Split(out, "\n") {
		if (strings.HasPrefix(l, "+") || strings.HasPrefix(l, "-")) && !strings.HasPrefix(l, "+++ ") && !strings.HasPrefix(l, "--- ") {
			changed = append(changed, l)
		}
	}
	if len(changed) != 1 {
		t.Errorf("the diff changes %d lines, want only the one removed:\n%s", len(changed), out)
	}
	if strings.Contains(stderr, "svcproxy:") {
		t.Errorf("a difference is reported as an error:\n%s", stderr)
	}

	_, stderr, err = env.DryRun(c.ctx, "--diff", "--kubeconfig", filepath.Join(t.TempDir(), "none"))
	if status := harness.ExitStatus(err); status != 2 || !strings.Contains(stderr, "svcproxy:") {
		t.Errorf("--diff without an API server: status %d, want 2 and an error; stderr:\n%s", status, stderr)
	}
}
