package harness

import (
	"context"
	"errors"
)

// The second node: a namespace svcproxy does not run in, hosting remote
// pods on its own pod subnet, linked to the first node and routed.
const (
	Node2Name  = "node-2"
	Node1Link  = "192.168.100.1" // node 1's end of the node link
	Node2Link  = "192.168.100.2"
	Pod2CIDR   = "10.244.2.0/24"
	Bridge2IP  = "10.244.2.1"
	Bridge2IP6 = "fd00:10:244:2::1"
)

// Node2 returns the second node's namespace, creating it (with its bridge
// and the routes between the nodes' pod subnets) on first use.
func (e *Env) Node2(ctx context.Context) (*Netns, error) {
	var err error
	e.node2Once.Do(func() { err = e.setupNode2(ctx) })
	if err == nil && e.node2 == nil {
		err = errNode2
	}
	return e.node2, err
}

var errNode2 = errors.New("the second node could not be set up (see the first error)")

func (e *Env) setupNode2(ctx context.Context) error {
	n2, err := e.newNetns(ctx, "node2")
	if err != nil {
		return err
	}
	if err := e.Node.runAll(ctx,
		[]string{"ip", "link", "add", "to-node2", "type", "veth", "peer", "name", "to-node1", "netns", n2.Name},
		[]string{"ip", "addr", "add", Node1Link + "/30", "dev", "to-node2"},
		[]string{"ip", "link", "set", "to-node2", "up"},
		[]string{"ip", "route", "add", Pod2CIDR, "via", Node2Link},
		[]string{"ip", "-6", "addr", "add", "fd00:100::1/64", "dev", "to-node2", "nodad"},
		[]string{"ip", "-6", "route", "add", "fd00:10:244:2::/64", "via", "fd00:100::2"},
	); err != nil {
		return err
	}
	if err := n2.runAll(ctx,
		[]string{"ip", "addr", "add", Node2Link + "/30", "dev", "to-node1"},
		[]string{"ip", "link", "set", "to-node1", "up"},
		[]string{"ip", "route", "add", "default", "via", Node1Link},
		[]string{"ip", "-6", "addr", "add", "fd00:100::2/64", "dev", "to-node1", "nodad"},
		[]string{"ip", "-6", "route", "add", "default", "via", "fd00:100::1"},
		[]string{"ip", "link", "add", "br0", "type", "bridge"},
		[]string{"ip", "addr", "add", Bridge2IP + "/24", "dev", "br0"},
		[]string{"ip", "-6", "addr", "add", Bridge2IP6 + "/64", "dev", "br0", "nodad"},
		[]string{"ip", "link", "set", "br0", "up"},
	); err != nil {
		return err
	}
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := n2.Sysctl(ctx, kv[0], kv[1]); err != nil {
			return err
		}
	}
	e.node2 = n2
	return nil
}

// AddRemotePod creates a pod on the second node (10.244.2.N), running the
// echo server.
func (e *Env) AddRemotePod(ctx context.Context, name string) (*Pod, error) {
	n2, err := e.Node2(ctx)
	if err != nil {
		return nil, err
	}
	p, err := e.addPod(ctx, name, n2, "10.244.2.", "fd00:10:244:2::", Bridge2IP, Bridge2IP6)
	if err != nil {
		return nil, err
	}
	return p, p.StartEcho(ctx)
}
