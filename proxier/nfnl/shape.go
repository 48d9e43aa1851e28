package nfnl

import (
	"context"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The listing calls decode names and flags only, never rule expressions
// or elements, so what they cost follows the number of objects, not what
// the objects hold.

// SetKind tells a set from a map.
type SetKind uint8

const (
	// PlainSet has keys only.
	PlainSet SetKind = iota + 1
	// DataMap maps keys to data.
	DataMap
	// VerdictMap maps keys to verdicts.
	VerdictMap
)

// IsMap reports a map of either kind.
func (k SetKind) IsMap() bool { return k == DataMap || k == VerdictMap }

// Shape is the outline of one table: whether it exists, the number of
// rules of each chain and the named sets and maps. It holds no rules and
// no elements.
type Shape struct {
	Exists bool
	// Chains maps each chain to its number of rules.
	Chains map[string]int
	// Sets maps each named set and map to its kind (anonymous sets, which
	// belong to a rule, are left out).
	Sets map[string]SetKind
}

// nftDataVerdict is NFT_DATA_VERDICT, the data type of a verdict map.
const nftDataVerdict = 0xffffff00

func nameAttr(typ uint16, name string) netlink.Attribute {
	return netlink.Attribute{Type: typ, Data: []byte(name + "\x00")}
}

// HasTable reports whether table exists in family f.
func (c *Conn) HasTable(ctx context.Context, f Family, table string) (bool, error) {
	return c.exists(ctx, f, unix.NFT_MSG_GETTABLE, "table "+table, nameAttr(unix.NFTA_TABLE_NAME, table))
}

// HasChain reports whether chain exists in table of family f (a rule
// dump, see RuleCounts, does not tell).
func (c *Conn) HasChain(ctx context.Context, f Family, table, chain string) (bool, error) {
	return c.exists(ctx, f, unix.NFT_MSG_GETCHAIN, "chain "+table+"/"+chain,
		nameAttr(unix.NFTA_CHAIN_TABLE, table), nameAttr(unix.NFTA_CHAIN_NAME, chain))
}

// exists asks for one object, named by attrs, with request msg.
func (c *Conn) exists(ctx context.Context, f Family, msg uint16, what string, attrs ...netlink.Attribute) (bool, error) {
	err := c.request(ctx, f, msg, false, attrs, func([]byte) error { return nil })
	switch {
	case IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("get %s: %w", what, err)
	}
	return true, nil
}

// Chains returns the names of the chains of table in family f, in the
// kernel's order (none when the table does not exist). The kernel's chain
// dump has no table filter: this reads the family's chains and keeps the
// table's.
func (c *Conn) Chains(ctx context.Context, f Family, table string) ([]string, error) {
	var names []string
	err := c.request(ctx, f, unix.NFT_MSG_GETCHAIN, true, nil, func(attrs []byte) error {
		if attrString(attrs, unix.NFTA_CHAIN_TABLE) == table {
			names = append(names, attrString(attrs, unix.NFTA_CHAIN_NAME))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	return names, nil
}

// RuleCounts counts the rules of the chains of table in family f, in one
// dump: of chain alone, or of every chain of the table when chain is "".
// Chains without rules are not in the map, nor is a chain or table that
// does not exist: the kernel's dump does not tell them apart. Rules are
// counted, not decoded.
//
// A dump of a whole table restarts its walk from the table's first rule
// for every buffer it fills, so it grows with the square of the table's
// rules; when most rules sit in few chains, one dump per chain costs less.
func (c *Conn) RuleCounts(ctx context.Context, f Family, table, chain string) (map[string]int, error) {
	attrs := []netlink.Attribute{nameAttr(unix.NFTA_RULE_TABLE, table)}
	if chain != "" {
		attrs = append(attrs, nameAttr(unix.NFTA_RULE_CHAIN, chain))
	}
	counts := map[string]int{}
	// The chain name of consecutive rules is mostly the same: decode it
	// only when it changes.
	var last []byte
	var lastName string
	err := c.request(ctx, f, unix.NFT_MSG_GETRULE, true, attrs, func(a []byte) error {
		if t, _ := Attr(a, unix.NFTA_RULE_TABLE); String(t) != table {
			return nil
		}
		name, _ := Attr(a, unix.NFTA_RULE_CHAIN)
		if last == nil || string(name) != string(last) {
			last, lastName = append(last[:0], name...), String(name)
		}
		counts[lastName]++
		return nil
	})
	if err != nil {
		if chain != "" {
			return nil, fmt.Errorf("list rules of %s/%s: %w", table, chain, err)
		}
		return nil, fmt.Errorf("list rules of %s: %w", table, err)
	}
	return counts, nil
}

// Sets returns the named sets and maps of table in family f.
func (c *Conn) Sets(ctx context.Context, f Family, table string) (map[string]SetKind, error) {
	sets := map[string]SetKind{}
	err := c.request(ctx, f, unix.NFT_MSG_GETSET, true,
		[]netlink.Attribute{nameAttr(unix.NFTA_SET_TABLE, table)}, func(a []byte) error {
			flags, _ := attrUint32(a, unix.NFTA_SET_FLAGS)
			if attrString(a, unix.NFTA_SET_TABLE) != table || flags&unix.NFT_SET_ANONYMOUS != 0 {
				return nil
			}
			kind := PlainSet
			if flags&unix.NFT_SET_MAP != 0 {
				kind = DataMap
				if dt, _ := attrUint32(a, unix.NFTA_SET_DATA_TYPE); dt == nftDataVerdict {
					kind = VerdictMap
				}
			}
			sets[attrString(a, unix.NFTA_SET_NAME)] = kind
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	return sets, nil
}

// Shape reads the outline of table in family f: four requests (the table,
// its chains, one dump of its rules, its sets) at any size. A table that
// does not exist reads as a Shape with Exists false and nothing else.
func (c *Conn) Shape(ctx context.Context, f Family, table string) (*Shape, error) {
	s := &Shape{Chains: map[string]int{}, Sets: map[string]SetKind{}}
	exists, err := c.HasTable(ctx, f, table)
	if err != nil || !exists {
		return s, err
	}
	s.Exists = true
	chains, err := c.Chains(ctx, f, table)
	if err != nil {
		return nil, err
	}
	for _, name := range chains {
		s.Chains[name] = 0
	}
	counts, err := c.RuleCounts(ctx, f, table, "")
	if err != nil {
		return nil, err
	}
	for name, n := range counts {
		s.Chains[name] = n
	}
	if s.Sets, err = c.Sets(ctx, f, table); err != nil {
		return nil, err
	}
	return s, nil
}
