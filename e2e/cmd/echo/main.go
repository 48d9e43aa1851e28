// Command echo is the e2e tests' backend and client.
//
//	echo serve --name NAME --port P
//
// listens on TCP and UDP port P on all addresses and answers every TCP
// connection and every UDP datagram with one line, "NAME <ip>:<port>\n",
// naming the source address it saw (so masquerading is observable); TCP
// connections are closed after the line.
//
//	echo client --proto tcp|udp --target IP:PORT [--count N] [--duration D]
//	            [--timeout D] [--interval D] [--src-port P]
//
// makes N attempts (a new TCP connection, or a new UDP socket, each time)
// and prints one line per attempt: the reply line, or "ERR refused",
// "ERR timeout" or "ERR <other error>". With --count 0 it loops until
// --duration has elapsed. A summary goes to stderr. The exit status is 0
// even when attempts failed: the caller judges the lines.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: echo serve --name NAME --port P\n"+
		"       echo client --proto tcp|udp --target IP:PORT [--count N] [--duration D] [--timeout D] [--interval D] [--src-port P]")
	os.Exit(2)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "name to answer with")
	port := fs.Int("port", 8080, "TCP and UDP port to listen on")
	fs.Parse(args)
	if *name == "" {
		return errors.New("serve: --name is required")
	}
	addr := fmt.Sprintf(":%d", *port)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "echo %s: listening on tcp and udp %s\n", *name, addr)

	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					fmt.Fprintln(os.Stderr, "accept:", err)
				}
				return
			}
			go func() {
				defer c.Close()
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "%s %s\n", *name, c.RemoteAddr())
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					fmt.Fprintln(os.Stderr, "udp read:", err)
				}
				return
			}
			if _, err := pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", *name, from)), from); err != nil {
				fmt.Fprintln(os.Stderr, "udp write:", err)
			}
		}
	}()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	ln.Close()
	pc.Close()
	return nil
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	proto := fs.String("proto", "tcp", "tcp or udp")
	target := fs.String("target", "", "IP:PORT to connect to")
	count := fs.Int("count", 1, "number of attempts; 0 loops until --duration elapses")
	duration := fs.Duration("duration", 0, "with --count 0: how long to loop")
	timeout := fs.Duration("timeout", 2*time.Second, "per-attempt timeout (connect plus reply)")
	interval := fs.Duration("interval", 0, "pause between attempts")
	srcPort := fs.Int("src-port", 0, "local port to send from (0: any)")
	srcIP := fs.String("src-ip", "", "local address to send from (empty: any)")
	fs.Parse(args)

	if *proto != "tcp" && *proto != "udp" {
		return fmt.Errorf("client: --proto must be tcp or udp, not %q", *proto)
	}
	if _, _, err := net.SplitHostPort(*target); err != nil {
		return fmt.Errorf("client: --target: %v", err)
	}
	if *count < 0 || (*count == 0 && *duration <= 0) {
		return errors.New("client: need --count N > 0, or --count 0 with --duration D")
	}

	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	start := time.Now()
	n, failed := 0, 0
	for {
		if *count > 0 && n >= *count {
			break
		}
		if *count == 0 && time.Since(start) >= *duration {
			break
		}
		if n > 0 && *interval > 0 {
			time.Sleep(*interval)
		}
		line := attempt(*proto, *target, *timeout, *srcIP, *srcPort)
		if strings.HasPrefix(line, "ERR ") {
			failed++
		}
		fmt.Fprintln(out, line)
		n++
	}
	fmt.Fprintf(os.Stderr, "echo client: %d attempts, %d failed, in %v\n", n, failed, time.Since(start).Round(time.Millisecond))
	return nil
}

// attempt makes one connection (TCP) or sends one datagram from a fresh
// socket (UDP) and returns the reply line or "ERR <reason>".
func attempt(proto, target string, timeout time.Duration, srcIP string, srcPort int) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := net.Dialer{}
	if srcPort > 0 || srcIP != "" {
		ip := net.ParseIP(srcIP)
		if proto == "tcp" {
			d.LocalAddr = &net.TCPAddr{IP: ip, Port: srcPort}
		} else {
			d.LocalAddr = &net.UDPAddr{IP: ip, Port: srcPort}
		}
		d.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	c, err := d.DialContext(ctx, proto, target)
	if err != nil {
		return "ERR " + classify(err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	if proto == "udp" {
		if _, err := c.Write([]byte("hello\n")); err != nil {
			return "ERR " + classify(err)
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return "ERR " + classify(err)
	}
	return strings.TrimRight(line, "\r\n")
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
