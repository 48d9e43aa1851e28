package main

import (
	"fmt"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// text is the explanation for a reader: what was assumed of the source,
// the trace one fact a line (proxier.Trace's String), then the rules.
func (e explanation) text() string {
	var b strings.Builder
	proxier.TextLine(&b, "node", "%s, %s mode, %s", e.Node, e.Mode, e.Family)
	proxier.TextLine(&b, "source", "%s is %s (%s)", e.Packet.Source, e.SourceKind, e.SourceKindWhy)
	trace := e.Trace.String()
	if e.Port == nil {
		// After the packet line: nothing matched.
		packet, rest, _ := strings.Cut(trace, "\n")
		b.WriteString(packet + "\n")
		proxier.TextLine(&b, "port", "none matched")
		trace = rest
	}
	b.WriteString(trace)
	if e.Verdict == proxier.OutcomeNotOurs {
		proxier.TextLine(&b, "rules", "none: svcproxy's rules let the packet pass")
		return b.String()
	}
	if e.Mode == "nftables" {
		proxier.TextLine(&b, "rules", "in table %s (nft list ruleset; --dry-run prints the same)", e.tableName())
	} else {
		proxier.TextLine(&b, "rules", "iptables-restore lines (--dry-run prints them; iptables-save orders the matches differently)")
	}
	for _, l := range e.Rules {
		switch {
		case l.Set != "":
			fmt.Fprintf(&b, "  %-13s set %s: %s\n", l.Step, l.Set, l.Element)
		case e.Mode == "nftables":
			fmt.Fprintf(&b, "  %-13s chain %s: %s\n", l.Step, l.Chain, l.Rule)
		default:
			fmt.Fprintf(&b, "  %-13s %s %s\n", l.Step, l.Table, l.Rule)
		}
	}
	return b.String()
}

// tableName is the nftables table the locations are in.
func (e explanation) tableName() string {
	for _, l := range e.Rules {
		if l.Table != "" {
			return l.Table
		}
	}
	return ""
}
