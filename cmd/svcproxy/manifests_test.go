package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestReadManifests: what a directory's files give, document by document:
// Lists unwrapped (nested too), other kinds, empty documents, other files
// and subdirectories skipped, namespaces and the API server's defaults
// filled in; errors name the file, document and object.
func TestReadManifests(t *testing.T) {
	svc := "apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n"
	for _, tc := range []struct {
		name    string
		files   map[string]string
		want    []string // objectName of each object, in order
		wantErr []string // in the error, in this order
	}{
		{name: "kinds and files", files: map[string]string{
			"a.yaml":     strings.ReplaceAll(svc, "%s", "a") + "---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
			"b.yml":      "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n",
			"c.json":     `{"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "k"}, "spec": {"cidrs": ["10.96.0.0/16"]}}` + "\n" + `{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}`,
			"notes.txt":  "not read",
			"sub/x.yaml": "not: [read",
		}, want: []string{"Service default/a", "Node node1", "ServiceCIDR k"}},
		{name: "nested lists", files: map[string]string{
			"l.yaml": "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ServiceList\n  items:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: s, namespace: x}\n    spec: {clusterIP: 10.96.0.2}\n",
		}, want: []string{"Service x/s"}},
		{name: "no kind", files: map[string]string{"a.yaml": "---\n" + strings.ReplaceAll(svc, "%s", "a") + "---\n\n---\n# b\nmetadata: {name: b}\n"},
			wantErr: []string{"a.yaml", "document 3 (line 9)", "no kind"}},
		{name: "no name", files: map[string]string{"a.yaml": "apiVersion: v1\nkind: Service\nspec: {}\n"},
			wantErr: []string{"a.yaml", "document 1", "Service: no metadata.name"}},
		{name: "wrong type", files: map[string]string{"a.yaml": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nports: [{port: eighty}]\n"},
			wantErr: []string{"a.yaml", "document 1", "EndpointSlice e"}},
		{name: "bad cluster IP", files: map[string]string{"a.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.300}\n"},
			wantErr: []string{"a.yaml", "document 1", "Service default/s", "spec.clusterIPs[0]"}},
		{name: "bad protocol", files: map[string]string{"a.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: ICMP}]}\n"},
			wantErr: []string{"Service default/s", `spec.ports[0].protocol: unknown protocol "ICMP"`}},
		{name: "IPv6 address in an IPv4 slice", files: map[string]string{"a.yaml": "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]\n"},
			wantErr: []string{"EndpointSlice default/e", "endpoints[0].addresses[0]: fd00::1 is not an IPv4 address"}},
		{name: "duplicate in one file", files: map[string]string{"a.yaml": strings.ReplaceAll(svc, "%s", "a") + "---\n" + strings.ReplaceAll(svc, "%s", "a")},
			wantErr: []string{"a.yaml", "Service default/a is also in", "a.yaml"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, text := range tc.files {
				p := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			objs, err := readManifests(dir)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error; objects %v", names(objs))
				}
				if w, ok := missingInOrder(err.Error(), tc.wantErr); ok {
					t.Fatalf("error %q lacks %q (in order)", err, w)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := names(objs); strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("objects %q, want %q", got, tc.want)
			}
		})
	}
}

func names(objs []runtime.Object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, objectName(o))
	}
	return out
}

// TestManifestDefaults: a minimal Service and EndpointSlice get the
// fields the API server would default and the proxy reads.
func TestManifestDefaults(t *testing.T) {
	objs, err := decodeManifests([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIPs: [10.96.0.1], ports: [{port: 80}]}\n---\n" +
		"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv4\nports: [{port: 80}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	svc := objs[0].(*corev1.Service)
	if svc.Spec.ClusterIP != "10.96.0.1" || svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Ports[0].Protocol != corev1.ProtocolTCP || svc.Namespace != "default" {
		t.Errorf("Service not defaulted: %+v", svc)
	}
	es := objs[1].(*discoveryv1.EndpointSlice)
	if p := es.Ports[0]; p.Name == nil || *p.Name != "" || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
		t.Errorf("EndpointSlice port not defaulted: %+v", p)
	}
}

// TestManifestsDualStack: IPv6 is proxied when a Service has an IPv6
// family or ClusterIP, or a ServiceCIDR an IPv6 range.
func TestManifestsDualStack(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       bool
	}{
		{"IPv4 only", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: 10.96.0.1}\n", false},
		{"IPv6 ClusterIP", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: \"fd00::1\"}\n", true},
		{"IPv6 family", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {clusterIP: None, ipFamilies: [IPv4, IPv6]}\n", true},
		{"IPv6 ServiceCIDR", "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: k}\nspec: {cidrs: [10.96.0.0/16, \"fd00::/112\"]}\n", true},
		{"IPv6 EndpointSlice alone", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}\naddressType: IPv6\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "m.yaml"), []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			client, err := clientFor(&options{manifests: dir})
			if err != nil {
				t.Fatal(err)
			}
			got, err := manifestsDualStack(context.Background(), client)
			if err != nil || got != tc.want {
				t.Errorf("manifestsDualStack = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
