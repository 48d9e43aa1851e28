// Package healthcheck serves the health-check node ports of Services with
// externalTrafficPolicy Local: a load balancer probes every node on the
// Service's healthCheckNodePort and sends traffic only to nodes answering 200,
// i.e. nodes with at least one local ready endpoint.
package healthcheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// Service is what one health-check port reports.
type Service struct {
	Namespace string
	Name      string
	// LocalEndpoints counts the distinct local ready endpoint IPs.
	LocalEndpoints int
}

// FromPlan returns the health-check ports the plan needs, by port.
func FromPlan(p *proxier.Plan) map[int32]Service {
	out := map[int32]Service{}
	ips := map[int32]map[netip.Addr]bool{}
	for _, sp := range p.Services {
		port := sp.Svc.HealthCheckNodePort
		if port == 0 {
			continue
		}
		if _, ok := out[port]; !ok {
			out[port] = Service{Namespace: sp.Svc.Name.Namespace, Name: sp.Svc.Name.Name}
			ips[port] = map[netip.Addr]bool{}
		}
		for _, e := range sp.Svc.Endpoints {
			if e.IsLocal && e.Ready {
				ips[port][e.IP] = true
			}
		}
	}
	for port, s := range out {
		s.LocalEndpoints = len(ips[port])
		out[port] = s
	}
	return out
}

// Body is the JSON a health-check port answers, as kube-proxy's.
type Body struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// Servers runs one HTTP server per health-check port, on the given
// addresses (an unspecified address listens on all of them).
type Servers struct {
	network string // tcp4 or tcp6
	addrs   []netip.Addr
	healthy func() bool
	listen  func(network, addr string) (net.Listener, error)

	mu      sync.Mutex
	servers map[int32]*server
}

type server struct {
	mu   sync.Mutex
	svc  Service
	http []*http.Server
}

// NewServers returns servers for family f listening on addrs; healthy
// reports whether the proxy itself is healthy (a 503 otherwise).
func NewServers(f proxier.IPFamily, addrs []netip.Addr, healthy func() bool) *Servers {
	network := "tcp4"
	if f == proxier.IPv6 {
		network = "tcp6"
	}
	if len(addrs) == 0 {
		if f == proxier.IPv6 {
			addrs = []netip.Addr{netip.IPv6Unspecified()}
		} else {
			addrs = []netip.Addr{netip.IPv4Unspecified()}
		}
	}
	return &Servers{network: network, addrs: addrs, healthy: healthy, listen: net.Listen, servers: map[int32]*server{}}
}

// SetHealthy sets the function reporting whether the proxy itself is healthy.
func (s *Servers) SetHealthy(healthy func() bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.healthy = healthy
}

// ListenError is a health-check port that could not be opened.
type ListenError struct {
	Service Service
	Port    int32
	Err     error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("health check for %s/%s on port %d: %v", e.Service.Namespace, e.Service.Name, e.Port, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }

// ListenErrors are the *ListenError that err (from Sync) joins.
func ListenErrors(err error) []*ListenError {
	var out []*ListenError
	if le, ok := err.(*ListenError); ok {
		return append(out, le)
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, ListenErrors(e)...)
		}
	}
	return out
}

// Sync starts servers for new ports, stops those no longer wanted, and
// updates what every server reports. Each port that cannot be opened is a
// *ListenError in the error (see ListenErrors), and is tried again on the
// next Sync; the others keep working.
func (s *Servers) Sync(want map[int32]Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for port, srv := range s.servers {
		if _, ok := want[port]; !ok {
			srv.close()
			delete(s.servers, port)
			klog.V(2).InfoS("Stopped health-check server", "port", port)
		}
	}
	for _, port := range slices.Sorted(maps.Keys(want)) {
		svc := want[port]
		if srv, ok := s.servers[port]; ok {
			srv.mu.Lock()
			srv.svc = svc
			srv.mu.Unlock()
			continue
		}
		srv := &server{svc: svc}
		if err := s.start(srv, port); err != nil {
			srv.close()
			errs = append(errs, &ListenError{Service: svc, Port: port, Err: err})
			continue
		}
		s.servers[port] = srv
		klog.V(2).InfoS("Started health-check server", "port", port, "service", svc.Namespace+"/"+svc.Name)
	}
	return errors.Join(errs...)
}

func (s *Servers) start(srv *server, port int32) error {
	for _, a := range s.addrs {
		ln, err := s.listen(s.network, net.JoinHostPort(a.String(), strconv.Itoa(int(port))))
		if err != nil {
			return err
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			srv.serve(w, s.proxyHealthy)
		}), ReadHeaderTimeout: 5 * time.Second}
		srv.http = append(srv.http, hs)
		go hs.Serve(ln)
	}
	return nil
}

func (s *Servers) proxyHealthy() bool {
	s.mu.Lock()
	h := s.healthy
	s.mu.Unlock()
	return h == nil || h()
}

// Close stops every server.
func (s *Servers) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, srv := range s.servers {
		srv.close()
		delete(s.servers, port)
	}
}

func (srv *server) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, hs := range srv.http {
		hs.Shutdown(ctx)
	}
}

func (srv *server) serve(w http.ResponseWriter, healthy func() bool) {
	srv.mu.Lock()
	svc := srv.svc
	srv.mu.Unlock()
	var b Body
	b.Service.Namespace, b.Service.Name = svc.Namespace, svc.Name
	b.LocalEndpoints = svc.LocalEndpoints
	b.ServiceProxyHealthy = healthy == nil || healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(b.LocalEndpoints))
	if b.LocalEndpoints > 0 && b.ServiceProxyHealthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	// Tab-indented, without a trailing newline, as kube-proxy writes it.
	out, _ := json.MarshalIndent(b, "", "\t")
	w.Write(out)
}
