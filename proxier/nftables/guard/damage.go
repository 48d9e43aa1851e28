package guard

import (
	"fmt"
	"sort"
)

// What others do to a table is usually narrow: a chain flushed, a map
// flushed, an element deleted. The notifications of their transaction name
// every chain whose rules they changed and every set or map whose elements
// they changed, so the next sync can rewrite only those. Anything else (a
// chain, set or table created or deleted, a notification without the
// table's name, too many objects named) is broad damage: the next sync
// rewrites the table.

// MaxDamaged is how many chains and sets narrow damage names at most.
const MaxDamaged = 16

// Damage is what others changed in the table since the last sync took it
// (Guard.Take): nothing, named chains and sets, or (Broad) anything.
type Damage struct {
	Broad bool
	// Chains are chains whose rules someone changed.
	Chains map[string]bool
	// Sets maps a set or map whose elements someone changed to whether
	// they added elements to it (then it is flushed before it is
	// refilled).
	Sets map[string]bool
}

// Empty reports no damage.
func (d Damage) Empty() bool { return !d.Broad && len(d.Chains) == 0 && len(d.Sets) == 0 }

func (d *Damage) addChain(name string) {
	if d.Chains == nil {
		d.Chains = map[string]bool{}
	}
	d.Chains[name] = true
	d.Broad = d.Broad || len(d.Chains)+len(d.Sets) > MaxDamaged
}

func (d *Damage) addSet(name string, added bool) {
	if d.Sets == nil {
		d.Sets = map[string]bool{}
	}
	d.Sets[name] = d.Sets[name] || added
	d.Broad = d.Broad || len(d.Chains)+len(d.Sets) > MaxDamaged
}

// merge adds o's damage to d.
func (d *Damage) merge(o Damage) {
	if o.Broad {
		d.Broad = true
		return
	}
	for c := range o.Chains {
		d.addChain(c)
	}
	for s, added := range o.Sets {
		d.addSet(s, added)
	}
}

func (d Damage) String() string {
	if d.Broad {
		return "the table"
	}
	var names []string
	for c := range d.Chains {
		names = append(names, "chain "+c)
	}
	for s := range d.Sets {
		names = append(names, "elements of "+s)
	}
	sort.Strings(names)
	return fmt.Sprint(names)
}
