package iptables

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

// savedRunner is a Runner over saved tables: Save returns them, Chains
// their chain names (or chainsErr), Restore records its input.
type savedRunner struct {
	saved     map[string]string
	chainsErr error
	restored  []string
}

func (r *savedRunner) Save(_ context.Context, table string) ([]byte, error) {
	return []byte(r.saved[table]), nil
}

func (r *savedRunner) Restore(_ context.Context, data []byte) error {
	r.restored = append(r.restored, string(data))
	return nil
}

func (r *savedRunner) Chains(_ context.Context, table string) ([]string, error) {
	if r.chainsErr != nil {
		return nil, r.chainsErr
	}
	var names []string
	for name := range parseSave([]byte(r.saved[table])).chains {
		names = append(names, name)
	}
	return names, nil
}

func (r *savedRunner) Rules(context.Context, string, string) ([]string, bool, error) {
	return nil, false, errors.New("not used")
}

const (
	savedNAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:OTHER - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n" +
		"-A PREROUTING -j OTHER\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n" +
		"-A KUBE-SERVICES -j KUBE-SVC-ABC\nCOMMIT\n"
	savedFilterForeign = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n"
)

func TestCleanupPlan(t *testing.T) {
	for _, tc := range []struct {
		name, table, saved string
		wantChains         []string
		wantInput          string
	}{
		{"our chains and the jump into them", NAT, savedNAT, []string{"KUBE-SERVICES", "KUBE-SVC-ABC"},
			"*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n" +
				"-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n" +
				"-X KUBE-SERVICES\n-X KUBE-SVC-ABC\nCOMMIT\n"},
		{"KUBE-FIREWALL is kubelet's too", Filter, savedFilterForeign, nil, ""},
		{"empty table", Mangle, "", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, chains := cleanupPlan(tc.table, []byte(tc.saved))
			if !slices.Equal(chains, tc.wantChains) {
				t.Errorf("chains %q, want %q", chains, tc.wantChains)
			}
			if string(in) != tc.wantInput {
				t.Errorf("input:\n%s\nwant:\n%s", in, tc.wantInput)
			}
		})
	}
}

// TestLeftoverTables: which tables CleanupLeftovers reads per backend.
func TestLeftoverTables(t *testing.T) {
	dir := t.TempDir()
	names := filepath.Join(dir, "ip_tables_names")
	if err := os.WriteFile(names, []byte("filter\nnat\nraw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := legacyTablesFile[proxier.IPv4]
	t.Cleanup(func() { legacyTablesFile[proxier.IPv4] = old })
	saved := map[string]string{NAT: savedNAT, Filter: savedFilterForeign}
	for _, tc := range []struct {
		name      string
		mode      string
		file      string
		chainsErr error
		want      []string
	}{
		{"legacy: the tables the kernel lists", "legacy", names, nil, []string{NAT, Filter}},
		{"legacy: no x_tables at all", "legacy", filepath.Join(dir, "missing"), nil, nil},
		{"unsuffixed tools are legacy", "", names, nil, []string{NAT, Filter}},
		{"nft: tables holding our chains", "nft", names, nil, []string{NAT}},
		{"nft: every table when nft cannot list", "nft", names, errors.New("no nft"), []string{NAT, Filter, Mangle}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			legacyTablesFile[proxier.IPv4] = tc.file
			l := leftovers{family: proxier.IPv4, bin: Binaries{Mode: tc.mode}, run: &savedRunner{saved: saved, chainsErr: tc.chainsErr}}
			got, err := l.tables(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("tables %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLeftoversCleanup(t *testing.T) {
	run := &savedRunner{saved: map[string]string{NAT: savedNAT, Filter: savedFilterForeign}}
	l := leftovers{family: proxier.IPv6, bin: Binaries{Mode: "nft", Command: "ip6tables-nft"}, run: run}
	got, err := l.cleanup(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].String() != "IPv6 nft nat: KUBE-SERVICES +1 service chains" {
		t.Errorf("removed %v, want only IPv6 nft nat's two chains", got)
	}
	if len(run.restored) != 1 || !strings.HasPrefix(run.restored[0], "*nat\n") {
		t.Errorf("restored %q, want one nat transaction", run.restored)
	}
}

// TestKernelCleanupLeftovers: our chains go from both backends; foreign
// chains stay; and no table is created that was not there.
func TestKernelCleanupLeftovers(t *testing.T) {
	ns := kernelNetns(t)
	ctx := context.Background()
	var backends []leftovers
	for _, mode := range []string{"nft", "legacy"} {
		_, bin := modeRunner(t, ns, mode)
		backends = append(backends, leftovers{family: proxier.IPv4, bin: bin, netns: ns,
			run: execRunner{bin: bin, wrap: []string{"ip", "netns", "exec", ns}, netns: ns}})
		for _, args := range [][]string{
			{"-t", "nat", "-N", "OTHER"}, {"-t", "nat", "-A", "PREROUTING", "-j", "OTHER"},
			{"-t", "nat", "-N", "KUBE-SERVICES"}, {"-t", "nat", "-N", "KUBE-SVC-X"},
			{"-t", "nat", "-A", "KUBE-SERVICES", "-j", "KUBE-SVC-X"},
			{"-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
		} {
			if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin.Command}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("%s %v: %v: %s", bin.Command, args, err, out)
			}
		}
	}
	legacyTables := func() string {
		out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/ip_tables_names").CombinedOutput()
		if err != nil {
			t.Fatalf("legacy tables: %v: %s", err, out)
		}
		return strings.Join(strings.Fields(string(out)), " ")
	}
	before := legacyTables()
	for _, l := range backends {
		got, err := l.cleanup(ctx)
		if err != nil {
			t.Fatalf("%s: %v", l.bin.Command, err)
		}
		want := "IPv4 " + l.bin.Mode + " nat: KUBE-SERVICES +1 service chains"
		if len(got) != 1 || got[0].String() != want {
			t.Errorf("%s removed %v, want %q", l.bin.Command, got, want)
		}
		dump := save(t, ns, l.bin)
		if strings.Contains(dump, "KUBE-") {
			t.Errorf("%s still has KUBE- chains:\n%s", l.bin.Save, dump)
		}
		if !strings.Contains(dump, "-A PREROUTING -j OTHER") {
			t.Errorf("%s lost the foreign jump:\n%s", l.bin.Save, dump)
		}
		// Idempotent, and with nothing left, nothing to report.
		if again, err := l.cleanup(ctx); err != nil || len(again) > 0 {
			t.Errorf("%s second cleanup: %v, %v", l.bin.Command, again, err)
		}
	}
	if after := legacyTables(); after != before {
		t.Errorf("legacy tables %q before the cleanup, %q after: it created some", before, after)
	}
}
