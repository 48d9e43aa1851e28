package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
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
	var out []runtime.Object
	for doc := 1; ; doc++ {
		var raw runtime.RawExtension
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		raw.Raw = bytes.TrimSpace(raw.Raw)
		if len(raw.Raw) == 0 || string(raw.Raw) == "null" {
			continue
		}
		objs, err := decodeObject(raw.Raw)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", doc, err)
		}
		out = append(out, objs...)
	}
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
	case meta.APIVersion == "v1" && meta.Kind == "List" || strings.HasSuffix(meta.Kind, "List"):
		var out []runtime.Object
		for i, item := range meta.Items {
			objs, err := decodeObject(item.Raw)
			if err != nil {
				return nil, fmt.Errorf("%s item %d: %w", meta.Kind, i, err)
			}
			out = append(out, objs...)
		}
		return out, nil
	case !slices.Contains(manifestKinds, meta.Kind):
		return nil, nil
	case meta.Metadata.Name == "":
		return nil, fmt.Errorf("%s: no metadata.name", name)
	}
	codecs := serializer.NewCodecFactory(manifestScheme, serializer.EnableStrict)
	obj, _, err := codecs.UniversalDeserializer().Decode(raw, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if o, ok := obj.(metav1.Object); ok && o.GetNamespace() == "" && meta.Kind != "Node" && meta.Kind != "ServiceCIDR" {
		o.SetNamespace(metav1.NamespaceDefault)
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
