// Package metricstest reads a Prometheus registry in tests: the metric
// families by name, and the value of one family's samples.
package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Gather is what g holds now, by metric name; it fails t when g cannot be
// gathered.
func Gather(t testing.TB, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// Value is the sum over the samples of name whose labels include the
// given pairs (name, value, name, value, ...): a counter's or gauge's
// value, a histogram's sample count.
func Value(got map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	var v float64
	for _, m := range got[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			ok = ok && have[labels[i]] == labels[i+1]
		}
		if !ok {
			continue
		}
		v += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
	}
	return v
}
