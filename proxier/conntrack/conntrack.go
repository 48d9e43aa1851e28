// Package conntrack removes stale UDP conntrack entries after a sync, as
// kube-proxy's conntrack reconciler does. UDP has no teardown: a client that
// keeps sending from one source port keeps hitting the entry its first
// datagram made, so the entry outlives the rules that shaped it. After a
// sync that changed a UDP service, every UDP entry to a service frontend (a
// service IP and port, or any address at a NodePort) whose reply does not
// come from a serving endpoint (IP and port) of that frontend is deleted;
// the next datagram then meets the rules now in place. That covers entries
// made before the frontend had rules (never DNATed), entries DNATed to an
// endpoint that left, stopped serving or moved to another port, entries of
// a frontend with no serving endpoint left (the next datagram is rejected),
// and entries of a frontend that went away since the last cleanup (a
// deleted Service or port, a dropped NodePort, external or load-balancer
// IP), which count as having no serving endpoint.
package conntrack

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"

	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

const protoUDP = 17

// Entry is the part of a conntrack entry the decision needs.
type Entry struct {
	Proto    uint8
	OrigDst  netip.AddrPort
	ReplySrc netip.AddrPort
}

func entryOf(f conntrack.Flow) Entry {
	return Entry{
		Proto:    f.TupleOrig.Proto.Protocol,
		OrigDst:  netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort),
		ReplySrc: netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort),
	}
}

// serving is the set of serving endpoints (IP and port) behind a frontend;
// empty when none serves.
type serving map[netip.AddrPort]bool

// Targets is, for every UDP frontend, the serving endpoints an entry to it
// may be DNATed to: service addresses (ClusterIP, external IPs and
// load-balancer IPs, each with the service port) and NodePorts (any address).
type Targets struct {
	byAddr     map[netip.AddrPort]serving
	byNodePort map[uint16]serving
}

func newTargets() Targets {
	return Targets{byAddr: map[netip.AddrPort]serving{}, byNodePort: map[uint16]serving{}}
}

// TargetsFromPlan builds the targets of the UDP service ports in p, those
// without a serving endpoint included. Traffic policies, topology and
// readiness do not narrow the set (as in kube-proxy): a flow to any serving
// endpoint of the service is kept.
func TargetsFromPlan(p *proxier.Plan) Targets {
	t := newTargets()
	for _, sp := range p.Services {
		svc := sp.Svc
		if svc.Protocol != proxier.UDP {
			continue
		}
		eps := serving{}
		for _, e := range svc.Endpoints {
			if e.Serving {
				eps[netip.AddrPortFrom(e.IP, uint16(e.Port))] = true
			}
		}
		port := uint16(svc.Port)
		for _, ip := range append(append([]netip.Addr{svc.ClusterIP}, svc.ExternalIPs...), svc.LoadBalancerIPs...) {
			if ip.IsValid() {
				add(t.byAddr, netip.AddrPortFrom(ip, port), eps)
			}
		}
		if svc.NodePort != 0 {
			add(t.byNodePort, uint16(svc.NodePort), eps)
		}
	}
	return t
}

// add records eps behind frontend k; a frontend that two services claim
// keeps the endpoints of both.
func add[K comparable](m map[K]serving, k K, eps serving) {
	if old, ok := m[k]; ok {
		merged := maps.Clone(old)
		maps.Copy(merged, eps)
		eps = merged
	}
	m[k] = eps
}

// WithGone returns t plus every frontend of prev that t does not have, with
// no serving endpoint: the entries of a frontend that went away since prev
// are all stale.
func (t Targets) WithGone(prev Targets) Targets {
	out := Targets{byAddr: maps.Clone(t.byAddr), byNodePort: maps.Clone(t.byNodePort)}
	for k := range prev.byAddr {
		if _, ok := out.byAddr[k]; !ok {
			out.byAddr[k] = serving{}
		}
	}
	for k := range prev.byNodePort {
		if _, ok := out.byNodePort[k]; !ok {
			out.byNodePort[k] = serving{}
		}
	}
	return out
}

func (t Targets) empty() bool { return len(t.byAddr) == 0 && len(t.byNodePort) == 0 }

// Stale reports whether e should be deleted: a UDP entry to a frontend
// whose reply source is not one of the frontend's serving endpoints. A
// service address takes precedence over a NodePort of the same number.
func (t Targets) Stale(e Entry) bool {
	if e.Proto != protoUDP {
		return false
	}
	if eps, ok := t.byAddr[e.OrigDst]; ok {
		return !eps[e.ReplySrc]
	}
	if eps, ok := t.byNodePort[e.OrigDst.Port()]; ok {
		return !eps[e.ReplySrc]
	}
	return false
}

// table is a conntrack table: the netlink edge, replaced in tests.
type table interface {
	Dump(proxier.IPFamily) ([]conntrack.Flow, error)
	Delete(conntrack.Flow) error
	Close() error
}

// Cleaner runs the cleanup for one family after syncs that need it.
type Cleaner struct {
	family proxier.IPFamily
	// udp is the set of UDP services of the last cleaned plan, by pointer:
	// the syncer hands over a new *Service whenever one changes.
	udp map[*proxier.Service]bool
	// last is the targets of the last cleaned plan, from which the
	// frontends that a later plan no longer has are found.
	last    Targets
	deleted func(n int)
	open    func() (table, error)
}

// NewCleaner returns a cleaner for family f; deleted is told how many entries
// each run removed (for metrics).
func NewCleaner(f proxier.IPFamily, deleted func(n int)) *Cleaner {
	return &Cleaner{family: f, deleted: deleted, open: dialTable}
}

// Needed reports whether p changed any UDP service since the last cleanup
// (added, changed or removed one).
func (c *Cleaner) Needed(p *proxier.Plan) bool {
	cur := udpServices(p)
	if c.udp == nil || len(cur) != len(c.udp) {
		return true
	}
	for s := range cur {
		if !c.udp[s] {
			return true
		}
	}
	return false
}

func udpServices(p *proxier.Plan) map[*proxier.Service]bool {
	m := map[*proxier.Service]bool{}
	for _, sp := range p.Services {
		if sp.Svc.Protocol == proxier.UDP {
			m[sp.Svc] = true
		}
	}
	return m
}

// Clean deletes the stale entries for p if any UDP service changed: one
// dump of the family's table at most. It talks netlink in the caller's
// network namespace. After an error the next plan is cleaned against the
// same previous plan, so a frontend that went away is not forgotten.
func (c *Cleaner) Clean(p *proxier.Plan) error {
	if !c.Needed(p) {
		return nil
	}
	cur := TargetsFromPlan(p)
	n, err := c.clean(cur.WithGone(c.last))
	if c.deleted != nil && n > 0 {
		c.deleted(n)
	}
	if err != nil {
		return err
	}
	c.udp, c.last = udpServices(p), cur
	if n > 0 {
		klog.V(2).InfoS("Deleted stale UDP conntrack entries", "family", c.family, "entries", n)
	}
	return nil
}

func (c *Cleaner) clean(t Targets) (int, error) {
	if t.empty() {
		return 0, nil
	}
	tab, err := c.open()
	if err != nil {
		return 0, err
	}
	defer tab.Close()
	flows, err := tab.Dump(c.family)
	if err != nil {
		return 0, err
	}
	n := 0
	var firstErr error
	for _, f := range flows {
		e := entryOf(f)
		if !c.family.Matches(e.OrigDst.Addr()) || !t.Stale(e) {
			continue
		}
		switch err := tab.Delete(f); {
		case errors.Is(err, unix.ENOENT):
			// Timed out or deleted since the dump.
		case err != nil:
			if firstErr == nil {
				firstErr = fmt.Errorf("conntrack delete: %w", err)
			}
		default:
			klog.V(6).InfoS("Deleted stale UDP conntrack entry", "origDst", e.OrigDst, "replySrc", e.ReplySrc)
			n++
		}
	}
	return n, firstErr
}

// netlinkTable is the conntrack table of the caller's network namespace.
type netlinkTable struct{ conn *conntrack.Conn }

func dialTable() (table, error) {
	conn, err := conntrack.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	return netlinkTable{conn}, nil
}

// Dump lists the family's entries. A dump the kernel marks interrupted
// comes back partial; its missing entries wait for the next cleanup.
func (t netlinkTable) Dump(f proxier.IPFamily) ([]conntrack.Flow, error) {
	fam := netfilter.ProtoIPv4
	if f == proxier.IPv6 {
		fam = netfilter.ProtoIPv6
	}
	flows, err := t.conn.DumpFilter(conntrack.NewFilter().Family(fam), nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	return flows, nil
}

func (t netlinkTable) Delete(f conntrack.Flow) error { return t.conn.Delete(f) }
func (t netlinkTable) Close() error                  { return t.conn.Close() }
