package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
	"github.com/svcproxy/svcproxy/syncer"
)

func init() { syncer.PreferList() }

// dryRunArgs runs `svcproxy --dry-run --manifests testdata/manifests/dir
// args...` through the functions main runs, and returns its stdout.
func dryRunArgs(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	argv := append([]string{"--dry-run", "--manifests", filepath.Join("testdata", "manifests", dir), "--hostname-override", "node-a"}, args...)
	o, err := parseFlags(argv)
	if err != nil {
		t.Fatalf("parseFlags(%q): %v", argv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	err = runDryRun(ctx, o, &out)
	return out.String(), err
}

// dryRunCases are the golden cases: testdata/manifests/<dir> in each mode
// gives testdata/dryrun/<dir>-<mode>.golden.
var dryRunCases = []struct {
	dir  string
	args []string
	// families the output must hold
	v6 bool
}{
	// Dual-stack from the files alone (IPv6 Services and ServiceCIDRs): a
	// ClusterIP, a NodePort, a LoadBalancer with source ranges and
	// externalTrafficPolicy Local, session affinity, a Service without
	// endpoints; a List file, a typed List, a multi-document file.
	{dir: "dualstack", args: []string{"--cluster-cidr", "10.244.0.0/16"}, v6: true},
	// Minimal hand-written objects, the API server's defaults filled in.
	{dir: "ipv4"},
}

// TestDryRunManifests: --dry-run --manifests prints the whole ruleset of
// each mode, the same bytes on every run, both families when the files
// are dual-stack, as in testdata/dryrun (-update rewrites them).
func TestDryRunManifests(t *testing.T) {
	for _, tc := range dryRunCases {
		for _, mode := range []string{"iptables", "nftables"} {
			t.Run(tc.dir+"/"+mode, func(t *testing.T) {
				args := append([]string{"--proxy-mode", mode}, tc.args...)
				got, err := dryRunArgs(t, tc.dir, args...)
				if err != nil {
					t.Fatal(err)
				}
				for range 2 {
					again, err := dryRunArgs(t, tc.dir, args...)
					if err != nil {
						t.Fatal(err)
					}
					if again != got {
						t.Fatal("the output differs from run to run")
					}
				}
				v6 := "# IPv6: ip6tables-restore input\n"
				if mode == "nftables" {
					v6 = "add table ip6 svcproxy"
				}
				if strings.Contains(got, v6) != tc.v6 {
					t.Errorf("output has IPv6 rules %v, want %v", !tc.v6, tc.v6)
				}
				pt.Golden(t, goldenPath(tc.dir, mode), got)
			})
		}
	}
}

func goldenPath(dir, mode string) string {
	return filepath.Join("testdata", "dryrun", dir+"-"+mode+".golden")
}

// TestDryRunManifestsLoadable: the golden outputs are what the kernel's
// tools accept in an empty network namespace (checked, not applied): nft
// -c -f, iptables-restore --test and ip6tables-restore --test.
func TestDryRunManifestsLoadable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace (unshare -n)")
	}
	for _, tc := range dryRunCases {
		for _, mode := range []string{"iptables", "nftables"} {
			t.Run(tc.dir+"/"+mode, func(t *testing.T) {
				b, err := os.ReadFile(goldenPath(tc.dir, mode))
				if err != nil {
					t.Fatal(err)
				}
				inputs := map[string]string{string(b): "nft -c -f -"}
				if mode == "iptables" {
					v4, v6, _ := strings.Cut(string(b), "# IPv6: ip6tables-restore input\n")
					inputs = map[string]string{v4: "iptables-restore --test"}
					if v6 != "" {
						inputs[v6] = "ip6tables-restore --test"
					}
				}
				for in, cmd := range inputs {
					c := exec.Command("unshare", append([]string{"-n"}, strings.Fields(cmd)...)...)
					c.Stdin = strings.NewReader(in)
					if out, err := c.CombinedOutput(); err != nil {
						t.Errorf("%s rejects it: %v\n%s", cmd, err, out)
					}
				}
			})
		}
	}
}

// TestDryRunManifestsErrors: a bad file fails the dry run with an error
// naming the file, the document or item, and the object; nothing is
// printed.
func TestDryRunManifestsErrors(t *testing.T) {
	for _, tc := range []struct {
		dir  string
		want []string // in the message, in this order
	}{
		{"bad-yaml", []string{"testdata/manifests/bad-yaml/services.yaml", "document 2 (line 8)", "yaml: line 13: mapping values are not allowed"}},
		{"bad-slice-field", []string{"testdata/manifests/bad-slice-field/slice.yaml", "document 1 (line 1)", "EndpointSlice default/web-2", `unknown field "endpoints[0].condition"`}},
		{"bad-slice-ip", []string{"testdata/manifests/bad-slice-ip/slice.yaml", "document 1", "List item 1", "EndpointSlice default/web-2", "endpoints[1].addresses[0]", "10.244.1.300"}},
		{"duplicate", []string{"testdata/manifests/duplicate/web.yaml", "Service default/web is also in testdata/manifests/duplicate/all.yaml"}},
	} {
		for _, mode := range []string{"iptables", "nftables"} {
			t.Run(tc.dir+"/"+mode, func(t *testing.T) {
				out, err := dryRunArgs(t, tc.dir, "--proxy-mode", mode)
				if err == nil {
					t.Fatalf("no error; output:\n%s", out)
				}
				if out != "" {
					t.Errorf("printed %d bytes despite the error", len(out))
				}
				if w, ok := missingInOrder(err.Error(), tc.want); ok {
					t.Fatalf("error %q lacks %q (in order)", err, w)
				}
			})
		}
	}
}

// TestDryRunManifestsNoNode: nftables mode opens NodePorts on the node's
// IP only (--nodeport-addresses=primary), so files without this node's
// Node fail, saying what is missing, unless --nodeport-addresses is given.
func TestDryRunManifestsNoNode(t *testing.T) {
	out, err := dryRunArgs(t, "ipv4", "--proxy-mode", "nftables", "--hostname-override", "node-z")
	if err == nil || out != "" || !strings.Contains(err.Error(), "--manifests testdata/manifests/ipv4 has no Node node-z") {
		t.Errorf("got %v and %d bytes, want an error naming the missing Node and no output", err, len(out))
	}
	out, err = dryRunArgs(t, "ipv4", "--proxy-mode", "nftables", "--hostname-override", "node-z", "--nodeport-addresses", "192.168.0.0/24")
	if err != nil || !strings.Contains(out, "10.96.0.10") {
		t.Errorf("with --nodeport-addresses: %v, output:\n%s", err, out)
	}
}
