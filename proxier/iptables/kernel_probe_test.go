package iptables

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

// hostFiles points the host files NewKernel reads and writes at fresh files
// in a temporary directory: tcp_be_liberal holding liberal ("" means no such
// file), route_localnet holding "0". It returns route_localnet's path.
func hostFiles(t *testing.T, liberal string) string {
	t.Helper()
	dir := t.TempDir()
	oldLiberal, oldLocalnet := tcpBeLiberalPath, routeLocalnetPath
	t.Cleanup(func() { tcpBeLiberalPath, routeLocalnetPath = oldLiberal, oldLocalnet })
	tcpBeLiberalPath = filepath.Join(dir, "nf_conntrack_tcp_be_liberal")
	routeLocalnetPath = filepath.Join(dir, "route_localnet")
	if liberal != "" {
		if err := os.WriteFile(tcpBeLiberalPath, []byte(liberal), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(routeLocalnetPath, []byte("0"), 0o644); err != nil {
		t.Fatal(err)
	}
	return routeLocalnetPath
}

// TestDropInvalidFollowsConntrack: INVALID packets are dropped unless
// conntrack is liberal, in --dry-run and in NewKernel alike.
func TestDropInvalidFollowsConntrack(t *testing.T) {
	for _, tc := range []struct {
		name, liberal string
		wantDrop      bool
	}{
		{"no such file", "", true},
		{"strict", "0\n", true},
		{"liberal", "1\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostFiles(t, tc.liberal)
			p, err := NewKernel(context.Background(), proxier.Config{Family: proxier.IPv4})
			if err != nil {
				t.Fatal(err)
			}
			// After a proxier started here, --dry-run renders as it does.
			opt := DryRunOptions(context.Background())
			if opt.DropInvalid != tc.wantDrop || !opt.RandomFully {
				t.Errorf("DryRunOptions = %+v, want DropInvalid %v and RandomFully", opt, tc.wantDrop)
			}
			if !slices.Equal(opt.NFAcct, p.opt.NFAcct) {
				t.Errorf("DryRunOptions NFAcct = %v, NewKernel's %v", opt.NFAcct, p.opt.NFAcct)
			}
			if p.opt.DropInvalid != tc.wantDrop {
				t.Errorf("NewKernel DropInvalid = %v, want %v", p.opt.DropInvalid, tc.wantDrop)
			}
		})
	}
}

// TestNewKernelRouteLocalnet: route_localnet is set only when IPv4
// NodePorts answer on localhost (never when --nodeport-addresses leaves
// loopback out: CVE-2020-8558).
func TestNewKernelRouteLocalnet(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		cfg  proxier.Config
		want string
	}{
		{"IPv4, every address", proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true}, "1"},
		{"IPv4, loopback among the CIDRs", proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{pfx("127.0.0.0/8"), pfx("192.168.0.0/16")}}, "1"},
		{"IPv4, CIDRs without loopback", proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true,
			NodePortAddresses: []netip.Prefix{pfx("192.168.0.0/16")}}, "0"},
		{"IPv4, localhost NodePorts off", proxier.Config{Family: proxier.IPv4}, "0"},
		{"IPv6", proxier.Config{Family: proxier.IPv6, LocalhostNodePorts: true}, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := hostFiles(t, "0")
			if _, err := NewKernel(context.Background(), tc.cfg); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("route_localnet = %q, want %q", b, tc.want)
			}
		})
	}
	// Already set (by an init container): left alone, so a read-only
	// /proc/sys is no error.
	path := hostFiles(t, "0")
	if err := os.WriteFile(path, []byte("1\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := NewKernel(context.Background(), proxier.Config{Family: proxier.IPv4, LocalhostNodePorts: true}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "1\n" {
		t.Errorf("route_localnet already 1 was rewritten: %q", b)
	}
	if _, err := NewKernel(context.Background(), proxier.Config{Family: 7}); err == nil {
		t.Error("NewKernel accepted family 7")
	}
}
