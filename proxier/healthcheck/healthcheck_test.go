package healthcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

func freePort(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return int32(ln.Addr().(*net.TCPAddr).Port)
}

func get(t *testing.T, port int32) (int, Body) {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b Body
	if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if w := resp.Header.Get("X-Load-Balancing-Endpoint-Weight"); w != fmt.Sprint(b.LocalEndpoints) {
		t.Errorf("X-Load-Balancing-Endpoint-Weight = %q, want %d", w, b.LocalEndpoints)
	}
	return resp.StatusCode, b
}

// TestBodyText: the body is byte for byte what kube-proxy sends.
func TestBodyText(t *testing.T) {
	s := NewServers(proxier.IPv4, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil)
	defer s.Close()
	port := freePort(t)
	if err := s.Sync(map[int32]Service{port: {Namespace: "ns", Name: "lb", LocalEndpoints: 2}}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if string(got) != want {
		t.Errorf("body\n%s\nwant\n%s", got, want)
	}
}

func TestServers(t *testing.T) {
	healthy := true
	s := NewServers(proxier.IPv4, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, func() bool { return healthy })
	defer s.Close()
	port := freePort(t)

	if err := s.Sync(map[int32]Service{port: {Namespace: "ns", Name: "lb", LocalEndpoints: 2}}); err != nil {
		t.Fatal(err)
	}
	code, b := get(t, port)
	if code != 200 || b.LocalEndpoints != 2 || b.Service.Name != "lb" || b.Service.Namespace != "ns" || !b.ServiceProxyHealthy {
		t.Errorf("got %d %+v, want 200 with 2 local endpoints", code, b)
	}

	s.Sync(map[int32]Service{port: {Namespace: "ns", Name: "lb", LocalEndpoints: 0}})
	if code, b := get(t, port); code != 503 || b.LocalEndpoints != 0 {
		t.Errorf("no local endpoints: got %d %+v, want 503", code, b)
	}

	s.Sync(map[int32]Service{port: {Namespace: "ns", Name: "lb", LocalEndpoints: 1}})
	healthy = false
	if code, b := get(t, port); code != 503 || b.ServiceProxyHealthy {
		t.Errorf("proxy unhealthy: got %d %+v, want 503", code, b)
	}
	healthy = true

	// Removing the port closes the server.
	s.Sync(nil)
	if _, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
		t.Errorf("server still answering after its port was removed")
	}
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := int32(ln.Addr().(*net.TCPAddr).Port)
	free := freePort(t)
	s := NewServers(proxier.IPv4, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil)
	defer s.Close()
	want := map[int32]Service{busy: {Namespace: "ns", Name: "a", LocalEndpoints: 1}, free: {Name: "b", LocalEndpoints: 1}}
	err = s.Sync(want)
	if err == nil {
		t.Fatalf("want an error for the busy port")
	}
	if code, _ := get(t, free); code != 200 {
		t.Errorf("the other service's server: %d, want 200", code)
	}
	// The error names the port and its Service, for the Event.
	les := ListenErrors(err)
	if len(les) != 1 || les[0].Port != busy || les[0].Service != want[busy] || les[0].Err == nil {
		t.Fatalf("ListenErrors(%v) = %+v, want one for port %d of ns/a", err, les, busy)
	}
	if msg := fmt.Sprintf("health check for ns/a on port %d: ", busy); !strings.HasPrefix(err.Error(), msg) {
		t.Errorf("error %q, want it to start %q", err, msg)
	}
	// Once the port is free, the next Sync opens it.
	ln.Close()
	if err := s.Sync(want); err != nil {
		t.Fatalf("after the port was freed: %v", err)
	}
	if code, _ := get(t, busy); code != 200 {
		t.Errorf("the freed port: %d, want 200", code)
	}
}

func TestListenErrors(t *testing.T) {
	a := &ListenError{Port: 1, Err: errors.New("a")}
	b := &ListenError{Port: 2, Err: errors.New("b")}
	for _, tc := range []struct {
		name string
		err  error
		want []*ListenError
	}{
		{"nil", nil, nil},
		{"other", errors.New("x"), nil},
		{"one", a, []*ListenError{a}},
		{"joined", errors.Join(a, errors.New("x"), b), []*ListenError{a, b}},
		{"nested", errors.Join(errors.Join(a), b), []*ListenError{a, b}},
	} {
		if got := ListenErrors(tc.err); !slices.Equal(got, tc.want) {
			t.Errorf("%s: ListenErrors = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFromPlan(t *testing.T) {
	ep := func(ip string, local, ready bool) proxier.Endpoint {
		return proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 80, IsLocal: local, Ready: ready}
	}
	eps := []proxier.Endpoint{ep("10.0.0.1", true, true), ep("10.0.0.2", true, false), ep("10.0.0.3", false, true)}
	a := &proxier.Service{Name: proxier.ServicePortName{Namespace: "ns", Name: "lb", Port: "http"}, HealthCheckNodePort: 31000, Endpoints: eps}
	b := &proxier.Service{Name: proxier.ServicePortName{Namespace: "ns", Name: "lb", Port: "https"}, HealthCheckNodePort: 31000, Endpoints: eps}
	c := &proxier.Service{Name: proxier.ServicePortName{Namespace: "ns", Name: "plain"}}
	got := FromPlan(proxier.MakePlan(proxier.Config{}, &proxier.State{Services: []*proxier.Service{a, b, c}}))
	if len(got) != 1 || got[31000].LocalEndpoints != 1 || got[31000].Name != "lb" {
		t.Errorf("FromPlan = %+v, want port 31000 with 1 distinct local ready endpoint", got)
	}
}
