package proxier

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// TextLine writes one fact of a trace's text to w: the key in a column of
// its own, then the value. Texts that add lines to a trace's (explain's)
// write them with it, so that theirs line up.
func TextLine(w io.Writer, key, format string, args ...any) {
	fmt.Fprintf(w, "%-10s %s\n", key, fmt.Sprintf(format, args...))
}

// String is the trace as text, one fact a line:
//
//	packet   10.244.1.5 (local-pod) -> 10.96.0.10:80/TCP
//	port     ns/web:http/TCP via ClusterIP 10.96.0.10:80
//	policy   internal Cluster
//	endpoint 10.244.1.2:8080 on node-1 (local) p=0.5000
//	endpoint 10.244.2.2:8080 on node-2 p=0.5000
//	masquerade no: ClusterIP traffic that the local-traffic match (--detect-local-mode) counts as a pod's keeps its source
//	verdict  DNAT: to a cluster endpoint
func (t Trace) String() string {
	var b strings.Builder
	pk := t.Packet
	TextLine(&b, "packet", "%s (%s) -> %s/%s", pk.Source, pk.Kind, pk.Dest, pk.Protocol)
	if t.Port != nil {
		TextLine(&b, "port", "%s/%s via %s %s", t.Port.Name, t.Port.Name.Protocol, t.Port.Via, t.Port.Address)
	}
	if t.Policy != nil {
		sc := ""
		if t.Policy.ShortCircuit {
			sc = ", short-circuited"
		}
		TextLine(&b, "policy", "%s %s%s", t.Policy.Traffic, t.Policy.Policy, sc)
	}
	for _, c := range t.Endpoints {
		var s strings.Builder
		s.WriteString(c.Endpoint.String())
		if c.Node != "" {
			s.WriteString(" on " + c.Node)
		}
		if c.Local {
			s.WriteString(" (local)")
		}
		s.WriteString(" p=" + strconv.FormatFloat(c.Probability, 'f', 4, 64))
		if c.Hairpin {
			s.WriteString(" masqueraded: hairpin")
		}
		TextLine(&b, "endpoint", "%s", s.String())
	}
	if a := t.Affinity; a != nil {
		dests := make([]string, len(a.Destinations))
		for i, d := range a.Destinations {
			dests[i] = d.String()
		}
		TextLine(&b, "affinity", "ClientIP for %ds, shared by %s", a.TimeoutSeconds, strings.Join(dests, " "))
	}
	if t.Verdict == OutcomeDNAT {
		yes := "no"
		if t.Masquerade {
			yes = "yes"
		}
		TextLine(&b, "masquerade", "%s: %s", yes, t.MasqueradeReason)
	}
	TextLine(&b, "verdict", "%s: %s", t.Verdict, t.Reason)
	return b.String()
}
