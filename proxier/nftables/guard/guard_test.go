package guard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

const table = "svcproxy"

// newValid is a guard whose last sync succeeded.
func newValid() *Guard {
	g := New(Config{Family: proxier.IPv4, Table: table})
	g.valid = true
	return g
}

// affinityMaps is the Traffic of svcproxy's layout: the affinity maps, not
// the affinity-dests ones.
func affinityMaps(set []byte) bool {
	return bytes.HasPrefix(set, []byte("affinity-")) && !bytes.HasPrefix(set, []byte("affinity-dests-"))
}

func newDecoder() txDecoder {
	return txDecoder{family: nfnl.IPv4, table: []byte(table), traffic: affinityMaps}
}

// TestJudge: which committed transactions count as someone else's.
func TestJudge(t *testing.T) {
	p := newValid()
	p.ledger.owned(9, 10, true)   // a full sync: generation 10
	p.ledger.owned(10, 11, false) // a partial one: 11
	p.ledger.owned(13, 15, false) // ours is 14 or 15; 12 and the other are not
	for _, c := range []struct {
		ev      txEvent
		foreign bool
	}{
		{txEvent{gen: 8, touched: true}, false}, // before our full sync
		{txEvent{gen: 10, touched: true}, false},
		{txEvent{gen: 11, touched: true}, false},
		{txEvent{gen: 11, touched: false}, false},
		{txEvent{gen: 12, touched: false}, false},
		{txEvent{gen: 12, touched: true, proc: "nft", pid: 7}, true},
		{txEvent{gen: 14, touched: false}, false},
		{txEvent{gen: 15, touched: true}, false}, // the one of the span that touched us
		{txEvent{gen: 16, touched: true}, true},
	} {
		if got := p.judge(c.ev) != ""; got != c.foreign {
			t.Errorf("%+v: foreign %v, want %v", c.ev, got, c.foreign)
		}
	}
	// Two transactions of one span touched our table: one was not ours,
	// and may have come after ours.
	q := newValid()
	q.ledger.owned(9, 10, true)
	q.ledger.owned(10, 12, false)
	if q.judge(txEvent{gen: 11, touched: true}) != "" || q.judge(txEvent{gen: 12, touched: true}) == "" {
		t.Errorf("two transactions touching our table in one span: want the second called foreign")
	}
	// Before a full sync is known to be done, nothing is foreign (one is
	// coming).
	q.valid = false
	if q.judge(txEvent{gen: 20, touched: true}) != "" {
		t.Errorf("unsynced: want nothing foreign")
	}
	// The ring forgets old spans, never recent ones.
	r := newValid()
	for g := uint32(1); g <= 2*ownSpans; g++ {
		r.ledger.owned(g-1, g, g == 1)
	}
	if r.judge(txEvent{gen: 2 * ownSpans, touched: true}) != "" || r.judge(txEvent{gen: 2, touched: true}) == "" {
		t.Errorf("ring: want the newest span kept and an old one forgotten")
	}
	// Generations wrap.
	w := newValid()
	w.ledger.owned(0xfffffffe, 0xffffffff, true)
	w.ledger.owned(0xffffffff, 1, false)
	if w.judge(txEvent{gen: 0, touched: true}) != "" || w.judge(txEvent{gen: 0xfffffffd, touched: true}) != "" ||
		w.judge(txEvent{gen: 2, touched: true}) == "" {
		t.Errorf("wrapping generations misjudged")
	}
}

// TestLost: after lost notifications, the table is rewritten unless every
// transaction since the last one heard was ours.
func TestLost(t *testing.T) {
	p := newValid()
	p.ledger.owned(9, 10, true)
	p.ledger.owned(10, 11, false)
	p.ledger.owned(12, 13, false) // 12 was someone else's
	p.ledger.owned(13, 15, false) // 14 or 15 was
	for _, c := range []struct {
		cur, from uint32
		fromOK    bool
		ok        bool
	}{
		{11, 10, true, true},
		{11, 0, false, true}, // nothing heard: from our full sync on
		{11, 3, true, true},  // heard up to before the full sync
		{13, 11, true, false},
		{13, 12, true, true},
		{15, 13, true, false}, // which of 14 and 15 was ours?
		{17, 16, true, false},
		{13, 13, true, true},
		{5, 0, false, true}, // read before our full sync
		{9, 12, true, true},
	} {
		if got := p.lost(c.cur, c.from, c.fromOK) == ""; got != c.ok {
			t.Errorf("lost(cur %d, from %d, %v): fine %v, want %v", c.cur, c.from, c.fromOK, got, c.ok)
		}
	}
	q := newValid()
	if q.lost(5, 4, true) == "" {
		t.Errorf("no generation of ours known: want a rewrite")
	}
	q.valid = false
	if q.lost(5, 4, true) != "" {
		t.Errorf("unsynced: a full sync is due anyway")
	}
}

// notif is an nf_tables notification of type typ.
func notif(typ uint16, family uint8, attrs ...netlink.Attribute) netlink.Message {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		panic(err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ)},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, data...),
	}
}

func tableAttr(name string) netlink.Attribute {
	return netlink.Attribute{Type: 1, Data: []byte(name + "\x00")}
}

func newGen(gen uint32) netlink.Message {
	return notif(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC,
		netlink.Attribute{Type: unix.NFTA_GEN_ID, Data: binary.BigEndian.AppendUint32(nil, gen)},
		netlink.Attribute{Type: unix.NFTA_GEN_PROC_PID, Data: binary.BigEndian.AppendUint32(nil, 42)},
		netlink.Attribute{Type: unix.NFTA_GEN_PROC_NAME, Data: []byte("nft\x00")})
}

// TestTxDecoder: a transaction touched our table when one of its
// notifications names it, in our family.
func TestTxDecoder(t *testing.T) {
	d := newDecoder()
	for _, c := range []struct {
		msgs    []netlink.Message
		touched bool
	}{
		{[]netlink.Message{notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, tableAttr(table)), newGen(5)}, true},
		{[]netlink.Message{notif(unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV6, tableAttr(table)), newGen(6)}, false},
		{[]netlink.Message{notif(unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, tableAttr("filter")), newGen(7)}, false},
		{[]netlink.Message{
			notif(unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, tableAttr("filter")),
			notif(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, tableAttr(table)),
			notif(unix.NFT_MSG_DELCHAIN, unix.NFPROTO_IPV4, tableAttr("nat")),
			newGen(8),
		}, true},
		{[]netlink.Message{newGen(9)}, false},
		// Affinity map entries are no damage; affinity-dests sets are.
		{[]netlink.Message{notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, tableAttr(table),
			netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("affinity-tcp-10800\x00")}), newGen(10)}, false},
		{[]netlink.Message{
			notif(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_IPV4, tableAttr(table),
				netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("affinity-tcp-10800\x00")}),
			notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, tableAttr(table),
				netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("affinity-dests-tcp-10800\x00")}),
			newGen(11),
		}, true},
		{[]netlink.Message{notif(unix.NFT_MSG_DELSET, unix.NFPROTO_IPV4, tableAttr(table),
			netlink.Attribute{Type: unix.NFTA_SET_NAME, Data: []byte("affinity-tcp-10800\x00")}), newGen(12)}, true},
	} {
		var evs []txEvent
		for _, m := range c.msgs {
			if ev, ok := d.add(m); ok {
				evs = append(evs, ev)
			}
		}
		if len(evs) != 1 || evs[0].touched != c.touched || evs[0].proc != "nft" || evs[0].pid != 42 {
			t.Errorf("%d messages: %+v, want one transaction, touched %v", len(c.msgs), evs, c.touched)
		}
	}
}

// TestTxDecoderDamage: what a foreign transaction's notifications say it
// changed, and when that is too much or too vague to repair narrowly.
func TestTxDecoderDamage(t *testing.T) {
	setAttr := func(n string) netlink.Attribute {
		return netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(n + "\x00")}
	}
	chainAttr := func(n string) netlink.Attribute {
		return netlink.Attribute{Type: unix.NFTA_RULE_CHAIN, Data: []byte(n + "\x00")}
	}
	// ours is a notification about svcproxy's IPv4 table.
	ours := func(typ uint16, attrs ...netlink.Attribute) netlink.Message {
		return notif(typ, unix.NFPROTO_IPV4, append([]netlink.Attribute{tableAttr(table)}, attrs...)...)
	}
	many := []netlink.Message{}
	for i := 0; i <= MaxDamaged; i++ {
		many = append(many, ours(unix.NFT_MSG_DELRULE, chainAttr(fmt.Sprint("c", i))))
	}
	for _, c := range []struct {
		name string
		msgs []netlink.Message
		want string
	}{
		{"a map flushed", []netlink.Message{
			ours(unix.NFT_MSG_DELSETELEM, setAttr("service-ips")),
			ours(unix.NFT_MSG_DELSETELEM, setAttr("service-ips")),
		}, "[elements of service-ips]"},
		{"a chain flushed, a rule added", []netlink.Message{
			ours(unix.NFT_MSG_DELRULE, chainAttr("services")),
			ours(nfnl.MsgDestroyRule, chainAttr("services")),
			ours(unix.NFT_MSG_NEWRULE, chainAttr("nat-prerouting")),
		}, "[chain nat-prerouting chain services]"},
		{"elements deleted and added", []netlink.Message{
			ours(unix.NFT_MSG_DELSETELEM, setAttr("cluster-ips")),
			ours(unix.NFT_MSG_NEWSETELEM, setAttr("cluster-ips")),
			ours(nfnl.MsgDestroySetElem, setAttr("firewall-allow")),
			ours(unix.NFT_MSG_DELSETELEM, setAttr("affinity-tcp-10800")),
		}, "[elements of cluster-ips elements of firewall-allow]"},
		{"a chain deleted", []netlink.Message{
			ours(unix.NFT_MSG_DELRULE, chainAttr("services")),
			ours(unix.NFT_MSG_DELCHAIN),
		}, "the table"},
		{"no table name", []netlink.Message{notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, setAttr("cluster-ips"))}, "the table"},
		{"a rule without its chain", []netlink.Message{ours(unix.NFT_MSG_DELRULE)}, "the table"},
		{"too many objects", many, "the table"},
	} {
		d := newDecoder()
		var evs []txEvent
		for _, m := range append(c.msgs, newGen(7)) {
			if ev, ok := d.add(m); ok {
				evs = append(evs, ev)
			}
		}
		if len(evs) != 1 || !evs[0].touched || evs[0].dmg.Empty() {
			t.Fatalf("%s: %+v, want one transaction touching our table", c.name, evs)
		}
		if got := evs[0].dmg.String(); got != c.want {
			t.Errorf("%s: damage %s, want %s", c.name, got, c.want)
		}
		if c.name == "elements deleted and added" && (!evs[0].dmg.Sets["cluster-ips"] || evs[0].dmg.Sets["firewall-allow"]) {
			t.Errorf("%s: added-to %v, want cluster-ips only", c.name, evs[0].dmg.Sets)
		}
	}
}

// fakeConn delivers notification batches; a nil batch is an overflow.
type fakeConn struct {
	ch   chan []netlink.Message
	once sync.Once
	done chan struct{}
}

func (c *fakeConn) Receive() ([]netlink.Message, error) {
	select {
	case m := <-c.ch:
		if m == nil {
			return nil, unix.ENOBUFS
		}
		return m, nil
	case <-c.done:
		return nil, errors.New("closed")
	}
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// fakeReader is a ruleset generation the test moves, and a whole shape.
type fakeReader struct {
	mu  sync.Mutex
	gen uint32
}

func (r *fakeReader) Generation(context.Context) (uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gen, nil
}

func (r *fakeReader) Shape(context.Context) (*nfnl.Shape, error) {
	return &nfnl.Shape{Exists: true}, nil
}

func (r *fakeReader) set(gen uint32) {
	r.mu.Lock()
	r.gen = gen
	r.mu.Unlock()
}

// fullSync is what the writer reports of a full sync committed in one
// transaction; it returns the transaction's generation.
func fullSync(g *Guard, r *fakeReader) uint32 {
	ctx := context.Background()
	w := g.Begin(ctx, false)
	gen, _ := r.Generation(ctx)
	r.set(gen + 1)
	w.Committed(ctx, true)
	w.Done(&nfnl.Shape{Exists: true})
	return gen + 1
}

// TestFakeWatch runs the watcher on fake notifications: our own
// transactions (even when their notification is read before the sync
// recorded them) are not repaired, others' are, and an overflow is
// repaired only when the generation moved past ours.
func TestFakeWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &fakeReader{gen: 2}
	g := New(Config{Family: proxier.IPv4, Table: table, Traffic: affinityMaps, Reader: r})
	own := fullSync(g, r)
	conn := &fakeConn{ch: make(chan []netlink.Message), done: make(chan struct{})}
	repairs := make(chan string, 10)
	done := make(chan struct{})
	go func() {
		g.watch(ctx, watcher{
			dial:  func() (subscription, error) { return conn, nil },
			gen:   func() (uint32, error) { return r.Generation(ctx) },
			found: func(what, _ string) { repairs <- what },
		})
		close(done)
	}()
	// Narrow damage (one map's elements), so that a repair leaves the
	// guard judging, and the next foreign transaction is judged too.
	ours := notif(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_IPV4, tableAttr(table),
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("service-ips\x00")})
	// expect sends a foreign transaction (a marker, generation 1001 on)
	// and checks that the first repair that follows names want (the
	// marker's own when want is ""), and then waits for the marker's.
	marker := uint32(1000)
	expect := func(what string, want string) {
		t.Helper()
		marker++
		conn.ch <- []netlink.Message{ours, newGen(marker)}
		mine := fmt.Sprintf("transaction %d ", marker)
		for _, w := range []string{want, mine} {
			if w == "" {
				continue
			}
			select {
			case got := <-repairs:
				if !strings.Contains(got, w) {
					t.Errorf("%s: repair %q, want it to name %q", what, got, w)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: no repair (want %q)", what, w)
			}
		}
	}
	conn.ch <- []netlink.Message{ours, newGen(own)}
	expect("our full sync", "")

	// An event read while the sync that caused it still runs waits for
	// it to record its generation.
	g.mu.Lock()
	conn.ch <- []netlink.Message{ours, newGen(own + 1)}
	time.Sleep(20 * time.Millisecond)
	g.ledger.owned(own, own+1, false)
	g.mu.Unlock()
	expect("an event ahead of its sync", "")

	// Someone else's.
	conn.ch <- []netlink.Message{ours, newGen(own + 2)}
	expect("a foreign transaction", fmt.Sprintf("transaction %d ", own+2))

	// An overflow while the generation is ours: nothing lost.
	g.mu.Lock()
	r.set(own + 3)
	g.ledger.owned(own+2, own+3, false)
	g.mu.Unlock()
	conn.ch <- []netlink.Message{newGen(own + 3)}
	conn.ch <- nil
	expect("an overflow after our own transaction", "")
	if n := g.Stats().Overflows; n != 1 {
		t.Errorf("%d overflows counted, want 1", n)
	}
	// An overflow after someone else committed.
	r.set(marker + 5)
	conn.ch <- nil
	select {
	case got := <-repairs:
		if !strings.Contains(got, "lost") {
			t.Errorf("an overflow after a foreign transaction: repair %q, want it to name the loss", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an overflow after a foreign transaction: no repair")
	}
	// What was lost may be anything: the next sync is a full one.
	if d := g.Take(); !d.Broad {
		t.Errorf("after lost notifications, the next sync takes %v, not a full one", d)
	}
	cancel()
	<-done
}

// TestTake: the damage others did waits for the next sync, which takes it
// once; a full sync's write covers what was noted before it; a loss that
// could not be judged is broad damage; after a failed sync nothing is
// judged until one succeeds.
func TestTake(t *testing.T) {
	ctx := context.Background()
	r := &fakeReader{gen: 2}
	g := New(Config{Family: proxier.IPv4, Table: table, Reader: r})
	fullSync(g, r)
	narrow := Damage{Sets: map[string]bool{"service-ips": false}}

	g.mu.Lock()
	g.note(narrow)
	g.mu.Unlock()
	if d := g.Take(); d.String() != "[elements of service-ips]" {
		t.Errorf("take after narrow damage: %v", d)
	}
	if d := g.Take(); !d.Empty() {
		t.Errorf("second take: %v, want nothing", d)
	}

	g.mu.Lock()
	g.note(narrow)
	g.mu.Unlock()
	fullSync(g, r)
	if d := g.Take(); !d.Empty() {
		t.Errorf("take after a full sync's write: %v, want nothing", d)
	}

	g.mu.Lock()
	g.note(Damage{Broad: true})
	valid := g.valid
	g.mu.Unlock()
	if d := g.Take(); !d.Broad || valid {
		t.Errorf("after broad damage: take %v, still judging %v", d, valid)
	}

	g.ev.overrun.Store(true)
	if d := g.Take(); !d.Broad {
		t.Errorf("after an overrun: take %v, want the table", d)
	}

	w := g.Begin(ctx, false)
	w.Done(nil)
	g.mu.Lock()
	what := g.judge(txEvent{gen: 999, touched: true})
	g.mu.Unlock()
	if what != "" {
		t.Errorf("after a failed sync: judged %q, want nothing", what)
	}
	if what, err := g.Check(ctx); what != "" || err != nil {
		t.Errorf("check after a failed sync: %q, %v", what, err)
	}
}
