package bench

import (
	"math"
	"testing"
)

// The ceilings add the CPU per event of every process of the pipeline, keytrail's and the
// raw baselines', and divide the cores by it.
func TestCeilingsAddEveryProcessOfThePipeline(t *testing.T) {
	r := &Report{Machine: Machine{CPUs: 2}}
	r.cost(
		CostRow{Stage: costPublishClient, Value: 6, Unit: UnitMicrosPerEvent, Baseline: "raw", BaselineValue: 5},
		CostRow{Stage: costPublishServer, Value: 8, Unit: UnitMicrosPerEvent, Baseline: "raw", BaselineValue: 7},
		CostRow{Stage: costDeliver, Value: 7, Unit: UnitMicrosPerEvent, Baseline: "raw", BaselineValue: 3},
		CostRow{Stage: costIngester, Value: 6, Unit: UnitMicrosPerEvent, Baseline: "raw", BaselineValue: 3},
		CostRow{Stage: "  " + stageInsert, Value: 0.5, Unit: UnitMicrosPerEvent, Baseline: "raw", BaselineValue: 1.5},
		CostRow{Stage: costClickHouse, Value: 9, Unit: UnitCPUPerMillion, Baseline: "raw", BaselineValue: 6.5},
	)
	r.addCeilings()
	want := []struct {
		figure    string
		value, bv float64
	}{
		// 2 cores / (7+6+9) µs; raw 2 / (3+3+1.5+6.5) µs.
		{"drain ceiling: cores / CPU per event", 2e6 / 22, 2e6 / 14},
		// 2 cores / (6+8+22) µs; raw 2 / (5+7+14) µs.
		{"end-to-end ceiling: cores / CPU per event", 2e6 / 36, 2e6 / 26},
	}
	if len(r.Rows) != len(want) {
		t.Fatalf("rows %+v, want %d", r.Rows, len(want))
	}
	for i, w := range want {
		got := r.Rows[i]
		if got.Figure != w.figure || math.Abs(got.Value-w.value) > 1e-6 || math.Abs(got.BaselineValue-w.bv) > 1e-6 {
			t.Errorf("row %d: %q %.3f (baseline %.3f), want %q %.3f (baseline %.3f)", i, got.Figure, got.Value, got.BaselineValue, w.figure, w.value, w.bv)
		}
	}
}

// Without the publish phase there is no end-to-end ceiling, only the drain's.
func TestCeilingsNeedTheirPhases(t *testing.T) {
	r := &Report{Machine: Machine{CPUs: 2}}
	r.cost(
		CostRow{Stage: costDeliver, Value: 7, Unit: UnitMicrosPerEvent},
		CostRow{Stage: costIngester, Value: 6, Unit: UnitMicrosPerEvent},
		CostRow{Stage: costClickHouse, Value: 7, Unit: UnitCPUPerMillion},
	)
	r.addCeilings()
	if len(r.Rows) != 1 || r.Rows[0].Figure != "drain ceiling: cores / CPU per event" || r.Rows[0].Value != 1e5 || r.Rows[0].Baseline != "" {
		t.Fatalf("rows %+v, want only the drain ceiling, 100000/s, without a raw baseline", r.Rows)
	}
}
