package harness

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Port is one Service port.
type Port struct {
	Name       string
	Protocol   v1.Protocol // default TCP
	Port       int32
	TargetPort int32 // default EchoPort
}

// TCP and UDP are Port shorthands: port 80 to the echo servers' 8080.
var (
	TCP = Port{Name: "tcp", Protocol: v1.ProtocolTCP, Port: 80, TargetPort: EchoPort}
	UDP = Port{Name: "udp", Protocol: v1.ProtocolUDP, Port: 80, TargetPort: EchoPort}
)

// EnsureNamespace creates the Kubernetes namespace if it does not exist.
func (e *Env) EnsureNamespace(ctx context.Context, name string) error {
	_, err := e.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// NewService is a ClusterIP Service with the given ports (default TCP):
// no selector, as the tests write its EndpointSlices themselves (there is
// no controller-manager).
func NewService(namespace, name string, ports ...Port) *v1.Service {
	if len(ports) == 0 {
		ports = []Port{TCP}
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP},
	}
	for _, p := range ports {
		proto := p.Protocol
		if proto == "" {
			proto = v1.ProtocolTCP
		}
		target := p.TargetPort
		if target == 0 {
			target = EchoPort
		}
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: p.Name, Protocol: proto, Port: p.Port, TargetPort: intstr.FromInt32(target)})
	}
	return svc
}

// CreateService creates NewService(namespace, name, ports...) (namespace
// created as needed) and returns it with its allocated ClusterIP.
func (e *Env) CreateService(ctx context.Context, namespace, name string, ports ...Port) (*v1.Service, error) {
	if err := e.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	return e.Client.CoreV1().Services(namespace).Create(ctx, NewService(namespace, name, ports...), metav1.CreateOptions{})
}

// DeleteService deletes the Service and the EndpointSlice SetEndpoints
// made for it. Missing objects are not an error.
func (e *Env) DeleteService(ctx context.Context, namespace, name string) error {
	err := e.Client.DiscoveryV1().EndpointSlices(namespace).Delete(ctx, SliceName(name), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	err = e.Client.CoreV1().Services(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// Endpoint is one address of an EndpointSlice.
type Endpoint struct {
	IP          string
	NotReady    bool   // ready=false
	Terminating bool   // terminating=true (serving stays !NotReady)
	NodeName    string // default NodeName
}

// SliceName is the name of the EndpointSlice SetEndpoints writes for a
// Service.
func SliceName(service string) string { return service + "-e2e" }

// SetEndpoints writes the Service's EndpointSlice with ready endpoints at
// ips (none: an empty slice) on this node. See SetEndpointSlice.
func (e *Env) SetEndpoints(ctx context.Context, svc *v1.Service, ips ...string) (*discovery.EndpointSlice, error) {
	eps := make([]Endpoint, len(ips))
	for i, ip := range ips {
		eps[i] = Endpoint{IP: ip}
	}
	return e.SetEndpointSlice(ctx, svc, eps)
}

// SetEndpointSlice creates or replaces the Service's EndpointSlice (named
// SliceName), as the EndpointSlice controller would: label
// kubernetes.io/service-name, one port per Service port (named as it, at
// its target port), and the annotation
// endpoints.kubernetes.io/last-change-trigger-time set to now, from which
// svcproxy measures network programming latency.
func (e *Env) SetEndpointSlice(ctx context.Context, svc *v1.Service, eps []Endpoint) (*discovery.EndpointSlice, error) {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace,
			Name:      SliceName(svc.Name),
			Labels: map[string]string{
				discovery.LabelServiceName: svc.Name,
				discovery.LabelManagedBy:   "svcproxy-e2e",
			},
			Annotations: map[string]string{
				v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano),
			},
		},
		AddressType: discovery.AddressTypeIPv4,
	}
	for _, p := range svc.Spec.Ports {
		es.Ports = append(es.Ports, discovery.EndpointPort{
			Name:     ptr.To(p.Name),
			Protocol: ptr.To(p.Protocol),
			Port:     ptr.To(p.TargetPort.IntVal),
		})
	}
	for _, ep := range eps {
		node := ep.NodeName
		if node == "" {
			node = NodeName
		}
		es.Endpoints = append(es.Endpoints, discovery.Endpoint{
			Addresses: []string{ep.IP},
			Conditions: discovery.EndpointConditions{
				Ready:       ptr.To(!ep.NotReady && !ep.Terminating),
				Serving:     ptr.To(!ep.NotReady),
				Terminating: ptr.To(ep.Terminating),
			},
			NodeName: ptr.To(node),
		})
	}
	return e.ApplyEndpointSlice(ctx, es)
}

// ApplyEndpointSlice creates es, or replaces the slice of its name.
func (e *Env) ApplyEndpointSlice(ctx context.Context, es *discovery.EndpointSlice) (*discovery.EndpointSlice, error) {
	client := e.Client.DiscoveryV1().EndpointSlices(es.Namespace)
	old, err := client.Get(ctx, es.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return client.Create(ctx, es, metav1.CreateOptions{})
	case err != nil:
		return nil, fmt.Errorf("get EndpointSlice %s/%s: %w", es.Namespace, es.Name, err)
	}
	es.ResourceVersion = old.ResourceVersion
	return client.Update(ctx, es, metav1.UpdateOptions{})
}
