package nftables

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"sort"

	"golang.org/x/sys/unix"
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
	if !p.damage.broad && (p.last == nil || !p.last.repairable(p.damage)) {
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
func (t *table) repairable(d *damage) bool {
	sk := t.sk
	for c := range d.chains {
		if _, ok := sk.rules[c]; !ok && t.idx.lbChains[c] == 0 && t.affChains[c] == nil {
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

// static returns the definition of the non-dynamic set or map name, or
// nil.
func (sk *skeleton) static(name string) knftables.Object {
	for _, s := range sk.setDefs() {
		if s.name == name && !mustSpec(name).dynamic {
			return s.obj
		}
	}
	return nil
}

// repair is what a narrow repair rewrites, from the table a sync makes:
// the damaged chains with their rules, and the damaged sets with their
// elements.
type repair struct {
	dmg    *damage
	chains []dynChain
	sets   []repairSet
}

// repairSet is one damaged set or map: its definition, its elements, and
// whether someone added to it (then it is flushed before it is refilled).
type repairSet struct {
	name  string
	def   knftables.Object
	flush bool
	elems []elem
}

// repair is the repair of dmg over the table d makes (its delta
// applied). dmg must be repairable on the last table, whose skeleton d
// keeps.
func (tr *translator) repair(d *desired, dmg *damage) *repair {
	t := d.next
	rep := &repair{dmg: dmg}
	for _, c := range slices.Sorted(maps.Keys(dmg.chains)) {
		rules, ok := t.sk.rules[c]
		if !ok {
			rules = dynRules(tr.f, c, t.affChains)
		}
		rep.chains = append(rep.chains, dynChain{c, rules})
	}
	contents := d.contents(dmg.sets)
	for _, s := range slices.Sorted(maps.Keys(dmg.sets)) {
		rep.sets = append(rep.sets, repairSet{name: s, def: t.sk.static(s), flush: dmg.sets[s], elems: contents[s]})
	}
	return rep
}

// contents is, per set named in sets, its elements once d is committed:
// the skeleton's fixed ones and the index's, moved by the delta.
func (d *desired) contents(sets map[string]bool) map[string][]elem {
	out := map[string][]elem{}
	for _, e := range d.next.sk.elems {
		if _, ok := sets[e.set]; ok {
			out[e.set] = append(out[e.set], e)
		}
	}
	x := d.next.idx
	for id, en := range x.elems {
		if _, ok := sets[id.set]; ok {
			if en, in := d.delta.after(id, en); in {
				out[id.set] = append(out[id.set], id.with(en))
			}
		}
	}
	if d.delta != nil {
		for id := range d.delta.elems {
			_, named := sets[id.set]
			if _, old := x.elems[id]; named && !old {
				if en, in := d.delta.after(id, entry{}); in {
					out[id.set] = append(out[id.set], id.with(en))
				}
			}
		}
	}
	return out
}
