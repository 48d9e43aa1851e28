package e2e

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

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
)

// kernelSnapshot is the node's whole ruleset in three views, without
// counters and date comments.
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
