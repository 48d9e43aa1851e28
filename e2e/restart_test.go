package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/harness"
)

// TestRestart: svcproxy is stopped (SIGTERM, then SIGKILL) and started
// again while a client connects every 10ms; not one connection fails, as
// the rules stay in the kernel and a new svcproxy adopts them without a
// flush. Then a change made while svcproxy is down is applied after it
// comes back.
func TestRestart(t *testing.T) {
	c := begin(t, true)
	svc := c.service("restart", "web", []harness.Port{harness.TCP})
	c.endpoints(svc, backends...)
	c.waitDNATs(svc, "tcp", backends...)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			c := begin(t, true)
			cl, err := client.StartClient(harness.ClientOptions{
				Target: target(svc, 80), Duration: 4 * time.Second, Interval: 10 * time.Millisecond, Timeout: time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(700 * time.Millisecond)

			start := time.Now()
			old := env.Svcproxy()
			exitErr := env.StopSvcproxy(sig)
			c.since("svcproxy stopped with "+sig.String()+" (exit: "+exitDesc(exitErr)+")", start)
			if sig == syscall.SIGTERM && exitErr != nil {
				c.Errorf("svcproxy did not exit cleanly on SIGTERM: %v; log %s:\n%s", exitErr, old.LogPath, old.Tail(15))
			}
			time.Sleep(300 * time.Millisecond) // traffic with no svcproxy at all

			start = time.Now()
			if _, err := env.StartSvcproxy(c.ctx); err != nil {
				svcproxyErr = err
				t.Fatalf("restart svcproxy: %v", err)
			}
			if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
				svcproxyErr = err
				t.Fatalf("restarted svcproxy: %v", err)
			}
			c.since("svcproxy restarted and synced", start)

			rs, err := cl.Wait(c.ctx)
			if err != nil {
				t.Fatal(err)
			}
			c.Logf("%d connections during the restart: %s", len(rs), harness.FormatTally(harness.Tally(rs)))
			if len(rs) < 100 {
				c.Errorf("only %d connections in 4s; the client was too slow to cover the restart", len(rs))
			}
			c.checkSpread(rs, len(rs), backends, client.IP)
			c.waitDNATs(svc, "tcp", backends...)
		})
	}

	t.Run("changes-while-down", func(t *testing.T) {
		c := begin(t, true)
		if err := env.StopSvcproxy(syscall.SIGTERM); err != nil {
			c.Errorf("svcproxy did not exit cleanly on SIGTERM: %v", err)
		}
		c.endpoints(svc, backends[0])
		start := time.Now()
		if _, err := env.StartSvcproxy(c.ctx); err != nil {
			svcproxyErr = err
			t.Fatalf("restart svcproxy: %v", err)
		}
		c.waitDNATs(svc, "tcp", backends[0])
		c.since("restarted svcproxy applied the change made while it was down", start)
		rs := c.connect(client, harness.ClientOptions{Target: target(svc, 80), Count: 20})
		c.checkSpread(rs, 20, backends[:1], client.IP)
		if err := env.WaitSvcproxySynced(c.ctx, 30*time.Second); err != nil {
			svcproxyErr = err
			t.Fatal(err)
		}
	})
}

func exitDesc(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}
