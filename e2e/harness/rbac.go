package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// What deploy/ gives svcproxy on a cluster: its manifests as kustomize
// renders them, applied with server-side apply, and its ServiceAccount's
// credentials.

// RenderKustomization renders the kustomization in dir as `kubectl
// kustomize` does; with components (directories below dir), it renders an
// overlay of dir that lists them, as a user's overlay would.
func RenderKustomization(dir string, components ...string) ([]*unstructured.Unstructured, error) {
	if len(components) == 0 {
		return render(filesys.MakeFsOnDisk(), dir)
	}
	k := "resources:\n- ../svcproxy/deploy\ncomponents:\n"
	for _, c := range components {
		k += "- ../svcproxy/deploy/" + filepath.ToSlash(c) + "\n"
	}
	return RenderOverlay(dir, map[string]string{"kustomization.yaml": k})
}

// RenderOverlay renders an overlay made of files (name to content) that
// refers to deploy/ as ../svcproxy/deploy, as docs/migrate.md lays it out:
// deployDir is copied into memory beside it, since kustomize takes bases
// only by relative path.
func RenderOverlay(deployDir string, files map[string]string) ([]*unstructured.Unstructured, error) {
	fsys := filesys.MakeFsInMemory()
	if err := copyIntoFs(fsys, deployDir, "/svcproxy/deploy"); err != nil {
		return nil, err
	}
	for name, content := range files {
		if err := fsys.WriteFile(path.Join("/svcproxy-overlay", name), []byte(content)); err != nil {
			return nil, err
		}
	}
	return render(fsys, "/svcproxy-overlay")
}

func render(fsys filesys.FileSystem, dir string) ([]*unstructured.Unstructured, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize %s: %w", dir, err)
	}
	var out []*unstructured.Unstructured
	for _, r := range m.Resources() {
		obj, err := r.Map()
		if err != nil {
			return nil, fmt.Errorf("kustomize %s: %s: %w", dir, r.CurId(), err)
		}
		out = append(out, &unstructured.Unstructured{Object: obj})
	}
	return out, nil
}

func copyIntoFs(fsys filesys.FileSystem, dir, to string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return fsys.WriteFile(path.Join(to, filepath.ToSlash(rel)), b)
	})
}

// ServerSideApply applies each object with server-side apply as
// fieldManager, with strict field validation (an unknown or duplicated
// field is an error, not a warning), and returns what the API server
// stored. It stops at the first object refused.
func (e *Env) ServerSideApply(ctx context.Context, fieldManager string, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	c, err := e.dynamicClient()
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, obj := range objs {
		ri, err := c.resource(obj)
		if err != nil {
			return out, err
		}
		data, err := json.Marshal(obj.Object)
		if err != nil {
			return out, err
		}
		applied, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{
			FieldManager: fieldManager, FieldValidation: metav1.FieldValidationStrict, Force: ptr.To(false)})
		if err != nil {
			return out, fmt.Errorf("server-side apply of %s: %w", describe(obj), err)
		}
		out = append(out, applied)
	}
	return out, nil
}

// DeleteObjects deletes objs; ones already gone are not an error.
func (e *Env) DeleteObjects(ctx context.Context, objs []*unstructured.Unstructured) error {
	c, err := e.dynamicClient()
	if err != nil {
		return err
	}
	var errs []error
	for _, obj := range objs {
		ri, err := c.resource(obj)
		if err == nil {
			err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", describe(obj), err))
		}
	}
	return errors.Join(errs...)
}

// dynClient reaches any kind of object the API server serves.
type dynClient struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func (e *Env) dynamicClient() (*dynClient, error) {
	dyn, err := dynamic.NewForConfig(e.RestConfig)
	if err != nil {
		return nil, err
	}
	return &dynClient{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(e.Client.Discovery()))}, nil
}

// resource is the client of obj's kind (and namespace).
func (c *dynClient) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", describe(obj), err)
	}
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.dyn.Resource(mapping.Resource), nil
}

func describe(obj *unstructured.Unstructured) string {
	if ns := obj.GetNamespace(); ns != "" {
		return obj.GetKind() + " " + ns + "/" + obj.GetName()
	}
	return obj.GetKind() + " " + obj.GetName()
}

// ServiceAccountCredentials are a ServiceAccount's token, as a kubeconfig
// file (for svcproxy) and as a client (for the test).
type ServiceAccountCredentials struct {
	Kubeconfig string
	Client     kubernetes.Interface
}

// ServiceAccountToken asks the API server for a token of the ServiceAccount
// namespace/name (TokenRequest, as kubelet does for a pod) and writes a
// kubeconfig with it into the work directory.
func (e *Env) ServiceAccountToken(ctx context.Context, namespace, name string) (*ServiceAccountCredentials, error) {
	tr, err := e.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token of ServiceAccount %s/%s: %w", namespace, name, err)
	}
	path := filepath.Join(e.WorkDir, "kubeconfig-"+namespace+"-"+name)
	if err := os.WriteFile(path, []byte(kubeconfig("https://"+APIServerAddr, tr.Status.Token)), 0o600); err != nil {
		return nil, err
	}
	cfg := rest.CopyConfig(e.RestConfig)
	cfg.BearerToken = tr.Status.Token
	cfg.UserAgent = "svcproxy-e2e-" + name
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &ServiceAccountCredentials{Kubeconfig: path, Client: client}, nil
}

// CanI asks the API server whether client may do what attrs say
// (SelfSubjectAccessReview); reason is the authorizer's.
func CanI(ctx context.Context, client kubernetes.Interface, attrs authorizationv1.ResourceAttributes) (allowed bool, reason string, err error) {
	r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
		&authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}, metav1.CreateOptions{})
	if err != nil {
		return false, "", err
	}
	return r.Status.Allowed, r.Status.Reason, nil
}
