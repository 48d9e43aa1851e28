package syncer

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
)

func TestReporterEmitsOneEventPerProblem(t *testing.T) {
	rec := events.NewFakeRecorder(10)
	r := &logReporter{rec: rec}
	svc := &v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "bad", ResourceVersion: "7"}}
	r.begin()
	r.invalid(kindService, reasonInvalidClusterIP, svc, "10.0.0.300")
	r.invalid(kindService, reasonInvalidClusterIP, svc, "10.0.0.300") // the other family: same report
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	if len(got) != 1 {
		t.Fatalf("got %d events, want 1: %v", len(got), got)
	}
	if !strings.HasPrefix(got[0], "Warning "+reasonInvalidClusterIP) || !strings.Contains(got[0], "10.0.0.300") {
		t.Errorf("event %q lacks the reason or the bad value", got[0])
	}
}
