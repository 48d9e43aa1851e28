// Command demo shows svcproxy at work on one machine, as root:
//
//	go run ./e2e/cmd/demo [-mode nftables]     (or: make demo [MODE=nftables])
//
// It starts a one-node "cluster" made of network namespaces — a real
// kube-apiserver and etcd, three backend pods and a client pod on the
// node's bridge, and svcproxy — creates a ClusterIP Service with three
// endpoints, shows the rules svcproxy programmed, sends 30 connections
// through the Service and counts which pod answered each. Then it removes
// everything (also on Ctrl-C). The host's own network setup is never
// touched.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

const (
	namespace   = "demo"
	serviceName = "hello"
	connections = 30
)

func main() {
	mode := flag.String("mode", "iptables", "svcproxy's --proxy-mode: iptables or nftables")
	flag.Parse()
	if *mode != "iptables" && *mode != "nftables" {
		fmt.Fprintf(os.Stderr, "demo: -mode %q: want iptables or nftables\n", *mode)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "The demo needs root: it creates network namespaces and programs iptables inside them")
		fmt.Fprintln(os.Stderr, "(never on the host itself). Try: sudo make demo")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C ends the demo at once; its reaper still cleans up
	}()
	err := run(ctx, *mode)
	switch {
	case ctx.Err() != nil:
		fmt.Println("\nInterrupted; everything the demo made has been removed.")
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

var stepStart time.Time

func step(n int, format string, args ...any) {
	stepStart = time.Now()
	fmt.Printf("[%d/5] %s ... ", n, fmt.Sprintf(format, args...))
}

func done(format string, args ...any) {
	msg := "done"
	if format != "" {
		msg = fmt.Sprintf(format, args...)
	}
	fmt.Printf("%s (%v)\n", msg, time.Since(stepStart).Round(time.Millisecond))
}

func run(ctx context.Context, mode string) (err error) {
	fmt.Printf(`svcproxy demo (%s mode)
=============
A one-node "cluster" on this machine, built from network namespaces:
  - a real kube-apiserver and etcd (built from source on the first run, then cached)
  - pods a, b and c running an echo server, and a client pod, on the node's bridge 10.244.1.0/24
  - svcproxy, programming %s inside the node's namespace
The host's own network setup is not touched, and everything is removed at the end (also on Ctrl-C).
`, mode, mode)
	fmt.Println()
	step(1, "Building svcproxy, kube-apiserver and etcd; starting the node, etcd and kube-apiserver")
	fmt.Println()
	env, err := harness.New(ctx, harness.Options{ProxyMode: mode, Logf: func(format string, args ...any) {
		fmt.Printf("      %s\n", fmt.Sprintf(format, args...))
	}})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && ctx.Err() == nil {
			env.KeepWorkDir()
			fmt.Fprintf(os.Stderr, "\nLogs are kept in %s\n", env.LogDir)
			if p := env.Svcproxy(); p != nil {
				fmt.Fprintf(os.Stderr, "Last lines of svcproxy's log:\n%s\n", p.Tail(20))
			}
		}
		fmt.Print("\nTearing down ... ")
		start := time.Now()
		if cerr := env.Close(); cerr != nil {
			fmt.Printf("problem: %v\n", cerr)
			if err == nil {
				err = cerr
			}
			return
		}
		fmt.Printf("done (%v): no namespace of run %s is left.\n", time.Since(start).Round(time.Millisecond), env.Prefix)
	}()
	done("      ready: namespaces %s-*", env.Prefix)

	step(2, "Starting pods")
	pods, err := env.AddEchoPods(ctx, "a", "b", "c", "client")
	if err != nil {
		return err
	}
	backends, client := pods[:3], pods[3]
	var list []string
	for _, p := range env.Pods() {
		list = append(list, p.Name+" "+p.IP)
	}
	done("%s", strings.Join(list, ", "))

	step(3, "Starting svcproxy in the node namespace")
	if err := env.StartSvcproxyAndWait(ctx, 60*time.Second); err != nil {
		return err
	}
	done("first sync done")

	step(4, "Creating Service %s/%s with 3 endpoints (a, b, c)", namespace, serviceName)
	svc, err := env.CreateService(ctx, namespace, serviceName, harness.Port{Name: "http", Port: 80, TargetPort: harness.EchoPort})
	if err != nil {
		return err
	}
	var ips []string
	for _, p := range backends {
		ips = append(ips, p.IP)
	}
	if _, err := env.SetEndpoints(ctx, svc, ips...); err != nil {
		return err
	}
	var want []string
	for _, ip := range ips {
		want = append(want, fmt.Sprintf("%s:%d", ip, harness.EchoPort))
	}
	nat, err := env.WaitForServiceDNATs(ctx, 30*time.Second, namespace, serviceName, "http", want...)
	if err != nil {
		return err
	}
	done("ClusterIP %s, port 80 -> pods' port %d; rules in place", svc.Spec.ClusterIP, harness.EchoPort)

	showRules(ctx, env, nat, svc.Spec.ClusterIP, ips)

	step(5, "Sending %d connections from pod %q (%s) to %s:80", connections, client.Name, client.IP, svc.Spec.ClusterIP)
	replies, err := client.Connect(ctx, harness.ClientOptions{Target: fmt.Sprintf("%s:80", svc.Spec.ClusterIP), Count: connections})
	if err != nil {
		return err
	}
	done("")
	fmt.Println()
	ownSource := true
	for i, r := range replies {
		if r.Err != "" {
			fmt.Printf("  %2d  ERROR: %s\n", i+1, r.Err)
			continue
		}
		fmt.Printf("  %2d  answered by pod %-6s (it saw the connection come from %s)\n", i+1, r.Backend, r.Source)
		if r.SourceIP() != client.IP {
			ownSource = false
		}
	}

	tally := harness.Tally(replies)
	fmt.Printf("\n  %-8s %-13s %s\n", "pod", "IP", "connections")
	total := 0
	for _, p := range backends {
		n := tally[p.Name]
		total += n
		fmt.Printf("  %-8s %-13s %3d  %s\n", p.Name, p.IP, n, strings.Repeat("#", n))
	}
	failed := 0
	for k, n := range tally {
		if strings.HasPrefix(k, "ERR ") || !isBackend(k, backends) {
			failed += n
			fmt.Printf("  %-22s %3d\n", k, n)
		}
	}
	fmt.Printf("  %-22s %3d\n", "total", total+failed)
	if failed > 0 {
		return errors.New("some connections did not reach a backend")
	}
	fmt.Printf("\nEvery connection went to the Service's ClusterIP, and svcproxy's rules spread them over the pods.\n")
	if ownSource {
		fmt.Printf("Each pod saw the client's own address %s: traffic between pods is not masqueraded.\n", client.IP)
	} else {
		fmt.Printf("Note: some pods saw another source address than the client's own %s (masqueraded).\n", client.IP)
	}
	return nil
}

// showRules prints the rules that carry the Service, in the mode's own
// syntax: nat is what WaitForServiceDNATs last read.
func showRules(ctx context.Context, env *harness.Env, nat, clusterIP string, endpoints []string) {
	if env.ProxyMode == "nftables" {
		table, err := env.NFTList(ctx, "table", "ip", "svcproxy")
		if err != nil {
			fmt.Printf("\n(nft list table ip svcproxy failed: %v)\n", err)
			return
		}
		fmt.Printf("\nWhat svcproxy wrote for %s/%s (nft list table ip svcproxy in %s), the lines that name it:\n", namespace, serviceName, env.Node.Name)
		for _, line := range strings.Split(table, "\n") {
			if mentions(line, append([]string{clusterIP}, endpoints...)) {
				fmt.Println("  " + strings.TrimSpace(line))
			}
		}
		fmt.Printf(`  service-ips sends the ClusterIP's port to the cluster-ip chain; the Service's pick chain
  chooses an endpoint with numgen, and the endpoints map DNATs to its pod.
  The hairpin set masquerades a pod that reaches itself through the Service.

`)
		return
	}
	fmt.Printf("\nThe nat rules svcproxy wrote for %s/%s (iptables-save -t nat in %s):\n", namespace, serviceName, env.Node.Name)
	for _, chain := range []string{"-A KUBE-SERVICES ", "-A KUBE-SVC-", "-A KUBE-SEP-"} {
		for _, line := range strings.Split(nat, "\n") {
			if strings.HasPrefix(line, chain) && strings.Contains(line, namespace+"/"+serviceName) {
				fmt.Println("  " + line)
			}
		}
	}
	fmt.Printf(`  KUBE-SERVICES matches the ClusterIP and jumps to the Service's KUBE-SVC chain, which picks an
  endpoint at random (1/3, then 1/2 of the rest, then the last); each KUBE-SEP chain DNATs to one pod.
  Traffic from outside the cluster CIDR, or from a pod to itself, is marked for masquerading.

`)
}

func mentions(line string, words []string) bool {
	for _, w := range words {
		if strings.Contains(line, w) {
			return true
		}
	}
	return false
}

func isBackend(name string, pods []*harness.Pod) bool {
	for _, p := range pods {
		if p.Name == name {
			return true
		}
	}
	return false
}
