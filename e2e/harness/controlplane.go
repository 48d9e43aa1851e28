package harness

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

func (e *Env) startControlPlane(ctx context.Context) error {
	if err := e.startEtcd(ctx); err != nil {
		return err
	}
	return e.startAPIServer(ctx)
}

func (e *Env) startEtcd(ctx context.Context) error {
	dataDir := filepath.Join(e.WorkDir, "etcd")
	peer := "http://127.0.0.1:2380"
	client := "http://" + EtcdAddr
	p, err := e.StartProcess(e.Node, "etcd", e.Bins.Etcd,
		"--name=e2e",
		"--data-dir="+dataDir,
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=e2e="+peer,
		"--unsafe-no-fsync",
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	return e.poll(ctx, 60*time.Second, p, "etcd /health", func() (bool, error) {
		code, body, err := e.NodeHTTPGet(ctx, client+"/health")
		return err == nil && code == 200 && strings.Contains(body, `"health":"true"`), nil
	})
}

func (e *Env) startAPIServer(ctx context.Context) error {
	certDir := filepath.Join(e.WorkDir, "apiserver-certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	saKey := filepath.Join(e.WorkDir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return err
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	e.Token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(e.WorkDir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(e.Token+`,admin,admin-uid,"system:masters"`+"\n"), 0o600); err != nil {
		return err
	}
	e.Kubeconfig = filepath.Join(e.WorkDir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, []byte(kubeconfig("https://"+APIServerAddr, e.Token)), 0o600); err != nil {
		return err
	}

	p, err := e.StartProcess(e.Node, "kube-apiserver", e.Bins.APIServer,
		"--etcd-servers=http://"+EtcdAddr,
		"--bind-address=127.0.0.1",
		"--secure-port=6443",
		// The address the "kubernetes" Service would point at; with no
		// endpoint reconciler it is never used for traffic.
		"--advertise-address="+NodeIP,
		"--endpoint-reconciler-type=none",
		"--cert-dir="+certDir,
		"--token-auth-file="+tokenFile,
		"--authorization-mode=RBAC",
		// As kubeadm, k3s and kops run it: deploy/'s init container is
		// privileged.
		"--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range="+ServiceCIDR+","+ServiceCIDR6,
		"--enable-priority-and-fairness=false",
		// No controller-manager creates service accounts here.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
		"--v=1",
	)
	if err != nil {
		return err
	}

	cfg := &rest.Config{
		Host:            "https://" + APIServerAddr,
		BearerToken:     e.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            e.Node.DialContext,
		QPS:             100,
		Burst:           200,
		Timeout:         30 * time.Second,
		UserAgent:       "svcproxy-e2e",
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	e.RestConfig, e.Client = cfg, client
	var last string
	err = e.poll(ctx, 120*time.Second, p, "kube-apiserver /readyz", func() (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		if err != nil {
			last = fmt.Sprintf("%v %s", err, body)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last answer: %s)", err, last)
	}
	return e.createNode(ctx)
}

// createNode registers this node as a kubelet would, so svcproxy finds its
// Node object (pod CIDR, addresses) at once.
func (e *Env) createNode(ctx context.Context) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{"kubernetes.io/hostname": NodeName}},
		Spec:       v1.NodeSpec{PodCIDR: PodCIDR, PodCIDRs: []string{PodCIDR}},
	}
	created, err := e.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Node %s: %w", NodeName, err)
	}
	created.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: NodeIP}, {Type: v1.NodeHostName, Address: NodeName}}
	created.Status.Conditions = []v1.NodeCondition{{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "E2E", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if _, err := e.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update Node %s status: %w", NodeName, err)
	}
	return nil
}

// poll calls check every 100ms until it returns true, the process p (if
// any) exits, or timeout.
func (e *Env) poll(ctx context.Context, timeout time.Duration, p *Process, what string, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := check()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if p != nil {
			if exited, _ := p.Exited(); exited {
				return fmt.Errorf("waiting for %s: %w", what, p.errExited())
			}
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("waiting for %s: timed out after %v", what, timeout)
			if p != nil {
				msg += fmt.Sprintf("; last log lines of %s:\n%s", p.LogPath, p.Tail(20))
			}
			return fmt.Errorf("%s", msg)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// NodeHTTPGet GETs url (an IP literal URL) from inside the node namespace
// and returns the status code and body.
func (e *Env) NodeHTTPGet(ctx context.Context, url string) (int, string, error) {
	c := &http.Client{
		Transport: &http.Transport{DialContext: e.Node.DialContext, DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return os.WriteFile(path, b, 0o600)
}

func kubeconfig(server, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
`, server, token)
}
