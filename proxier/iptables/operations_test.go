package iptables

import (
	"context"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	pt "github.com/svcproxy/svcproxy/proxier/proxiertest"
)

// TestRestoreOperations: chain declarations and rule lines count; table
// headers, COMMIT, comments and blank lines do not.
func TestRestoreOperations(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        int
	}{
		{"empty", "", 0},
		{"table only", "*nat\nCOMMIT\n", 0},
		{"chains and rules", "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-X\n-A KUBE-SVC-X -j DNAT\nCOMMIT\n", 4},
		{"deletes and inserts", "*filter\n# a comment\n\n-X KUBE-SVC-OLD\n-I INPUT 1 -j KUBE-FIREWALL\n-D FORWARD -j KUBE-FORWARD\nCOMMIT\n", 3},
		{"no final newline", "*nat\n-A KUBE-SERVICES -j ACCEPT", 1},
	} {
		if got := restoreOperations([]byte(tc.input)); got != tc.want {
			t.Errorf("%s: %d operations, want %d", tc.name, got, tc.want)
		}
	}
}

// TestSyncOperations: a full sync reports the operations of its input, a
// sync that changes nothing none, and a one-endpoint change fewer than
// the full sync.
func TestSyncOperations(t *testing.T) {
	r := &emptyRunner{}
	p := New(pt.Config(), Options{}, r)
	svc := func(eps ...proxier.Endpoint) *proxier.State {
		return pt.State(proxier.IPv4, pt.Service("ns/web:http", proxier.TCP, "172.30.0.1", 80, pt.Endpoints(eps...)),
			pt.Service("ns/db", proxier.TCP, "172.30.0.2", 5432, pt.Endpoints(pt.Endpoint("10.0.2.1", 5432))))
	}
	one := pt.Endpoint("10.0.1.1", 8080)
	steps := []struct {
		what string
		st   *proxier.State
	}{
		{"full", svc(one)},
		{"unchanged", svc(one)},
		{"one endpoint more", svc(one, pt.Endpoint("10.0.1.2", 8080))},
	}
	var ops []int
	for _, s := range steps {
		before := len(r.restored)
		if err := p.Sync(context.Background(), s.st); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		got := p.LastSyncOperations()
		want := 0
		if len(r.restored) > before {
			want = restoreOperations([]byte(r.restored[len(r.restored)-1]))
		}
		if got != want {
			t.Errorf("%s: %d operations reported, the input has %d", s.what, got, want)
		}
		ops = append(ops, got)
	}
	if ops[0] == 0 || ops[1] != 0 || ops[2] == 0 || ops[2] >= ops[0] {
		t.Errorf("operations full, unchanged, one endpoint = %v; want >0, 0, and between", ops)
	}
}

// emptyRunner is a kernel without rules that records each restore input.
type emptyRunner struct{ restored []string }

func (r *emptyRunner) Save(context.Context, string) ([]byte, error)     { return nil, nil }
func (r *emptyRunner) Chains(context.Context, string) ([]string, error) { return nil, nil }
func (r *emptyRunner) Rules(context.Context, string, string) ([]string, bool, error) {
	return nil, false, nil
}

func (r *emptyRunner) Restore(_ context.Context, data []byte) error {
	r.restored = append(r.restored, string(data))
	return nil
}
