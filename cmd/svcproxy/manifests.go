package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
)

// This file reads a cluster from files, for --manifests: the Services,
// EndpointSlices, Nodes and ServiceCIDRs of a directory's YAML and JSON
// files (several documents a file, List objects too) become an in-memory
// API that the proxy reads as it reads a real one, through the same
// informers. Other kinds are skipped.

// manifestScheme decodes the kinds the proxy reads.
var manifestScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// manifestDecoder decodes the kinds of manifestScheme, strictly (an
// unknown or duplicate field is an error).
var manifestDecoder = serializer.NewCodecFactory(manifestScheme, serializer.EnableStrict).UniversalDeserializer()

// manifestKinds are the kinds read; the proxy ignores all others.
var manifestKinds = []string{"Service", "EndpointSlice", "Node", "ServiceCIDR"}

// clientFor is the API the proxy reads: o.manifests' objects when given,
// else the API server of the connection flags.
func clientFor(o *options) (kubernetes.Interface, error) {
	if o.manifests == "" {
		return newClient(o)
	}
	objs, err := readManifests(o.manifests)
	if err != nil {
		return nil, err
	}
	return fake.NewClientset(objs...), nil
}

// manifestsDualStack reports whether the objects of client (from
// --manifests) call for IPv6: a Service with an IPv6 ClusterIP or family,
// or an IPv6 ServiceCIDR. Then the files alone make the dry run dual-stack,
// with no --cluster-cidr or --service-cluster-ip-range needed.
func manifestsDualStack(ctx context.Context, client kubernetes.Interface) (bool, error) {
	svcs, err := client.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for _, svc := range svcs.Items {
		if slices.Contains(svc.Spec.IPFamilies, corev1.IPv6Protocol) ||
			slices.ContainsFunc(svc.Spec.ClusterIPs, func(ip string) bool { a, err := netip.ParseAddr(ip); return err == nil && a.Is6() }) {
			return true, nil
		}
	}
	cidrs, err := client.NetworkingV1().ServiceCIDRs().List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for _, sc := range cidrs.Items {
		if slices.ContainsFunc(sc.Spec.CIDRs, func(c string) bool { p, err := netip.ParsePrefix(c); return err == nil && p.Addr().Is6() }) {
			return true, nil
		}
	}
	return false, nil
}

// readManifests decodes every *.yaml, *.yml and *.json file of dir, in
// name order. An error names the file, and the document and object when it
// is about one.
func readManifests(dir string) ([]runtime.Object, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("--manifests: %w", err)
	}
	var objs []runtime.Object
	seen := map[string]string{} // kind/namespace/name -> file
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".yaml", ".yml", ".json":
		default:
			continue
		}
		if e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--manifests: %w", err)
		}
		got, err := decodeManifests(data)
		if err != nil {
			return nil, fmt.Errorf("--manifests: %s: %w", path, err)
		}
		for _, obj := range got {
			id := objectName(obj)
			if prev, ok := seen[id]; ok {
				return nil, fmt.Errorf("--manifests: %s: %s is also in %s", path, id, prev)
			}
			seen[id] = path
			objs = append(objs, obj)
		}
	}
	return objs, nil
}

// decodeManifests decodes one file's documents, unwrapping Lists.
func decodeManifests(data []byte) ([]runtime.Object, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	starts := yamlDocStarts(data)
	where := func(doc int) string {
		if doc <= len(starts) {
			return fmt.Sprintf("document %d (line %d)", doc, starts[doc-1])
		}
		return fmt.Sprintf("document %d", doc)
	}
	var out []runtime.Object
	for doc := 1; ; doc++ {
		var raw runtime.RawExtension
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			if doc <= len(starts) {
				err = fileLines(err, starts[doc-1])
			}
			return nil, fmt.Errorf("%s: %w", where(doc), err)
		}
		raw.Raw = bytes.TrimSpace(raw.Raw)
		if len(raw.Raw) == 0 || string(raw.Raw) == "null" {
			continue
		}
		objs, err := decodeObject(raw.Raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where(doc), err)
		}
		out = append(out, objs...)
	}
}

var yamlLineRe = regexp.MustCompile(`\byaml: line (\d+):`)

// fileLines rewrites the YAML parser's line numbers in err, which count
// from its document's first line, start, into the file's.
func fileLines(err error, start int) error {
	msg := yamlLineRe.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, _ := strconv.Atoi(yamlLineRe.FindStringSubmatch(m)[1])
		return fmt.Sprintf("yaml: line %d:", n+start-1)
	})
	return errors.New(msg)
}

// yamlDocStarts is the line of the file each YAML document starts on, as
// the decoder splits them (at lines starting "---", an empty document
// not counted), so that an error can say where its document is: YAML's
// own line numbers count from the document's start. It is nil for JSON.
func yamlDocStarts(data []byte) []int {
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return nil
	}
	var starts []int
	open := false
	for i, line := range bytes.SplitAfter(data, []byte("\n")) {
		switch {
		case bytes.HasPrefix(line, []byte("---")):
			open = false
		case len(line) == 0:
		case !open:
			starts = append(starts, i+1)
			open = true
		}
	}
	return starts
}

// decodeObject decodes one document: a kind the proxy reads, a List of
// them, or nothing for any other kind.
func decodeObject(raw []byte) ([]runtime.Object, error) {
	var meta struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta      `json:"metadata"`
		Items           []runtime.RawExtension `json:"items"`
	}
	if err := utilyaml.Unmarshal(raw, &meta); err != nil {
		return nil, err
	}
	name := meta.Kind
	if meta.Metadata.Name != "" {
		name += " " + qualified(meta.Metadata.Namespace, meta.Metadata.Name)
	}
	switch {
	case meta.Kind == "":
		return nil, errors.New("no kind")
	case strings.HasSuffix(meta.Kind, "List"):
		var out []runtime.Object
		for i, item := range meta.Items {
			objs, err := decodeObject(item.Raw)
			if err != nil {
				return nil, fmt.Errorf("%s item %d: %w", meta.Kind, i+1, err)
			}
			out = append(out, objs...)
		}
		return out, nil
	case !slices.Contains(manifestKinds, meta.Kind):
		return nil, nil
	case meta.Metadata.Name == "":
		return nil, fmt.Errorf("%s: no metadata.name", name)
	}
	obj, _, err := manifestDecoder.Decode(raw, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if o, ok := obj.(metav1.Object); ok && o.GetNamespace() == "" && meta.Kind != "Node" && meta.Kind != "ServiceCIDR" {
		o.SetNamespace(metav1.NamespaceDefault)
	}
	setDefaults(obj)
	if err := validate(obj); err != nil {
		return nil, fmt.Errorf("%s: %w", objectName(obj), err)
	}
	return []runtime.Object{obj}, nil
}

func qualified(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

// objectName is kind namespace/name, for messages.
func objectName(obj runtime.Object) string {
	m, _ := obj.(metav1.Object)
	kind := fmt.Sprintf("%T", obj)
	if i := strings.LastIndex(kind, "."); i >= 0 {
		kind = kind[i+1:]
	}
	return kind + " " + qualified(m.GetNamespace(), m.GetName())
}

// setDefaults fills in what the API server's defaulting would for the
// fields the proxy reads, so a hand-written file means what it would mean
// once applied: a Service's clusterIPs from its clusterIP, TCP for ports
// without a protocol, "" for unnamed EndpointSlice ports.
func setDefaults(obj runtime.Object) {
	tcp := corev1.ProtocolTCP
	switch o := obj.(type) {
	case *corev1.Service:
		s := &o.Spec
		if len(s.ClusterIPs) == 0 && s.ClusterIP != "" {
			s.ClusterIPs = []string{s.ClusterIP}
		}
		if s.ClusterIP == "" && len(s.ClusterIPs) > 0 {
			s.ClusterIP = s.ClusterIPs[0]
		}
		if s.Type == "" {
			s.Type = corev1.ServiceTypeClusterIP
		}
		for i := range s.Ports {
			if s.Ports[i].Protocol == "" {
				s.Ports[i].Protocol = tcp
			}
		}
	case *discoveryv1.EndpointSlice:
		for i := range o.Ports {
			p := &o.Ports[i]
			if p.Name == nil {
				p.Name = new(string)
			}
			if p.Protocol == nil {
				p.Protocol = &tcp
			}
		}
	}
}

// validate checks the values the API server would refuse and the proxy
// would otherwise skip with only a log line: from files there is no API
// server, and a silently missing rule is worse than an error.
func validate(obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Service:
		return validateService(o)
	case *discoveryv1.EndpointSlice:
		return validateSlice(o)
	case *networkingv1.ServiceCIDR:
		for i, c := range o.Spec.CIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				return fmt.Errorf("spec.cidrs[%d]: %w", i, err)
			}
		}
	case *corev1.Node:
		for i, a := range o.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if _, err := netip.ParseAddr(a.Address); err != nil {
				return fmt.Errorf("status.addresses[%d]: %w", i, err)
			}
		}
		for i, c := range o.Spec.PodCIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				return fmt.Errorf("spec.podCIDRs[%d]: %w", i, err)
			}
		}
	}
	return nil
}

var protocols = []string{"TCP", "UDP", "SCTP"}

func validateService(svc *corev1.Service) error {
	s := svc.Spec
	for i, ip := range s.ClusterIPs {
		if ip == corev1.ClusterIPNone && i == 0 {
			continue
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("spec.clusterIPs[%d]: %w", i, err)
		}
	}
	if len(s.ClusterIPs) > 0 && s.ClusterIP != s.ClusterIPs[0] {
		return fmt.Errorf("spec.clusterIP %q is not spec.clusterIPs[0] %q", s.ClusterIP, s.ClusterIPs[0])
	}
	switch s.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName:
	default:
		return fmt.Errorf("spec.type: unknown type %q", s.Type)
	}
	for i, p := range s.Ports {
		switch {
		case !slices.Contains(protocols, string(p.Protocol)):
			return fmt.Errorf("spec.ports[%d].protocol: unknown protocol %q", i, p.Protocol)
		case p.Port < 1 || p.Port > 65535:
			return fmt.Errorf("spec.ports[%d].port: %d is not in 1-65535", i, p.Port)
		case p.NodePort < 0 || p.NodePort > 65535:
			return fmt.Errorf("spec.ports[%d].nodePort: %d is not in 0-65535", i, p.NodePort)
		}
	}
	for i, ip := range s.ExternalIPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("spec.externalIPs[%d]: %w", i, err)
		}
	}
	for i, r := range s.LoadBalancerSourceRanges {
		if _, err := netip.ParsePrefix(strings.TrimSpace(r)); err != nil {
			return fmt.Errorf("spec.loadBalancerSourceRanges[%d]: %w", i, err)
		}
	}
	for i, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP == "" {
			continue
		}
		if _, err := netip.ParseAddr(in.IP); err != nil {
			return fmt.Errorf("status.loadBalancer.ingress[%d].ip: %w", i, err)
		}
	}
	return nil
}

func validateSlice(es *discoveryv1.EndpointSlice) error {
	var want func(netip.Addr) bool
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		want = netip.Addr.Is4
	case discoveryv1.AddressTypeIPv6:
		want = netip.Addr.Is6
	case discoveryv1.AddressTypeFQDN:
	default:
		return fmt.Errorf("addressType: unknown type %q", es.AddressType)
	}
	for i, p := range es.Ports {
		switch {
		case !slices.Contains(protocols, string(*p.Protocol)):
			return fmt.Errorf("ports[%d].protocol: unknown protocol %q", i, *p.Protocol)
		case p.Port == nil:
			return fmt.Errorf("ports[%d].port: missing", i)
		case *p.Port < 1 || *p.Port > 65535:
			return fmt.Errorf("ports[%d].port: %d is not in 1-65535", i, *p.Port)
		}
	}
	if want == nil {
		return nil
	}
	for i, ep := range es.Endpoints {
		for j, a := range ep.Addresses {
			ip, err := netip.ParseAddr(a)
			if err == nil && !want(ip) {
				err = fmt.Errorf("%s is not an %s address", a, es.AddressType)
			}
			if err != nil {
				return fmt.Errorf("endpoints[%d].addresses[%d]: %w", i, j, err)
			}
		}
	}
	return nil
}
