package proxier

// Location is one rule or set element of a backend's rendered ruleset that
// does a step of a packet's trace, as --dry-run writes it, so that an
// operator finds it in the kernel. iptables names a rule line of a table's
// chain (Table, Chain, Rule, the line as iptables-restore reads it);
// nftables names a chain's rule (Table, Chain, Rule) or an element of a
// set or map (Table, Set, Element).
type Location struct {
	// Step is what the rule or element does for the packet: match (meets
	// the service port), firewall, policy, short-circuit, masquerade,
	// affinity, endpoint, hairpin, reject or drop.
	Step    string `json:"step"`
	Table   string `json:"table"` // iptables: "nat" or "filter"; nftables: "ip svcproxy" or "ip6 svcproxy"
	Chain   string `json:"chain,omitempty"`
	Rule    string `json:"rule,omitempty"`
	Set     string `json:"set,omitempty"`
	Element string `json:"element,omitempty"`
}
