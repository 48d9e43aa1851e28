package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// deploy/: its manifests, as kustomize renders them, accepted by the real
// API server and shaped as least privilege asks; and the image's build.

// deployFieldManager owns what the tests apply from deploy/.
const deployFieldManager = "svcproxy-e2e-deploy"

// deployRenders are the ways deploy/ is meant to be used: the base, and
// the base with each of its components.
var deployRenders = []struct {
	name       string
	components []string
	kinds      []string // what the render holds
}{
	{"base", nil, []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"}},
	{"config-file", []string{"config-file"}, []string{"ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"}},
	{"kubeadm", []string{"kubeadm"}, []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"}},
	{"k3s", []string{"k3s"}, []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"}},
}

// applyDeploy renders deploy/ with components and applies it (see
// applyObjects).
func (c *tc) applyDeploy(components ...string) []*unstructured.Unstructured {
	c.Helper()
	objs, err := harness.RenderKustomization(filepath.Join(env.Root, "deploy"), components...)
	if err != nil {
		c.Fatal(err)
	}
	return c.applyObjects(objs)
}

// applyObjects applies every object with server-side apply and returns
// what the API server stored; the objects are deleted when the test ends.
func (c *tc) applyObjects(objs []*unstructured.Unstructured) []*unstructured.Unstructured {
	c.Helper()
	applied, err := env.ServerSideApply(c.ctx, deployFieldManager, objs)
	c.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.DeleteObjects(ctx, applied); err != nil {
			c.Errorf("delete deploy/'s objects: %v", err)
		}
	})
	if err != nil {
		c.Fatal(err)
	}
	return applied
}

// checkApplied fails the test where the applied DaemonSet strays from
// least privilege (podProblems).
func (c *tc) checkApplied(applied []*unstructured.Unstructured) {
	c.Helper()
	var ds appsv1.DaemonSet
	typed(c, applied, "DaemonSet", &ds)
	var binding rbacv1.ClusterRoleBinding
	typed(c, applied, "ClusterRoleBinding", &binding)
	for _, problem := range podProblems(&ds.Spec.Template.Spec, &binding) {
		c.Error(problem)
	}
}

// typed is the only object of kind in objs, converted to out.
func typed(c *tc, objs []*unstructured.Unstructured, kind string, out any) {
	c.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		c.Fatalf("%d objects of kind %s in deploy/, want 1", len(found), kind)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(found[0].Object, out); err != nil {
		c.Fatalf("%s: %v", kind, err)
	}
}

// TestDeployManifests: every object of deploy/, in each of its renders, is
// accepted by server-side apply with strict field validation, and the
// DaemonSet is least privilege: the proxy container runs as root with
// exactly NET_ADMIN and NET_RAW, no privilege escalation and a read-only
// root filesystem; only the init container is privileged, and it runs
// `--init-only` with the proxy's own image, arguments and environment.
func TestDeployManifests(t *testing.T) {
	beginWithoutSvcproxy(t)
	for _, r := range deployRenders {
		t.Run(r.name, func(t *testing.T) {
			c := beginWithoutSvcproxy(t)
			applied := c.applyDeploy(r.components...)
			var kinds []string
			for _, o := range applied {
				kinds = append(kinds, o.GetKind())
			}
			sort.Strings(kinds)
			if !slices.Equal(kinds, r.kinds) {
				t.Errorf("applied %v, want %v", kinds, r.kinds)
			}
			c.checkApplied(applied)
			t.Logf("RESULT %s: server-side apply (strict validation) accepted %s", r.name, strings.Join(kinds, ", "))
		})
	}
}

// TestDeployMigrateExamples: every overlay docs/migrate.md shows renders,
// is accepted as TestDeployManifests requires, and keeps deploy/'s least
// privilege. An overlay is a YAML block whose first line is
// "# svcproxy-overlay/kustomization.yaml", with the blocks after it that
// name other files of svcproxy-overlay/.
func TestDeployMigrateExamples(t *testing.T) {
	beginWithoutSvcproxy(t)
	doc, err := os.ReadFile(filepath.Join(env.Root, "docs", "migrate.md"))
	if err != nil {
		t.Fatal(err)
	}
	overlays := docOverlays(string(doc))
	if len(overlays) < 3 {
		t.Fatalf("docs/migrate.md shows %d overlays, want one each for kubeadm, k3s and other clusters", len(overlays))
	}
	for _, o := range overlays {
		t.Run(o.section, func(t *testing.T) {
			c := beginWithoutSvcproxy(t)
			objs, err := harness.RenderOverlay(filepath.Join(env.Root, "deploy"), o.files)
			if err != nil {
				t.Fatal(err)
			}
			c.checkApplied(c.applyObjects(objs))
			t.Logf("RESULT overlay of %q (%d files) accepted", o.section, len(o.files))
		})
	}
}

// docOverlay is one overlay of a document: its files, and the heading of
// the section that shows it.
type docOverlay struct {
	section string
	files   map[string]string
}

// docOverlays finds the overlays in a Markdown document (see
// TestDeployMigrateExamples); indented code blocks (in list items) are
// dedented by their fence's indentation.
func docOverlays(doc string) []docOverlay {
	var out []docOverlay
	section, indent := "", -1
	var block []string
	for _, line := range strings.Split(doc, "\n") {
		trimmed := strings.TrimLeft(line, " ")
		switch {
		case indent < 0 && strings.HasPrefix(line, "## "):
			section = strings.TrimPrefix(line, "## ")
		case indent < 0 && trimmed == "```yaml":
			indent, block = len(line)-len(trimmed), nil
		case indent >= 0 && trimmed == "```":
			name, ok := "", false
			if len(block) > 0 {
				name, ok = strings.CutPrefix(block[0], "# svcproxy-overlay/")
			}
			switch {
			case ok && name == "kustomization.yaml":
				out = append(out, docOverlay{section: section, files: map[string]string{}})
				fallthrough
			case ok && len(out) > 0:
				out[len(out)-1].files[name] = strings.Join(block, "\n") + "\n"
			}
			indent = -1
		case indent >= 0:
			block = append(block, line[min(indent, len(line)-len(trimmed)):])
		}
	}
	return out
}

// podProblems lists how pod (as the API server stored it) strays from
// least privilege and from what svcproxy needs, bound by binding.
func podProblems(pod *v1.PodSpec, binding *rbacv1.ClusterRoleBinding) []string {
	var bad []string
	conf, err := harness.ContainerConfinement(pod, "svcproxy")
	if err != nil {
		return []string{err.Error()}
	}
	if !slices.Equal(conf.Caps, []string{"NET_ADMIN", "NET_RAW"}) {
		bad = append(bad, "proxy capabilities "+strings.Join(conf.Caps, ",")+", want NET_ADMIN,NET_RAW")
	}
	if !conf.NoNewPrivs || !conf.ReadOnlyRoot {
		bad = append(bad, "proxy container allows privilege escalation or writes its root filesystem")
	}
	if !slices.Contains(conf.Writable, "/run/xtables.lock") {
		bad = append(bad, "proxy container does not mount the host's /run/xtables.lock writable")
	}
	if !pod.HostNetwork || pod.PriorityClassName != "system-node-critical" {
		bad = append(bad, "not hostNetwork with priorityClassName system-node-critical")
	}
	sa := binding.Subjects
	if len(sa) != 1 || sa[0].Kind != "ServiceAccount" || sa[0].Name != pod.ServiceAccountName || sa[0].Namespace != "kube-system" {
		bad = append(bad, "the ClusterRoleBinding does not bind the pod's ServiceAccount "+pod.ServiceAccountName)
	}
	if len(pod.InitContainers) != 1 {
		return append(bad, "want one init container")
	}
	init, main := pod.InitContainers[0], pod.Containers[slices.IndexFunc(pod.Containers, func(c v1.Container) bool { return c.Name == "svcproxy" })]
	switch {
	case init.SecurityContext == nil || init.SecurityContext.Privileged == nil || !*init.SecurityContext.Privileged:
		bad = append(bad, "init container "+init.Name+" is not privileged")
	case !slices.Equal(init.Command, append(slices.Clone(main.Command), "--init-only")):
		bad = append(bad, "init command "+strings.Join(init.Command, " ")+", want the proxy's and --init-only")
	case !slices.Equal(init.Args, main.Args):
		bad = append(bad, "init arguments "+strings.Join(init.Args, " ")+" differ from the proxy's "+strings.Join(main.Args, " "))
	case init.Image != main.Image || !slices.EqualFunc(init.Env, main.Env, func(a, b v1.EnvVar) bool { return a.String() == b.String() }):
		bad = append(bad, "init container's image or environment differ from the proxy's")
	}
	return bad
}

// TestDeployDockerfile: deploy/Dockerfile builds what the binary needs
// (no container engine runs here, so its inputs are checked instead): a
// Go at least go.mod's, every package of cmd/svcproxy in the build
// context (COPY, and deploy/Dockerfile.dockerignore), a static binary,
// and a Debian 12 base with iptables and nftables.
func TestDeployDockerfile(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dockerfile, ignore, gomod := read("deploy/Dockerfile"), read("deploy/Dockerfile.dockerignore"), read("go.mod")

	goDirective := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	goImage := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\d+\.\d+)$`).FindStringSubmatch(dockerfile)
	if goDirective == nil || goImage == nil || goImage[1] != goDirective[1] {
		t.Errorf("the build image's Go (ARG GO_VERSION %v) is not go.mod's (%v)", goImage, goDirective)
	}
	var copied []string
	for _, m := range regexp.MustCompile(`(?m)^COPY (\S+(?: \S+)*) (\S+)$`).FindAllStringSubmatch(dockerfile, -1) {
		if !strings.HasPrefix(m[1], "--from") {
			copied = append(copied, strings.Fields(m[1])...)
		}
	}
	for _, p := range copied {
		if !strings.Contains(ignore, "\n!"+p+"\n") {
			t.Errorf("%s is copied but deploy/Dockerfile.dockerignore leaves it out of the build context", p)
		}
	}
	list := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./cmd/svcproxy")
	list.Dir = root
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // a dependency from the module cache
		}
		if !slices.Contains(copied, strings.Split(filepath.ToSlash(rel), "/")[0]) {
			t.Errorf("package directory %s is not copied into the build", rel)
		}
	}
	for _, want := range []string{"CGO_ENABLED=0 go build", "FROM debian:bookworm", "iptables nftables"} {
		if !strings.Contains(dockerfile, want) {
			t.Errorf("deploy/Dockerfile has no %q", want)
		}
	}
	t.Logf("RESULT deploy/Dockerfile copies %v; cmd/svcproxy's packages are all in them", copied)
}
