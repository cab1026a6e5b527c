package testenv

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric is the value of a counter or gauge of g: the sum over the series of the family name
// that carry every label given as name, value pairs (none: every series). A family with no
// such series fails the test, so a misspelt name cannot pass as a zero.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("testenv.Metric(%s): labels come in name, value pairs: %q", name, labels)
	}
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum, found := 0.0, false
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i < len(labels); i += 2 {
				if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
					continue series
				}
			}
			found = true
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			} else {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	if !found {
		t.Fatalf("no series of metric %s%s", name, fmt.Sprint(labels))
	}
	return sum
}
