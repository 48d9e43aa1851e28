package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Explanation is what `svcproxy explain -o json` answers: proxier.Trace's
// fields (decoded here as a script would read them: a Policy is printed by
// its name), the rules that carry it out in the proxy mode, and the kind
// of source explain took the packet for.
type Explanation struct {
	Verdict          proxier.Outcome     `json:"verdict"`
	Reason           proxier.Reason      `json:"reason"`
	Port             *ExplainedPort      `json:"port"`
	Policy           *ExplainedPolicy    `json:"policy"`
	Endpoints        []ExplainedEndpoint `json:"endpoints"`
	Affinity         *ExplainedAffinity  `json:"affinity"`
	Masquerade       bool                `json:"masquerade"`
	MasqueradeReason proxier.Reason      `json:"masqueradeReason"`
	Rules            []json.RawMessage   `json:"rules"`
	SourceKind       proxier.SourceKind  `json:"sourceKind"`
	// JSON is the answer as printed, for failure messages.
	JSON string `json:"-"`
}

// ExplainedPort is the service port the packet met, and how.
type ExplainedPort struct {
	Name    proxier.ServicePortName `json:"name"`
	Via     proxier.Via             `json:"via"`
	Address netip.AddrPort          `json:"address"`
}

// ExplainedPolicy is the traffic policy in force ("Cluster" or "Local").
type ExplainedPolicy struct {
	Traffic      string `json:"traffic"`
	Policy       string `json:"policy"`
	ShortCircuit bool   `json:"shortCircuit"`
}

// ExplainedEndpoint is one endpoint the packet may be DNATed to.
type ExplainedEndpoint struct {
	Endpoint    netip.AddrPort `json:"endpoint"`
	Node        string         `json:"node"`
	Local       bool           `json:"local"`
	Probability float64        `json:"probability"`
	Masquerade  bool           `json:"masquerade"`
	Hairpin     bool           `json:"hairpin"`
}

// ExplainedAffinity is the port's ClientIP session affinity.
type ExplainedAffinity struct {
	TimeoutSeconds int32            `json:"timeoutSeconds"`
	Protocol       proxier.Protocol `json:"protocol"`
	Destinations   []netip.AddrPort `json:"destinations"`
}

// ExplainArgs is the command line of `svcproxy explain`: the subcommand,
// the flags the running proxy has (SvcproxyArgs, so the answer is about
// the same configuration), `-o json`, then extra (--from, --to, ...).
func (e *Env) ExplainArgs(extra ...string) []string {
	args := append([]string{"explain"}, e.SvcproxyArgs()...)
	args = append(args, "-o", "json")
	return append(args, extra...)
}

// Explain runs `svcproxy explain` (ExplainArgs) in the node namespace,
// against the live API server, and decodes its answer. An answer without
// a verdict is an error: it did not follow the format.
func (e *Env) Explain(ctx context.Context, extra ...string) (*Explanation, error) {
	if e.Bins.Svcproxy == "" {
		return nil, errors.New("svcproxy was not built (Options.SkipSvcproxy)")
	}
	argv := append([]string{e.Bins.Svcproxy}, e.ExplainArgs(extra...)...)
	cmd := e.Node.Command(ctx, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("svcproxy explain %s: %w\nstdout:\n%s\nstderr:\n%s",
			strings.Join(extra, " "), err, out.String(), tailLines(errb.String(), 20))
	}
	ex := &Explanation{JSON: out.String()}
	if err := json.Unmarshal(out.Bytes(), ex); err != nil {
		return nil, fmt.Errorf("svcproxy explain %s: decode its JSON: %w\n%s", strings.Join(extra, " "), err, out.String())
	}
	if ex.Verdict == "" {
		return nil, fmt.Errorf("svcproxy explain %s: no verdict in its answer:\n%s", strings.Join(extra, " "), out.String())
	}
	return ex, nil
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
