package nftables

import (
	"context"

	"sigs.k8s.io/knftables"

	"github.com/svcproxy/svcproxy/proxier/nfnl"
)

// fakeReader reads the table of a knftables.Fake for the guard. Its
// generation moves whenever the fake's content changes, as the kernel's
// does on every committed transaction.
type fakeReader struct {
	fake *knftables.Fake
	last string
	gen  uint32
}

func (r *fakeReader) Generation(context.Context) (uint32, error) {
	if d := r.fake.Dump(); d != r.last {
		r.last = d
		r.gen++
	}
	return r.gen, nil
}

func (r *fakeReader) Shape(context.Context) (*nfnl.Shape, error) {
	r.fake.RLock()
	defer r.fake.RUnlock()
	shape := &nfnl.Shape{Chains: map[string]int{}, Sets: map[string]nfnl.SetKind{}}
	t := r.fake.Table
	if t == nil {
		return shape, nil
	}
	shape.Exists = true
	for name, c := range t.Chains {
		shape.Chains[name] = len(c.Rules)
	}
	for name := range t.Sets {
		shape.Sets[name] = nfnl.PlainSet
	}
	for name := range t.Maps {
		shape.Sets[name] = nfnl.DataMap
	}
	return shape, nil
}
