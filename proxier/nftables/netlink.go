package nftables

import (
	"context"
	"fmt"
	"iter"
	"slices"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// Element-only changes go over a long-lived netlink socket, in one
// nf_tables batch (atomic, like an nft -f transaction), instead of starting
// nft (BenchmarkKernelNftables10k measures a partial sync so written).
// Everything else (chains, rules, interval sets) goes through nft.

// elemOp is one element to add or delete or, with flush, the removal of
// every element of set e.set.
type elemOp struct {
	add   bool
	flush bool
	e     elem
}

// netlinkWritable reports whether every op can go over netlink.
func netlinkWritable(ops []elemOp) bool {
	for _, op := range ops {
		if !netlinkWrites(op.e.set) {
			return false
		}
	}
	return true
}

// elemWriter writes element batches to one network namespace's nf_tables.
type elemWriter struct {
	family nfnl.Family
	conn   *nfnl.Conn
	// batches counts the batches applied.
	batches int
}

func newElemWriter(f proxier.IPFamily, conn *nfnl.Conn) *elemWriter {
	w := &elemWriter{family: nfnl.IPv4, conn: conn}
	if f == proxier.IPv6 {
		w.family = nfnl.IPv6
	}
	return w
}

// opSeq is n ops, produced in order by each.
type opSeq struct {
	n    int
	each iter.Seq[elemOp]
}

func opsOf(ops []elemOp) opSeq { return opSeq{len(ops), slices.Values(ops)} }

// encode makes ops one batch, in order: each run of ops on the same set in
// the same direction shares messages.
func (w *elemWriter) encode(ops opSeq) (*nfnl.Batch, error) {
	b := nfnl.NewBatch(w.family, TableName)
	var key, value []byte
	for op := range ops.each {
		if op.flush {
			b.Flush(op.e.set)
			continue
		}
		sp, ok := specOf(op.e.set)
		if !ok || sp.interval {
			return nil, fmt.Errorf("set %s is not written over netlink", op.e.set)
		}
		var err error
		if key, err = appendEncoded(key[:0], sp.key, op.e.key[:]); err != nil {
			return nil, fmt.Errorf("%s key: %w", op.e.set, err)
		}
		ne := nfnl.Elem{Key: key}
		if !op.add {
			b.Delete(op.e.set, ne)
			continue
		}
		switch sp.kind {
		case kindVMap:
			ne.Verdict = nfnl.Verdict{Kind: nfnl.Drop}
			if v := op.e.verdict; v.chain != "" {
				ne.Verdict = nfnl.Verdict{Kind: nfnl.Goto, Chain: v.chain}
				if v.jump {
					ne.Verdict.Kind = nfnl.Jump
				}
			}
		case kindMap:
			if value, err = appendEncoded(value[:0], sp.value, op.e.value[:]); err != nil {
				return nil, fmt.Errorf("%s value: %w", op.e.set, err)
			}
			ne.Value = value
		}
		b.Add(op.e.set, ne)
	}
	return b, b.Err()
}

// appendEncoded packs atoms as nf_tables registers hold them.
func appendEncoded(out []byte, fields []field, t []atom) ([]byte, error) {
	for i, f := range fields {
		a := t[i]
		switch f {
		case fAddr:
			out = nfnl.AppendAddr(out, a.addr())
		case fProto:
			out = nfnl.AppendProto(out, uint8(a.num))
		case fPort:
			out = nfnl.AppendPort(out, uint16(a.num))
		case fIndex:
			out = nfnl.AppendUint32(out, a.num)
		default:
			return nil, fmt.Errorf("field %d is not written over netlink", f)
		}
	}
	return out, nil
}

// apply runs ops as one nf_tables batch: all of them or none.
func (w *elemWriter) apply(ctx context.Context, ops []elemOp) error {
	return w.applySeq(ctx, opsOf(ops))
}

// applySeq is apply of the ops of a sequence.
func (w *elemWriter) applySeq(ctx context.Context, ops opSeq) error {
	if ops.n == 0 {
		return nil
	}
	b, err := w.encode(ops)
	if err != nil {
		return err
	}
	return w.send(ctx, b)
}

// ahead starts encoding ops on another goroutine, so that a full write
// encodes its elements while nft writes its rules, and returns the
// function that sends them once encoded. ops must not change meanwhile.
func (w *elemWriter) ahead(ops opSeq) func(ctx context.Context) error {
	if ops.n == 0 {
		return func(context.Context) error { return nil }
	}
	type encoded struct {
		b   *nfnl.Batch
		err error
	}
	done := make(chan encoded, 1)
	go func() {
		b, err := w.encode(ops)
		done <- encoded{b, err}
	}()
	return func(ctx context.Context) error {
		e := <-done
		if e.err != nil {
			return e.err
		}
		return w.send(ctx, e.b)
	}
}

// send commits an encoded batch.
func (w *elemWriter) send(ctx context.Context, b *nfnl.Batch) error {
	if err := w.conn.Send(ctx, b); err != nil {
		return err
	}
	w.batches++
	return nil
}
