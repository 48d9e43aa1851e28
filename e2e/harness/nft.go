package harness

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NFTList runs `nft list <what...>` in the node namespace.
func (e *Env) NFTList(ctx context.Context, what ...string) (string, error) {
	return e.Node.Run(ctx, append([]string{"nft", "list"}, what...)...)
}

// nftElemRe matches one element of svcproxy's endpoints-ip-<proto> maps as
// nft lists it: "<vip> . <port> . <index> : <ip> . <port>".
var nftElemRe = regexp.MustCompile(`([0-9a-f:.]+) \. (\d+) \. \d+ : ([0-9a-f:.]+) \. (\d+)`)

// nftServiceDNATs returns the sorted endpoints ("IP:port") the nftables
// table sends the Service port ns/name:port (port "" for an unnamed one)
// to, read from svcproxy's endpoints map.
func (e *Env) nftServiceDNATs(ctx context.Context, namespace, name, port string) ([]string, string, error) {
	svc, err := e.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, "", err
	}
	var proto, number string
	for _, p := range svc.Spec.Ports {
		if p.Name == port {
			proto, number = strings.ToLower(string(p.Protocol)), fmt.Sprint(p.Port)
		}
	}
	if proto == "" {
		return nil, "", fmt.Errorf("service %s/%s has no port %q", namespace, name, port)
	}
	family := "ip"
	if strings.Contains(svc.Spec.ClusterIP, ":") {
		family = "ip6"
	}
	out, err := e.NFTList(ctx, "map", family, "svcproxy", "endpoints-ip-"+proto)
	if err != nil {
		return nil, out, err
	}
	dests := NFTServiceDNATs(out, svc.Spec.ClusterIP, number)
	return dests, out, nil
}

// NFTServiceDNATs returns the sorted endpoints ("IP:port") that the
// elements of an endpoints-ip-<proto> map in text (nft list or nft -f
// syntax) give the ClusterIP and port.
func NFTServiceDNATs(text, clusterIP, port string) []string {
	var dests []string
	for _, m := range nftElemRe.FindAllStringSubmatch(text, -1) {
		if m[1] == clusterIP && m[2] == port {
			dests = append(dests, net.JoinHostPort(m[3], m[4]))
		}
	}
	sort.Strings(dests)
	return dests
}

// waitForNFTServiceDNATs is WaitForServiceDNATs in nftables mode.
func (e *Env) waitForNFTServiceDNATs(ctx context.Context, timeout time.Duration, namespace, name, port, want string) (string, error) {
	var last string
	err := e.poll(ctx, timeout, nil, "nftables endpoints map", func() (bool, error) {
		dests, out, err := e.nftServiceDNATs(ctx, namespace, name, port)
		last = out
		if err != nil {
			return false, nil // the table may not exist yet
		}
		return strings.Join(dests, ",") == want, nil
	})
	if err != nil {
		return last, fmt.Errorf("%w; last endpoints map:\n%s", err, last)
	}
	return last, nil
}
