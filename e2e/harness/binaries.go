package harness

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ModulePath is the main module, found by walking up from the working
// directory.
const ModulePath = "github.com/svcproxy/svcproxy"

// Binaries are the programs a run uses.
type Binaries struct {
	APIServer string // cached, built from e2e/tools
	Etcd      string // cached, built from e2e/tools
	Svcproxy  string // built into the run's temp dir
	Echo      string // built into the run's temp dir
}

// ModuleRoot returns the directory of the svcproxy main module's go.mod,
// searching upwards from the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			line, _ := bufio.NewReader(f).ReadString('\n')
			f.Close()
			if strings.TrimSpace(line) == "module "+ModulePath {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", ModulePath)
		}
		dir = parent
	}
}

// ToolsHash identifies a build of e2e/tools: its go.mod, go.sum, every .go
// file, and the Go toolchain version.
func ToolsHash(ctx context.Context, toolsDir string) (string, error) {
	h := sha256.New()
	var files []string
	err := filepath.WalkDir(toolsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != toolsDir && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if rel, _ := filepath.Rel(toolsDir, path); rel == "go.mod" || rel == "go.sum" || strings.HasSuffix(rel, ".go") {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(toolsDir, rel))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", rel, len(b))
		h.Write(b)
	}
	ver, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	fmt.Fprintf(h, "go %s", strings.TrimSpace(string(ver)))
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// CacheBase is where the cached kube-apiserver and etcd live, one
// directory per ToolsHash: $SVCPROXY_E2E_CACHE, else
// $XDG_CACHE_HOME/svcproxy-e2e, else ~/.cache/svcproxy-e2e.
func CacheBase() string {
	if d := os.Getenv("SVCPROXY_E2E_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "svcproxy-e2e")
	}
	return filepath.Join(os.TempDir(), "svcproxy-e2e-cache")
}

// BuildTools returns kube-apiserver and etcd for the module at root,
// building them into the cache when this version of e2e/tools has not been
// built before. A lock file keeps concurrent runs from building twice.
func BuildTools(ctx context.Context, root string, logf func(string, ...any)) (apiserver, etcd string, err error) {
	toolsDir := filepath.Join(root, "e2e", "tools")
	hash, err := ToolsHash(ctx, toolsDir)
	if err != nil {
		return "", "", fmt.Errorf("hashing e2e/tools: %w", err)
	}
	dir := filepath.Join(CacheBase(), hash)
	apiserver, etcd = filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "etcd")
	if executable(apiserver) && executable(etcd) {
		return apiserver, etcd, nil
	}
	if err := os.MkdirAll(CacheBase(), 0o755); err != nil {
		return "", "", err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", "", err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", "", fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if executable(apiserver) && executable(etcd) { // another run built them meanwhile
		return apiserver, etcd, nil
	}

	tmp, err := os.MkdirTemp(CacheBase(), hash+".tmp-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	logf("building kube-apiserver and etcd from e2e/tools into %s (once per version of e2e/tools; a cold build takes about 8-10 minutes on 2 cores)", dir)
	start := time.Now()
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				logf("  still building kube-apiserver and etcd (%v so far)", time.Since(start).Round(time.Second))
			}
		}
	}()
	err = goBuild(ctx, toolsDir, tmp, "./kube-apiserver", "./etcd")
	close(stop)
	if err != nil {
		return "", "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", "", err
	}
	logf("built kube-apiserver and etcd in %v", time.Since(start).Round(time.Second))
	return apiserver, etcd, nil
}

// goBuild runs `go build -o out pkgs...` in dir, outside any go.work.
func goBuild(ctx context.Context, dir, out string, pkgs ...string) error {
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", out}, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s (in %s): %w\n%s", strings.Join(pkgs, " "), dir, err, tail(string(b), 40))
	}
	return nil
}

func executable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
