// Package guard watches the kernel for others' changes to one nf_tables
// table and hands what they damaged to the next sync.
//
// It knows the table by its name and its chains and sets by theirs; it
// knows nothing of what they mean. It learns of others' changes in two
// ways: the nf_tables notifications (watch.go), which name every chain and
// set a transaction changed, elements included, and a check every tick of
// the ruleset generation and, when that moved, of the table's shape
// (check.go). It tells the proxier's own transactions from others' by
// their generations, which the writer reports to it (account.go).
//
// What it finds is a trigger, as the informers are: Watch returns a
// proxier.Signal the syncer's runner follows. The damage itself travels
// into the sync as data: the sync starts with Take.
package guard

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// Config says what a guard watches.
type Config struct {
	Family proxier.IPFamily
	Table  string
	// Traffic reports a set whose elements the packet path writes (session
	// affinity): notifications of its elements are not damage. It is
	// called with the name's bytes, and must not keep them.
	Traffic func(set []byte) bool
	// Reader reads the generation and shape for checks and for the
	// accounting of the proxier's writes; nil: the guard checks nothing.
	Reader Reader
	// Events, when set, is where the watcher subscribes to the
	// notifications; nil: Watch only checks.
	Events *Events
}

// Events says where and how the watcher reads the notifications.
type Events struct {
	// NetNS is the network namespace (an open fd of it; 0: the calling
	// thread's).
	NetNS int
	// Buffer is the receive buffer (0: DefaultBuffer).
	Buffer int
	// Sentinel runs the sentinel (sentinel.go) beside the group's first
	// watcher.
	Sentinel bool
	// Unmuted leaves the watcher subscribed through bulk writes (tests of
	// lost notifications).
	Unmuted bool
}

// Guard is one table's guard.
type Guard struct {
	cfg    Config
	family nfnl.Family

	mu sync.Mutex
	// valid: the last sync succeeded, and nothing since makes the next
	// one full anyway; only then are others' changes judged.
	valid bool
	// expected is the table's shape as the last sync left it.
	expected *nfnl.Shape
	ledger   ledger
	// pending is the damage the next sync takes.
	pending   Damage
	stats     Stats
	overflows atomic.Int64
	// ev is the watcher's subscription, which bulk writes mute; group
	// holds it and those of the namespace's other guards.
	ev    eventMute
	group *group
}

// Stats counts what a guard did.
type Stats struct {
	// IdleChecks stopped at the generation; ShapeReads read the shape.
	IdleChecks, ShapeReads int
	// Foreign is others' transactions seen touching the table.
	Foreign int
	// Overflows is the notification losses (a full receive queue).
	Overflows int64
}

// New returns a guard for cfg.
func New(cfg Config) *Guard {
	g := &Guard{cfg: cfg, family: nfnl.IPv4}
	if cfg.Family == proxier.IPv6 {
		g.family = nfnl.IPv6
	}
	g.group = &group{members: []*eventMute{&g.ev}}
	return g
}

// Take returns the damage others did since the last Take, and forgets it.
func (g *Guard) Take() Damage {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.pending
	g.pending = Damage{}
	if g.ev.overrun.Swap(false) {
		// A loss of notifications could not be judged.
		d.Broad = true
	}
	return d
}

// ForceFullSync records broad damage: the next sync rewrites the table.
func (g *Guard) ForceFullSync() {
	g.mu.Lock()
	g.pending.Broad, g.valid = true, false
	g.mu.Unlock()
}

// Stats returns what the guard did so far.
func (g *Guard) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Overflows = g.overflows.Load()
	return s
}

// Watch starts the guard until ctx ends: the check every interval (see
// Check) and, with Config.Events, the notification watcher. The signal
// asks for a sync when either finds the table altered.
func (g *Guard) Watch(ctx context.Context, interval time.Duration) proxier.Signal {
	sig := proxier.NewSignal()
	if g.cfg.Events != nil {
		go g.Notify(ctx, *g.cfg.Events, func(what, rewrite string) {
			klog.InfoS("Rules altered by someone else; rewriting them", "family", g.cfg.Family, "altered", what, "rewrite", rewrite)
			sig.Raise()
		})
	}
	go proxier.Monitor(ctx, g.cfg.Family, g, interval, sig)
	return sig
}

// Notify reads the notifications ev says until ctx ends (Watch reads
// Config.Events'). found is called for every change of others' it finds,
// once the damage waits for the next sync, with what was altered and what
// the next sync rewrites.
func (g *Guard) Notify(ctx context.Context, ev Events, found func(what, rewrite string)) {
	buffer := ev.Buffer
	if buffer == 0 {
		buffer = DefaultBuffer
	}
	genConn, sentinelConn := &lazyConn{netns: ev.NetNS}, &lazyConn{netns: ev.NetNS}
	defer genConn.close()
	defer sentinelConn.close()
	w := watcher{
		dial: func() (subscription, error) {
			s, err := nfnl.Subscribe(ev.NetNS, buffer)
			switch {
			case err != nil:
				return nil, err
			case ev.Unmuted:
				// Without Leave and Join: never muted.
				return struct{ subscription }{s}, nil
			}
			return s, nil
		},
		gen:   func() (uint32, error) { return genConn.generation(ctx) },
		found: found,
	}
	if ev.Sentinel {
		w.sentinel = &sentinelConns{
			gen: func() (uint32, error) { return sentinelConn.generation(ctx) },
			barrier: func() error {
				c, err := sentinelConn.get()
				if err != nil {
					return err
				}
				return c.Barrier(ctx)
			},
		}
	}
	g.watch(ctx, w)
}

// lazyConn is a connection dialled on first use.
type lazyConn struct {
	netns int
	mu    sync.Mutex
	c     *nfnl.Conn
}

func (l *lazyConn) get() (*nfnl.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c == nil {
		c, err := nfnl.Dial(l.netns)
		if err != nil {
			return nil, err
		}
		l.c = c
	}
	return l.c, nil
}

func (l *lazyConn) generation(ctx context.Context) (uint32, error) {
	c, err := l.get()
	if err != nil {
		return 0, err
	}
	return c.Generation(ctx)
}

func (l *lazyConn) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		l.c.Close()
	}
}
