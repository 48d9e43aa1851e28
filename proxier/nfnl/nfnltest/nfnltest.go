// Package nfnltest gives kernel tests a throwaway network namespace, so
// what they program never reaches the host's own ruleset, and gives tests
// of element batches (package nfnl's and the nftables backend's) one
// decoder of the messages they send.
package nfnltest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Netns creates a network namespace named prefix and a random suffix, and
// returns its name and an open file descriptor of it. Both are gone when
// the test ends. The test is skipped when it cannot create one (not
// root), and fails when nft is missing.
func Netns(t testing.TB, prefix string) (string, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root to create a network namespace (run make test as root)")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("kernel test: nft not found (run make deps): %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := prefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return ns, fd
}

// NFT runs nft in namespace ns, with args, or with script as its input
// (nft -f -) when args are none, and returns its output.
func NFT(t testing.TB, ns, script string, args ...string) string {
	t.Helper()
	argv := append([]string{"netns", "exec", ns, "nft"}, args...)
	if len(args) == 0 {
		argv = append(argv, "-f", "-")
	}
	cmd := exec.Command("ip", argv...)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
