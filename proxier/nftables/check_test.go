package nftables

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier"
)

// TestFakeCheck: the tick stops at the generation while nothing changed,
// and reads the shape once after a foreign change.
func TestFakeCheck(t *testing.T) {
	ctx := context.Background()
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(testConfig(), nft, []string{"10.96.0.0/16"})
	p.reader = &fakeReader{fake: nft}
	if err := p.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if what, err := p.Check(ctx); err != nil || what != "" {
			t.Fatalf("check after sync: %q, %v", what, err)
		}
	}
	if p.chk.shape != 0 || p.chk.idle != 3 {
		t.Errorf("after our own sync: %d shape reads, %d idle ticks; want 0 and 3", p.chk.shape, p.chk.idle)
	}
	// Someone deletes an element: the shape is whole (the notifications
	// catch this), read once.
	tx := nft.NewTransaction()
	tx.Delete(&knftables.Element{Map: mServiceIPs, Key: []string{"10.96.0.1", "tcp", "80"}})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if what, err := p.Check(ctx); err != nil || what != "" || p.chk.shape != 1 {
			t.Fatalf("tick %d after a deleted element: %q, %v, %d shape reads; want one", i, what, err, p.chk.shape)
		}
	}
	tx = nft.NewTransaction()
	tx.Flush(&knftables.Chain{Name: chServices})
	if err := nft.Run(ctx, tx); err != nil {
		t.Fatal(err)
	}
	if what, err := p.Check(ctx); err != nil || !strings.Contains(what, chServices) {
		t.Errorf("check after a flushed chain: %q, %v; want %s named", what, err, chServices)
	}
}

// TestJudge: which committed transactions count as someone else's.
func TestJudge(t *testing.T) {
	p := &Proxier{synced: true}
	p.chk.owned(9, 10, true)   // a full sync: generation 10
	p.chk.owned(10, 11, false) // a partial one: 11
	p.chk.owned(13, 15, false) // ours is 14 or 15; 12 and the other are not
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
	q := &Proxier{synced: true}
	q.chk.owned(9, 10, true)
	q.chk.owned(10, 12, false)
	if q.judge(txEvent{gen: 11, touched: true}) != "" || q.judge(txEvent{gen: 12, touched: true}) == "" {
		t.Errorf("two transactions touching our table in one span: want the second called foreign")
	}
	// Before a full sync is known to be done, nothing is foreign (one is
	// coming).
	q.synced = false
	if q.judge(txEvent{gen: 20, touched: true}) != "" {
		t.Errorf("unsynced: want nothing foreign")
	}
	// The ring forgets old spans, never recent ones.
	r := &Proxier{synced: true}
	for g := uint32(1); g <= 2*ownSpans; g++ {
		r.chk.owned(g-1, g, g == 1)
	}
	if r.judge(txEvent{gen: 2 * ownSpans, touched: true}) != "" || r.judge(txEvent{gen: 2, touched: true}) == "" {
		t.Errorf("ring: want the newest span kept and an old one forgotten")
	}
	// Generations wrap.
	w := &Proxier{synced: true}
	w.chk.owned(0xfffffffe, 0xffffffff, true)
	w.chk.owned(0xffffffff, 1, false)
	if w.judge(txEvent{gen: 0, touched: true}) != "" || w.judge(txEvent{gen: 0xfffffffd, touched: true}) != "" ||
		w.judge(txEvent{gen: 2, touched: true}) == "" {
		t.Errorf("wrapping generations misjudged")
	}
}

// TestLost: after lost notifications, the table is rewritten unless every
// transaction since the last one heard was ours.
func TestLost(t *testing.T) {
	p := &Proxier{synced: true}
	p.chk.owned(9, 10, true)
	p.chk.owned(10, 11, false)
	p.chk.owned(12, 13, false) // 12 was someone else's
	p.chk.owned(13, 15, false) // 14 or 15 was
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
	q := &Proxier{synced: true}
	if q.lost(5, 4, true) == "" {
		t.Errorf("no generation of ours known: want a rewrite")
	}
	q.synced = false
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
	d := txDecoder{family: unix.NFPROTO_IPV4}
	for _, c := range []struct {
		msgs    []netlink.Message
		touched bool
	}{
		{[]netlink.Message{notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, tableAttr(TableName)), newGen(5)}, true},
		{[]netlink.Message{notif(unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV6, tableAttr(TableName)), newGen(6)}, false},
		{[]netlink.Message{notif(unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, tableAttr("filter")), newGen(7)}, false},
		{[]netlink.Message{
			notif(unix.NFT_MSG_NEWRULE, unix.NFPROTO_IPV4, tableAttr("filter")),
			notif(unix.NFT_MSG_DELTABLE, unix.NFPROTO_IPV4, tableAttr(TableName)),
			notif(unix.NFT_MSG_DELCHAIN, unix.NFPROTO_IPV4, tableAttr("nat")),
			newGen(8),
		}, true},
		{[]netlink.Message{newGen(9)}, false},
		// Affinity map entries are no damage; affinity-dests sets are.
		{[]netlink.Message{notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, tableAttr(TableName),
			netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("affinity-tcp-10800\x00")}), newGen(10)}, false},
		{[]netlink.Message{
			notif(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_IPV4, tableAttr(TableName),
				netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("affinity-tcp-10800\x00")}),
			notif(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_IPV4, tableAttr(TableName),
				netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("affinity-dests-tcp-10800\x00")}),
			newGen(11),
		}, true},
		{[]netlink.Message{notif(unix.NFT_MSG_DELSET, unix.NFPROTO_IPV4, tableAttr(TableName),
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
	v4, tbl := uint8(unix.NFPROTO_IPV4), tableAttr(TableName)
	many := []netlink.Message{}
	for i := 0; i <= maxDamaged; i++ {
		many = append(many, notif(unix.NFT_MSG_DELRULE, v4, tbl, chainAttr(fmt.Sprint("c", i))))
	}
	for _, c := range []struct {
		name string
		msgs []netlink.Message
		want string
	}{
		{"a map flushed", []netlink.Message{
			notif(unix.NFT_MSG_DELSETELEM, v4, tbl, setAttr("service-ips")),
			notif(unix.NFT_MSG_DELSETELEM, v4, tbl, setAttr("service-ips")),
		}, "[elements of service-ips]"},
		{"a chain flushed, a rule added", []netlink.Message{
			notif(unix.NFT_MSG_DELRULE, v4, tbl, chainAttr("services")),
			notif(nftMsgDestroyRule, v4, tbl, chainAttr("services")),
			notif(unix.NFT_MSG_NEWRULE, v4, tbl, chainAttr("nat-prerouting")),
		}, "[chain nat-prerouting chain services]"},
		{"elements deleted and added", []netlink.Message{
			notif(unix.NFT_MSG_DELSETELEM, v4, tbl, setAttr("cluster-ips")),
			notif(unix.NFT_MSG_NEWSETELEM, v4, tbl, setAttr("cluster-ips")),
			notif(nftMsgDestroySetElem, v4, tbl, setAttr("firewall-allow")),
			notif(unix.NFT_MSG_DELSETELEM, v4, tbl, setAttr("affinity-tcp-10800")),
		}, "[elements of cluster-ips elements of firewall-allow]"},
		{"a chain deleted", []netlink.Message{
			notif(unix.NFT_MSG_DELRULE, v4, tbl, chainAttr("services")),
			notif(unix.NFT_MSG_DELCHAIN, v4, tbl),
		}, "the table"},
		{"no table name", []netlink.Message{notif(unix.NFT_MSG_DELSETELEM, v4, setAttr("cluster-ips"))}, "the table"},
		{"a rule without its chain", []netlink.Message{notif(unix.NFT_MSG_DELRULE, v4, tbl)}, "the table"},
		{"too many objects", many, "the table"},
	} {
		d := txDecoder{family: v4}
		var evs []txEvent
		for _, m := range append(c.msgs, newGen(7)) {
			if ev, ok := d.add(m); ok {
				evs = append(evs, ev)
			}
		}
		if len(evs) != 1 || !evs[0].touched || evs[0].dmg == nil {
			t.Fatalf("%s: %+v, want one transaction touching our table", c.name, evs)
		}
		if got := evs[0].dmg.String(); got != c.want {
			t.Errorf("%s: damage %s, want %s", c.name, got, c.want)
		}
		if c.name == "elements deleted and added" && (!evs[0].dmg.sets["cluster-ips"] || evs[0].dmg.sets["firewall-allow"]) {
			t.Errorf("%s: added-to %v, want cluster-ips only", c.name, evs[0].dmg.sets)
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

// TestFakeWatch runs the watcher on fake notifications: our own
// transactions (even when their notification is read before the sync
// recorded them) are not repaired, others' are, and an overflow is
// repaired only when the generation moved past ours.
func TestFakeWatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nft := knftables.NewFake(knftables.IPv4Family, TableName)
	p := New(testConfig(), nft, []string{"10.96.0.0/16"})
	r := &fakeReader{fake: nft}
	p.reader = r
	if err := p.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	own := r.gen
	conn := &fakeConn{ch: make(chan []netlink.Message), done: make(chan struct{})}
	repairs := make(chan string, 10)
	done := make(chan struct{})
	go func() {
		p.watch(ctx, watcher{
			dial: func() (eventConn, error) { return conn, nil },
			gen: func() (uint32, error) {
				p.mu.Lock()
				defer p.mu.Unlock()
				return r.generation(ctx)
			},
			repair: func(what, _ string) { repairs <- what },
		})
		close(done)
	}()
	// Narrow damage (one map's elements), so that a repair leaves the
	// proxier synced and the next foreign transaction is judged too.
	ours := notif(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_IPV4, tableAttr(TableName),
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(mServiceIPs + "\x00")})
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
	p.mu.Lock()
	conn.ch <- []netlink.Message{ours, newGen(own + 1)}
	time.Sleep(20 * time.Millisecond)
	p.chk.owned(own, own+1, false)
	p.mu.Unlock()
	expect("an event ahead of its sync", "")

	// Someone else's.
	conn.ch <- []netlink.Message{ours, newGen(own + 2)}
	expect("a foreign transaction", fmt.Sprintf("transaction %d ", own+2))

	// An overflow while the generation is ours: nothing lost.
	p.mu.Lock()
	r.gen = own + 3
	p.chk.owned(own+2, own+3, false)
	p.mu.Unlock()
	conn.ch <- []netlink.Message{newGen(own + 3)}
	conn.ch <- nil
	expect("an overflow after our own transaction", "")
	if n := p.chk.overflows.Load(); n != 1 {
		t.Errorf("%d overflows counted, want 1", n)
	}
	// An overflow after someone else committed.
	p.mu.Lock()
	r.gen = marker + 5
	p.mu.Unlock()
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
	p.mu.Lock()
	synced := p.synced
	p.mu.Unlock()
	if synced {
		t.Error("after lost notifications, the next sync is not a full one")
	}
	cancel()
	<-done
}

// TestKernelEvents: in a namespace, the notifications show others'
// element-level damage — a flushed map, a deleted element — and others'
// changes elsewhere are left alone, and so are our own syncs (nft -f, the
// cold load, netlink batches, nft partial syncs).
func TestKernelEvents(t *testing.T) {
	_, fd := enterNetns(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, _ := kernelProxier(t, fd, testConfig(), nil)
	repairs := kernelWatch(t, p, fd)
	none := noRepair(t, repairs)
	// A cold load without elements for netlink (one transaction).
	if err := p.Sync(ctx, &proxier.State{Family: proxier.IPv4, NodeName: "node-1"}); err != nil {
		t.Fatal(err)
	}
	none("a cold load without elements")
	// A partial sync, a full sync replacing the table.
	st := testState()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	p.ForceFullSync()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	np := svc("ns", "np", proxier.TCP, "10.96.0.9", 8080, ep("10.244.1.7", 80, true), ep("10.244.2.7", 80, false))
	np.NodePort, np.ExternalPolicyLocal = 30999, true
	np.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.99")}
	st2 := *st
	st2.Services = append(st2.Services[:len(st2.Services):len(st2.Services)], np)
	if err := p.Sync(ctx, &st2); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Full || p.w.batch.batches == 0 {
		t.Fatalf("want a partial sync over netlink: %+v, %d batches", r, p.w.batch.batches)
	}
	// Four endpoints: a new lb chain, a partial sync through nft.
	web := *st2.Services[3]
	web.Endpoints = append(web.Endpoints[:3:3], ep("10.244.2.10", 8080, false))
	st3 := st2
	st3.Services = append([]*proxier.Service(nil), st2.Services...)
	st3.Services[3] = &web
	batches := p.w.batch.batches
	if err := p.Sync(ctx, &st3); err != nil {
		t.Fatal(err)
	}
	if r := p.LastResult(); r.Full || p.w.batch.batches != batches {
		t.Fatalf("want a partial sync through nft: %+v", r)
	}
	none("our own syncs")
	sh(t, "nft", "add table ip other; add chain ip other c; add rule ip other c counter; add table ip6 svcproxy; add chain ip6 svcproxy c")
	sh(t, "iptables-nft", "-w", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
	none("others' changes elsewhere")
	// Entries of an affinity map come and go with the traffic and
	// forgetAffinity; they are no damage.
	aff := affinityMap(proxier.UDP, 600)
	sh(t, "nft", "add element ip svcproxy "+aff+" { 10.244.9.9 . 10.96.0.4 . 53 : 10.244.1.5 . 53 }")
	sh(t, "nft", "delete element ip svcproxy "+aff+" { 10.244.9.9 . 10.96.0.4 . 53 }")
	none("changes to " + aff)

	// Narrow damage is repaired by rewriting what it names, over a
	// partial sync; the rest by a full sync. Either way the table is
	// what it was.
	want := content(t, p.w.nft)
	lb := ""
	for c := range p.last.idx.lbChains {
		lb = c
	}
	for _, c := range []struct {
		damage string
		full   bool
	}{
		{"flush map ip svcproxy service-ips", false},
		{"delete element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 }", false},
		{"delete element ip svcproxy cluster-ips { 10.96.0.2 }", false},
		{"flush map ip svcproxy endpoints-ip-tcp", false},
		{"flush set ip svcproxy firewall-allow", false},
		{"flush chain ip svcproxy services", false},
		{"flush chain ip svcproxy " + lb, false},
		{"add rule ip svcproxy services accept", false},
		// A value changed: the map is flushed and refilled.
		{"delete element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 }; add element ip svcproxy service-ips { 10.96.0.1 . tcp . 80 : drop }", false},
		{"add element ip svcproxy cluster-ips { 10.96.0.200 }", false},
		// Two objects in two transactions before the sync.
		{"flush map ip svcproxy service-ips\nflush chain ip svcproxy services", false},
		{"add chain ip svcproxy extra", true},
		{"delete table ip svcproxy", true},
		{"flush ruleset", true},
	} {
		start := time.Now()
		txs := strings.Split(c.damage, "\n")
		for _, tx := range txs {
			sh(t, "nft", tx)
		}
		for range txs {
			select {
			case what := <-repairs:
				t.Logf("%s: noticed after %v: %s", c.damage, time.Since(start).Round(time.Microsecond), what)
			case <-time.After(time.Second):
				t.Errorf("%s: not noticed within 1s", c.damage)
			}
		}
		if err := p.Sync(ctx, &st3); err != nil {
			t.Fatalf("repair after %s: %v", c.damage, err)
		}
		if r := p.LastResult(); r.Full != c.full {
			t.Errorf("%s: repaired by a full sync %v, want %v", c.damage, r.Full, c.full)
		}
		if d := diffLines(content(t, p.w.nft), want); d != "" {
			t.Errorf("after repairing %s:\n%s", c.damage, d)
		}
		none("our repair of " + c.damage)
	}
	// A transaction of someone else's while a bulk write of ours has left
	// the group goes unheard, and is found when it rejoins.
	foreignWhileMuted(t, p, "flush chain ip svcproxy services", none)
	select {
	case what := <-repairs:
		if !strings.Contains(what, "may not be ours") {
			t.Errorf("after a foreign transaction while muted: repair %q", what)
		}
	case <-time.After(time.Second):
		t.Error("a foreign transaction while muted: not repaired")
	}
	if err := p.Sync(ctx, &st3); err != nil {
		t.Fatal(err)
	}
	if d := diffLines(content(t, p.w.nft), want); d != "" {
		t.Errorf("after repairing a change made while muted:\n%s", d)
	}
	none("our repair of a change made while muted")
	if n := p.chk.overflows.Load(); n != 0 {
		t.Errorf("%d overflows", n)
	}
}

// kernelWatch runs p.watch on the namespace fd until the test ends and
// returns the repairs it asks for.
func kernelWatch(tb testing.TB, p *Proxier, fd int) <-chan string {
	return kernelWatchBuffer(tb, p, fd, eventBuffer, true)
}

// noRepair returns a check that repairs reports nothing for 300 ms.
func noRepair(t *testing.T, repairs <-chan string) func(what string) {
	return func(what string) {
		t.Helper()
		select {
		case got := <-repairs:
			t.Errorf("%s: repair %q, want none", what, got)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// foreignWhileMuted runs `nft cmd` while a bulk write of p's would have
// the watchers out of the notification group, and checks with none that
// nothing is heard meanwhile.
func foreignWhileMuted(t *testing.T, p *Proxier, cmd string, none func(string)) {
	t.Helper()
	p.mu.Lock()
	unmute := p.mute(context.Background())
	p.mu.Unlock()
	if unmute == nil {
		t.Fatal("no watcher to mute")
	}
	sh(t, "nft", cmd)
	none("a foreign transaction while muted: " + cmd)
	p.mu.Lock()
	unmute()
	p.mu.Unlock()
}

// kernelWatchSentinel is kernelWatch with the sentinel (sentinel.go), as
// Monitor runs it.
func kernelWatchSentinel(tb testing.TB, p *Proxier, fd int) <-chan string {
	return watchKernel(tb, p, fd, eventBuffer, true, true)
}

// kernelWatchBuffer is kernelWatch with a receive buffer of buffer bytes,
// and bulk writes muted (mute.go) only when mute.
func kernelWatchBuffer(tb testing.TB, p *Proxier, fd, buffer int, mute bool) <-chan string {
	return watchKernel(tb, p, fd, buffer, mute, false)
}

func watchKernel(tb testing.TB, p *Proxier, fd, buffer int, mute, sentinel bool) <-chan string {
	ctx, cancel := context.WithCancel(context.Background())
	var sc *sentinelConns
	if sentinel {
		r := newNetlinkReader(p.f.family)
		r.netns = fd
		sc = newSentinelConns(r)
	}
	repairs := make(chan string, 100)
	done := make(chan struct{})
	gr := newNetlinkReader(p.f.family)
	gr.netns = fd
	go func() {
		p.watch(ctx, watcher{
			dial: func() (eventConn, error) {
				c, err := dialEvents(fd, buffer)
				if err != nil {
					return nil, err
				}
				if !mute {
					// Without JoinGroup and LeaveGroup: never muted.
					return struct{ eventConn }{c}, nil
				}
				return c, nil
			},
			gen:      func() (uint32, error) { return gr.generation(ctx) },
			repair:   func(what, _ string) { repairs <- what },
			sentinel: sc,
		})
		close(done)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
	return repairs
}

// TestKernelEventsOverflow: with a receive buffer too small for the
// notifications of a full sync, notifications are lost; when every
// transaction since the last one heard was ours nothing is repaired, and a
// foreign transaction whose notifications were lost is.
func TestKernelEventsOverflow(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	p, _ := kernelProxier(t, fd, testConfig(), nil)
	repairs := kernelWatchBuffer(t, p, fd, 1, false) // the kernel's minimum, a few KB
	st := scaleState(100)
	for i := 0; i < 3; i++ {
		if err := p.Sync(ctx, st); err != nil {
			t.Fatal(err)
		}
		p.ForceFullSync()
	}
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	select {
	case what := <-repairs:
		t.Errorf("our own full syncs: repair %q, want none", what)
	case <-time.After(300 * time.Millisecond):
	}
	lost := p.chk.overflows.Load()
	if lost == 0 {
		t.Fatalf("no notifications lost; the test needs a smaller buffer or more elements")
	}
	// Someone adds 3000 ClusterIPs to ours in one transaction.
	var b strings.Builder
	b.WriteString("add element ip svcproxy cluster-ips { ")
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&b, "10.97.%d.%d, ", i>>8, i&255)
	}
	b.WriteString("10.98.0.1 }\n")
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	select {
	case what := <-repairs:
		t.Logf("foreign transaction: %s (%d overflows before, %d after)", what, lost, p.chk.overflows.Load())
	case <-time.After(time.Second):
		t.Errorf("foreign transaction not noticed within 1s")
	}
}

// benchNetns moves the benchmark's goroutine, locked to its OS thread, into
// a new anonymous network namespace, which goes away with the thread (never
// unlocked, so Go discards it when the benchmark's goroutine ends), and
// returns an fd for it.
func benchNetns(b *testing.B) int {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		b.Fatalf("unshare: %v", err)
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(fd) })
	return fd
}

// benchKernel10k makes a proxier as svcproxy does, with its sockets in the
// namespace fd, and syncs 10,000 Services × 10 endpoints into it.
func benchKernel10k(b *testing.B, fd int) (*Proxier, *proxier.State) {
	p, err := newKernel(testConfig(), []string{"10.96.0.0/16"}, fd)
	if err != nil {
		b.Fatal(err)
	}
	st := scaleState(10000)
	if err := p.Sync(context.Background(), st); err != nil {
		b.Fatal(err)
	}
	return p, st
}

// cpuTime is the CPU time this process and its waited-for children used.
func cpuTime() time.Duration {
	var self, kids unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &self)
	unix.Getrusage(unix.RUSAGE_CHILDREN, &kids)
	var d time.Duration
	for _, tv := range []unix.Timeval{self.Utime, self.Stime, kids.Utime, kids.Stime} {
		d += time.Duration(tv.Nano())
	}
	return d
}

// BenchmarkKernelCheck10k measures, in a throwaway namespace holding
// 10,000 services × 10 endpoints: one idle tick (the generation did not
// move: b.N of them, ns/op); one tick after a foreign change (it reads the
// shape: shape-ms, the mean of 10); full syncs (wall and CPU time, the
// mean of 3) without a subscriber to the notifications (full-ms,
// full-cpu-ms) and with the watcher subscribed (full-sub-ms,
// full-sub-cpu-ms), which must not call our own syncs foreign; and, for
// one Service's element deleted by nft, the times from the start of the
// command to its end (nft-delete-ms), to the watcher's verdict
// (detect-ms) and to the end of the repair (repaired-ms: the sync that
// rewrites the map named).
//
//	go test -run XXX -bench KernelCheck10k -benchtime 1000x ./proxier/nftables/
func BenchmarkKernelCheck10k(b *testing.B) {
	fd := benchNetns(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, st := benchKernel10k(b, fd)
	elems := p.LastResult().Elements
	const fullRuns = 3
	full := func() (wall, cpu time.Duration) {
		for i := 0; i < fullRuns; i++ {
			p.ForceFullSync()
			c0, start := cpuTime(), time.Now()
			if err := p.Sync(ctx, st); err != nil {
				b.Fatal(err)
			}
			wall += time.Since(start)
			cpu += cpuTime() - c0
		}
		return wall / fullRuns, cpu / fullRuns
	}
	fullWall, fullCPU := full()
	repairs := kernelWatch(b, p, fd)
	time.Sleep(100 * time.Millisecond)
	subWall, subCPU := full()
	time.Sleep(500 * time.Millisecond)
	select {
	case what := <-repairs:
		b.Fatalf("our own full sync called foreign: %s", what)
	default:
	}
	// Someone deletes one Service's element: the time from the start of
	// the nft command to the watcher's verdict, and of the repair.
	start := time.Now()
	if out, err := exec.Command("nft", "delete", "element", "ip", TableName, mServiceIPs, "{ 10.96.0.1 . tcp . 80 }").CombinedOutput(); err != nil {
		b.Fatalf("nft: %v: %s", err, out)
	}
	nftTime := time.Since(start)
	select {
	case <-repairs:
	case <-time.After(10 * time.Second):
		b.Fatalf("deleted element not noticed")
	}
	detect := time.Since(start)
	// The sync the watcher asked for: it rewrites the damaged map only.
	if err := p.Sync(ctx, st); err != nil {
		b.Fatal(err)
	}
	repair := time.Since(start)
	if p.LastResult().Full {
		b.Fatal("one deleted element repaired by a full sync")
	}

	const shapeRuns = 10
	var shape time.Duration
	for i := 0; i < shapeRuns; i++ {
		if out, err := exec.Command("nft", "add", "table", "ip", fmt.Sprintf("other%d", i)).CombinedOutput(); err != nil {
			b.Fatalf("nft: %v: %s", err, out)
		}
		start := time.Now()
		what, err := p.Check(ctx)
		shape += time.Since(start)
		if err != nil || what != "" {
			b.Fatalf("shape check: %q, %v", what, err)
		}
	}
	p.mu.Lock()
	shapes, overflows := p.chk.shape, p.chk.overflows.Load()
	p.mu.Unlock()
	if shapes != shapeRuns {
		b.Fatalf("%d shape reads, want %d", shapes, shapeRuns)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if what, err := p.Check(ctx); err != nil || what != "" {
			b.Fatalf("idle check: %q, %v", what, err)
		}
	}
	b.StopTimer()
	if p.chk.shape != shapeRuns {
		b.Fatalf("idle checks read the table")
	}
	b.ReportMetric(float64(shape.Microseconds())/1000/shapeRuns, "shape-ms")
	b.ReportMetric(float64(fullWall.Milliseconds()), "full-ms")
	b.ReportMetric(float64(fullCPU.Milliseconds()), "full-cpu-ms")
	b.ReportMetric(float64(subWall.Milliseconds()), "full-sub-ms")
	b.ReportMetric(float64(subCPU.Milliseconds()), "full-sub-cpu-ms")
	b.ReportMetric(float64(overflows), "overflows")
	b.ReportMetric(float64(nftTime.Microseconds())/1000, "nft-delete-ms")
	b.ReportMetric(float64(detect.Microseconds())/1000, "detect-ms")
	b.ReportMetric(float64(repair.Milliseconds()), "repaired-ms")
	b.ReportMetric(float64(elems), "elements")
}

// TestKernelSharedListeners: the two families' proxiers of one namespace
// (Share) mute each other's watchers during bulk writes, since the kernel
// builds a notification per element while any socket listens, and neither
// calls the other's transactions in the muted gap foreign; a foreign
// transaction in the gap is found when the watchers rejoin.
func TestKernelSharedListeners(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	p4, _ := kernelProxier(t, fd, testConfig(), nil)
	cfg6 := testConfig()
	cfg6.Family = proxier.IPv6
	cfg6.LocalDetector.CIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/48")}
	cfg6.NodeIPs = []netip.Addr{netip.MustParseAddr("fd00::2")}
	p6, _ := kernelProxier(t, fd, cfg6, nil)
	Share(p4, p6)
	st6 := &proxier.State{Family: proxier.IPv6, NodeName: "node-1", Services: []*proxier.Service{
		svc("ns", "web6", proxier.TCP, "fd00:10:96::8", 80, ep("fd00:10:244:1::6", 8080, true))}}
	if err := p4.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	if err := p6.Sync(ctx, st6); err != nil {
		t.Fatal(err)
	}
	r4, r6 := kernelWatch(t, p4, fd), kernelWatch(t, p6, fd)
	none := func(what string) {
		t.Helper()
		select {
		case got := <-r4:
			t.Errorf("%s: IPv4 repair %q, want none", what, got)
		case got := <-r6:
			t.Errorf("%s: IPv6 repair %q, want none", what, got)
		case <-time.After(300 * time.Millisecond):
		}
	}
	none("the watchers' start")

	// An IPv4 full sync of 300 Services (3,000+ elements) mutes both
	// watchers; its two transactions are the IPv6 watcher's own too.
	p4.ForceFullSync()
	if err := p4.Sync(ctx, scaleState(300)); err != nil {
		t.Fatal(err)
	}
	none("an IPv4 full sync")

	// While IPv4 has the group muted, IPv6 does not hear a foreign flush
	// of its chain; it judges the gap when it rejoins.
	foreignWhileMuted(t, p4, "flush chain ip6 svcproxy services", none)
	// Neither watcher heard it, so neither knows which table it touched:
	// both rewrite.
	for fam, r := range map[string]<-chan string{"IPv4": r4, "IPv6": r6} {
		select {
		case what := <-r:
			if !strings.Contains(what, "may not be ours") {
				t.Errorf("%s repair %q, want a judgement of lost notifications", fam, what)
			}
		case <-time.After(time.Second):
			t.Errorf("%s: the unheard foreign transaction was never judged", fam)
		}
	}
	if err := p4.Sync(ctx, testState()); err != nil {
		t.Fatal(err)
	}
	if err := p6.Sync(ctx, st6); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, "nft", "list", "chain", "ip6", TableName, "services"); !strings.Contains(out, "vmap @service-ips") {
		t.Errorf("IPv6 services chain not repaired:\n%s", out)
	}
}

// TestKernelSentinel: while someone's commit deletes many elements of our
// table, the sentinel takes the watchers out of the notification group
// (the kernel then builds no notification per element), and the gap is
// judged as lost notifications once the commit is over; our own syncs,
// full and partial, never set it off.
func TestKernelSentinel(t *testing.T) {
	_, fd := enterNetns(t)
	ctx := context.Background()
	p, _ := kernelProxier(t, fd, testConfig(), nil)
	st := scaleState(10000) // 100,000 endpoints
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	repairs := kernelWatchSentinel(t, p, fd)
	none := noRepair(t, repairs)
	none("the watcher's start")
	p.ForceFullSync()
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	none("our full sync")
	for i := 0; i < 5; i++ {
		changed := *st.Services[i]
		changed.Endpoints = slices.Clone(changed.Endpoints)
		changed.Endpoints[5] = ep(fmt.Sprintf("10.250.0.%d", i), 8080, false)
		st2 := *st
		st2.Services = slices.Clone(st.Services)
		st2.Services[i] = &changed
		if err := p.Sync(ctx, &st2); err != nil {
			t.Fatal(err)
		}
		st = &st2
	}
	none("our partial syncs")

	start := time.Now()
	sh(t, "nft", "flush map ip svcproxy endpoints-ip-tcp")
	took := time.Since(start)
	select {
	case what := <-repairs:
		t.Logf("the flush of 100,000 elements took %v; repair: %s", took.Round(time.Millisecond), what)
		if !strings.Contains(what, "notifications lost") {
			t.Errorf("repair %q: the flush was heard, not sat out", what)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the flush was never noticed")
	}
	if err := p.Sync(ctx, st); err != nil {
		t.Fatal(err)
	}
	if !p.LastResult().Full {
		t.Error("the flush was not repaired by a full sync")
	}
	if n := strings.Count(sh(t, "nft", "list map ip svcproxy endpoints-ip-tcp"), " : "); n < 100000 {
		t.Errorf("endpoints-ip-tcp holds %d elements after the repair, want 100,000", n)
	}
	none("our repair")
}
