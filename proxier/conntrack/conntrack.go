// Package conntrack removes stale UDP conntrack entries after a sync. UDP has
// no connection teardown: a client that keeps sending from the same source
// port keeps hitting the conntrack entry that DNATs it to an endpoint that
// may be gone. After each successful sync that changed a UDP service, entries
// to a service address whose reply does not come from a serving endpoint are
// deleted, so the next datagram is load-balanced afresh. That also covers a
// service going from no endpoints to some: entries created while it had none
// were never DNATed.
package conntrack

import (
	"fmt"
	"net/netip"

	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

const protoUDP = 17

// Entry is the part of a conntrack entry the decision needs.
type Entry struct {
	Proto    uint8
	OrigDst  netip.AddrPort
	ReplySrc netip.Addr
}

// dnat reports whether the entry was destination-NATed.
func (e Entry) dnat() bool { return e.ReplySrc != e.OrigDst.Addr() }

// Targets is, for every UDP service address (ClusterIP, external IP and
// load-balancer IP with port) and NodePort that has serving endpoints, the
// set of serving endpoint IPs.
type Targets struct {
	byAddr     map[netip.AddrPort]map[netip.Addr]bool
	byNodePort map[uint16]map[netip.Addr]bool
}

// TargetsFromPlan builds the targets of the UDP service ports in p.
func TargetsFromPlan(p *proxier.Plan) Targets {
	t := Targets{byAddr: map[netip.AddrPort]map[netip.Addr]bool{}, byNodePort: map[uint16]map[netip.Addr]bool{}}
	for _, sp := range p.Services {
		svc := sp.Svc
		if svc.Protocol != proxier.UDP {
			continue
		}
		serving := map[netip.Addr]bool{}
		for _, e := range svc.Endpoints {
			if e.Serving {
				serving[e.IP] = true
			}
		}
		if len(serving) == 0 {
			continue
		}
		port := uint16(svc.Port)
		for _, ip := range append(append([]netip.Addr{svc.ClusterIP}, svc.ExternalIPs...), svc.LoadBalancerIPs...) {
			t.byAddr[netip.AddrPortFrom(ip, port)] = serving
		}
		if svc.NodePort != 0 {
			t.byNodePort[uint16(svc.NodePort)] = serving
		}
	}
	return t
}

// Stale reports whether e should be deleted: a UDP entry to a service address
// (or, DNATed, to a NodePort) whose reply source is not a serving endpoint.
func (t Targets) Stale(e Entry) bool {
	if e.Proto != protoUDP {
		return false
	}
	if serving, ok := t.byAddr[e.OrigDst]; ok {
		return !serving[e.ReplySrc]
	}
	if serving, ok := t.byNodePort[e.OrigDst.Port()]; ok && e.dnat() {
		return !serving[e.ReplySrc]
	}
	return false
}

// Cleaner runs the cleanup for one family after syncs that need it.
type Cleaner struct {
	family proxier.IPFamily
	// udp is the set of UDP services of the last cleaned plan, by pointer:
	// the syncer hands over a new *Service whenever one changes.
	udp     map[*proxier.Service]bool
	deleted func(n int)
}

// NewCleaner returns a cleaner for family f; deleted is told how many entries
// each run removed (for metrics).
func NewCleaner(f proxier.IPFamily, deleted func(n int)) *Cleaner {
	return &Cleaner{family: f, deleted: deleted}
}

// Needed reports whether p changed any UDP service since the last cleanup.
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

// Clean deletes the stale entries for p if any UDP service changed. It talks
// netlink in the caller's network namespace.
func (c *Cleaner) Clean(p *proxier.Plan) error {
	if !c.Needed(p) {
		return nil
	}
	t := TargetsFromPlan(p)
	n, err := c.clean(t)
	if c.deleted != nil && n > 0 {
		c.deleted(n)
	}
	if err != nil {
		return err
	}
	c.udp = udpServices(p)
	if n > 0 {
		klog.V(2).InfoS("Deleted stale UDP conntrack entries", "family", c.family, "entries", n)
	}
	return nil
}

func (c *Cleaner) clean(t Targets) (int, error) {
	if len(t.byAddr) == 0 && len(t.byNodePort) == 0 {
		return 0, nil
	}
	conn, err := conntrack.Dial(nil)
	if err != nil {
		return 0, fmt.Errorf("conntrack: %w", err)
	}
	defer conn.Close()
	fam := netfilter.ProtoIPv4
	if c.family == proxier.IPv6 {
		fam = netfilter.ProtoIPv6
	}
	flows, err := conn.DumpFilter(conntrack.NewFilter().Family(fam), nil)
	if err != nil {
		return 0, fmt.Errorf("conntrack dump: %w", err)
	}
	n := 0
	var firstErr error
	for _, f := range flows {
		e := Entry{
			Proto:    f.TupleOrig.Proto.Protocol,
			OrigDst:  netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort),
			ReplySrc: f.TupleReply.IP.SourceAddress,
		}
		if !c.family.Matches(e.OrigDst.Addr()) || !t.Stale(e) {
			continue
		}
		if err := conn.Delete(f); err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("conntrack delete: %w", err)
			}
			continue
		}
		n++
	}
	return n, firstErr
}
