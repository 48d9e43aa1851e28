package nftables

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"sigs.k8s.io/knftables"
)

// A full sync costs most of a second at 10,000 Services, more while
// someone listens to the notifications (two per element: the flush and the
// refill). But what others do to our table is usually narrow: a chain
// flushed, a map flushed, an element deleted. The notifications of their
// transaction name every chain whose rules they changed and every set or
// map whose elements they changed, so the repair rewrites only those
// (repairDamage): the chains flushed and given their rules again, the sets
// given their elements again (flushed first when someone added to them).
// Anything else (a chain, set or table created or deleted, a notification
// without the table's name, too many objects named) is broad damage, and a
// full sync repairs it.

// maxDamaged is how many chains and sets a narrow repair rewrites at most.
const maxDamaged = 16

// damage is what foreign transactions changed in our table.
type damage struct {
	broad  bool
	chains map[string]bool
	// sets maps a damaged set or map to whether someone added elements
	// to it (then it is flushed before it is refilled).
	sets map[string]bool
	// last is the chain or set the previous notification named (a flush
	// sends one message per rule or element).
	last     []byte
	lastKind uint16
}

// note records one notification (msg, the attributes after the nfgenmsg)
// of a transaction that touched our table.
func (d *damage) note(msg uint16, attrs []byte) {
	if d.broad {
		return
	}
	var name []byte
	var ok, add bool
	switch msg {
	case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
		name, ok = attr(attrs, unix.NFTA_RULE_CHAIN)
	case unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
		name, ok = attr(attrs, unix.NFTA_SET_ELEM_LIST_SET)
		add = msg == unix.NFT_MSG_NEWSETELEM
	}
	if !ok {
		d.broad = true
		return
	}
	if d.last != nil && msg == d.lastKind && bytes.Equal(name, d.last) {
		return
	}
	n := string(bytes.TrimRight(name, "\x00"))
	if msg == unix.NFT_MSG_NEWRULE || msg == unix.NFT_MSG_DELRULE {
		d.addChain(n)
	} else {
		d.addSet(n, add)
	}
	d.last, d.lastKind = append(d.last[:0], name...), msg
}

// addChain and addSet record a damaged chain, or set (added: someone added
// elements to it); more than maxDamaged objects are broad damage.
func (d *damage) addChain(name string) {
	if d.chains == nil {
		d.chains = map[string]bool{}
	}
	d.chains[name] = true
	d.broad = d.broad || len(d.chains)+len(d.sets) > maxDamaged
}

func (d *damage) addSet(name string, added bool) {
	if d.sets == nil {
		d.sets = map[string]bool{}
	}
	d.sets[name] = d.sets[name] || added
	d.broad = d.broad || len(d.chains)+len(d.sets) > maxDamaged
}

// merge adds o's damage to d.
func (d *damage) merge(o *damage) {
	if o == nil || o.broad {
		d.broad = true
		return
	}
	for c := range o.chains {
		d.addChain(c)
	}
	for s, added := range o.sets {
		d.addSet(s, added)
	}
}

func (d *damage) String() string {
	if d.broad {
		return "the table"
	}
	var names []string
	for c := range d.chains {
		names = append(names, "chain "+c)
	}
	for s := range d.sets {
		names = append(names, "elements of "+s)
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}

// noteDamage takes the damage of a foreign transaction: narrow damage our
// last sync can name the desired content of waits in p.damage for the next
// sync; anything else makes it a full one. Callers hold p.mu.
func (p *Proxier) noteDamage(d *damage) {
	if !p.synced {
		return
	}
	if p.damage == nil {
		p.damage = &damage{}
	}
	p.damage.merge(d)
	if !p.damage.broad && !p.repairable(p.damage) {
		p.damage.broad = true
	}
	if p.damage.broad {
		p.damage = nil
		p.synced = false
	}
}

// repairable reports whether every object d names is one the last sync
// wrote: a chain of the skeleton, an lb chain or an affinity record
// chain, a set or map of the skeleton that is not dynamic.
func (p *Proxier) repairable(d *damage) bool {
	if p.last == nil {
		return false
	}
	sk := p.last.sk
	for c := range d.chains {
		if _, ok := sk.rules[c]; !ok && p.last.idx.lbChains[c] == 0 && p.last.affChains[c] == nil {
			return false
		}
	}
	for s := range d.sets {
		if sk.static(s) == nil {
			return false
		}
	}
	return true
}

// static returns the definition of the non-dynamic set or map name: a
// *knftables.Set or *knftables.Map, or nil.
func (sk *skeleton) static(name string) knftables.Object {
	for _, s := range sk.sets {
		if s.Name == name && !slices.Contains(s.Flags, knftables.DynamicFlag) {
			return s
		}
	}
	for _, m := range sk.maps {
		if m.Name == name && !slices.Contains(m.Flags, knftables.DynamicFlag) {
			return m
		}
	}
	return nil
}

// repairDamage rewrites what d names from the last sync's record: one
// transaction through nft for the chains and the sets netlink does not
// write, one netlink batch for the other sets. Each is recorded as ours.
// Callers hold p.mu.
func (p *Proxier) repairDamage(ctx context.Context, d *damage) error {
	start := time.Now()
	sk := p.last.sk
	tx := p.nft.NewTransaction()
	chains := make([]string, 0, len(d.chains))
	for c := range d.chains {
		chains = append(chains, c)
	}
	sort.Strings(chains)
	for _, c := range chains {
		rules, ok := sk.rules[c]
		if !ok {
			rules = dynRules(p.f, c, p.last.affChains)
		}
		tx.Flush(&knftables.Chain{Name: c})
		for _, r := range rules {
			tx.Add(&knftables.Rule{Chain: c, Rule: r})
		}
	}
	sets := make([]string, 0, len(d.sets))
	for s := range d.sets {
		sets = append(sets, s)
	}
	sort.Strings(sets)
	bySet := map[string][]elem{}
	want := map[string]bool{}
	for _, s := range sets {
		want[s] = true
	}
	for _, e := range sk.elems {
		if want[e.set] {
			bySet[e.set] = append(bySet[e.set], e)
		}
	}
	for id, en := range p.last.idx.elems {
		if want[id.set] {
			bySet[id.set] = append(bySet[id.set], id.with(en))
		}
	}
	var ops []elemOp
	for _, s := range sets {
		if !netlinkWrites(s) || p.writer == nil {
			// Interval sets: nft merges and splits them, so always
			// flushed and refilled (they are small).
			switch o := sk.static(s).(type) {
			case *knftables.Set:
				tx.Flush(o)
			case *knftables.Map:
				tx.Flush(o)
			}
			for _, e := range bySet[s] {
				tx.Add(p.element(e))
			}
			continue
		}
		if d.sets[s] {
			ops = append(ops, elemOp{flush: true, e: elem{set: s}})
		}
		// Adding an element that is there, with the same value, is a
		// no-op for the kernel (no NLM_F_EXCL), so what is left of a
		// set need not be flushed.
		for _, e := range bySet[s] {
			ops = append(ops, elemOp{add: true, e: e})
		}
	}
	if tx.NumOperations() > 0 {
		if err := p.ownTx(ctx, func() error { return p.nft.Run(ctx, tx) }); err != nil {
			return err
		}
	}
	if len(ops) > 0 {
		if err := p.ownTx(ctx, func() error { return p.writer.apply(ops) }); err != nil {
			return err
		}
	}
	klog.V(2).InfoS("Repaired the table", "family", p.cfg.Family, "rewritten", d.String(), "elements", len(ops), "took", time.Since(start))
	return nil
}

// ownTx runs one transaction of ours and records its generation. Callers
// hold p.mu.
func (p *Proxier) ownTx(ctx context.Context, run func() error) error {
	gen, ok := p.genBefore(ctx)
	if err := run(); err != nil {
		return err
	}
	p.genAfter(ctx, gen, ok, false)
	return nil
}
