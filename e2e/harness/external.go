package harness

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
)

// External client addresses: in the ext namespace, routed to through the
// node's gateway. ExtAllowedIP is inside the source ranges the tests allow;
// ExtBlockedIP is not.
const (
	ExtAllowedIP = "203.0.113.10"
	ExtBlockedIP = "198.51.100.10"
)

var extClients atomic.Int64

// SetupExternalClients gives the ext namespace the external client
// addresses. The node reaches them through its default route.
func (e *Env) SetupExternalClients(ctx context.Context) error {
	for _, ip := range []string{ExtAllowedIP, ExtBlockedIP} {
		if out, err := e.Ext.Run(ctx, "ip", "addr", "replace", ip+"/32", "dev", "lo"); err != nil {
			return fmt.Errorf("ext address %s: %v: %s", ip, err, out)
		}
	}
	return nil
}

// RouteToNode makes the ext namespace send traffic for vip (an external or
// load-balancer IP) to the node, as a load balancer or router would.
func (e *Env) RouteToNode(ctx context.Context, vip string) error {
	out, err := e.Ext.Run(ctx, "ip", "route", "replace", vip+"/32", "via", NodeIP)
	if err != nil {
		return fmt.Errorf("route %s via the node: %v: %s", vip, err, out)
	}
	return nil
}

// ExternalConnect runs `echo client` in the ext namespace (outside the
// cluster) to completion. Set opts.SrcIP to ExtAllowedIP or ExtBlockedIP.
func (e *Env) ExternalConnect(ctx context.Context, opts ClientOptions) ([]Reply, error) {
	return e.ConnectFrom(ctx, e.Ext, opts)
}

// ConnectFrom runs `echo client` in ns (the node's, say) to completion.
func (e *Env) ConnectFrom(ctx context.Context, ns *Netns, opts ClientOptions) ([]Reply, error) {
	log := filepath.Join(e.LogDir, fmt.Sprintf("client-%s-%d.log", ns.Name, extClients.Add(1)))
	var out bytes.Buffer
	proc, err := startProcess(ns, "echo client in "+ns.Name, log, &out, append([]string{e.Bins.Echo}, opts.args()...)...)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.procs = append(e.procs, proc)
	e.mu.Unlock()
	c := &Client{proc: proc, stdout: &out}
	return c.Wait(ctx)
}
