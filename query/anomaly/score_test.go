package anomaly

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

func TestQuantile(t *testing.T) {
	for _, tc := range []struct {
		values []float64
		level  float64
		want   float64
	}{
		{nil, 0.5, 0},
		{[]float64{7}, 0.5, 7},
		{[]float64{4, 1, 3, 2}, 0.5, 3}, // the upper median, as ClickHouse's quantileExact
		{[]float64{5, 1, 3}, 0.5, 3},
		{[]float64{4, 1, 3, 2}, 0.99, 4},
		{[]float64{4, 1, 3, 2}, 0, 1},
	} {
		if got := Quantile(tc.values, tc.level); got != tc.want {
			t.Errorf("Quantile(%v, %g) = %g, want %g", tc.values, tc.level, got, tc.want)
		}
	}
	// p99 of 288 buckets is the third largest: two past spikes do not move it.
	values := make([]float64, 288)
	for i := range values {
		values[i] = float64(i)
	}
	if got := Quantile(values, TailLevel); got != 285 {
		t.Errorf("p99 of 0..287 = %g, want 285", got)
	}
}

func TestScores(t *testing.T) {
	t.Run("steady series with noise", func(t *testing.T) {
		// 20, 21, 22 repeated: median 21, MAD 1, p99 22; the 10% floor (2.1) wins.
		var values []float64
		for i := range 288 {
			values = append(values, float64(20+i%3))
		}
		b := CountBaseline(values, 288)
		if b != (Baseline{Median: 21, MAD: 1, Tail: 22, Buckets: 288}) {
			t.Fatalf("baseline %+v", b)
		}
		scale := RequestsScale(b)
		if scale != 2.1 {
			t.Errorf("scale %g, want 2.1", scale)
		}
		if s := RoundScore(Score(231, b.Median, scale)); s != 100 {
			t.Errorf("score %g, want 100", s)
		}
	})
	t.Run("flat series uses the absolute floor", func(t *testing.T) {
		b := CountBaseline([]float64{5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, 12)
		if got := RequestsScale(b); got != 1 {
			t.Errorf("scale %g, want 1 (one request)", got)
		}
	})
	t.Run("bursty key: an hourly batch is not an anomaly, a 10x batch is", func(t *testing.T) {
		// 24 batches of 500 in 288 buckets: median 0, MAD 0, p99 500.
		var values []float64
		for range 24 {
			values = append(values, 500)
		}
		b := CountBaseline(values, 288)
		if b.Median != 0 || b.MAD != 0 || b.Tail != 500 {
			t.Fatalf("baseline %+v", b)
		}
		scale := RequestsScale(b) // 500 / 2.326
		if s := Score(500, b.Median, scale); s >= DefaultSensitivity {
			t.Errorf("an ordinary batch scores %g", s)
		}
		if s := Score(5000, b.Median, scale); s < DefaultSensitivity {
			t.Errorf("a 10x batch scores only %g", s)
		}
	})
	t.Run("error rate: binomial noise of a small bucket", func(t *testing.T) {
		b := RateBaseline([]float64{0.3, 0.3, 0.3, 0.3})
		if got, want := RateScale(b, 50), math.Sqrt(0.3*0.7/50); got != want {
			t.Errorf("scale %g, want %g", got, want)
		}
		if got := RateScale(RateBaseline([]float64{0, 0, 0}), 50); got != RateFloor {
			t.Errorf("scale of an error-free key %g, want %g", got, RateFloor)
		}
	})
	t.Run("cost floor is the mean cost of a request", func(t *testing.T) {
		if got := UnitCost(50_000, 50); got != 1000 {
			t.Errorf("unit cost %g", got)
		}
		if got := UnitCost(0, 50); got != 1 {
			t.Errorf("unit cost of free requests %g, want 1 micro", got)
		}
		b := CountBaseline([]float64{50_000, 50_000, 50_000}, 3)
		if got := CostScale(b, 1000); got != 5000 {
			t.Errorf("scale %g, want 5000 (10%% of the median)", got)
		}
	})
}

func TestMethod(t *testing.T) {
	a := Anomaly{Metric: keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE, MAD: 0.01, Scale: 0.02, BaselineBuckets: 24,
		BaselineEnd: time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC)}
	want := "robust z: (observed - median) / max(1.4826*MAD, floor) over the 24 baseline buckets of 5m with requests before 2026-03-10T11:00:00Z; MAD 0.01, floor max(0.02, sqrt(median*(1-median)/requests)), scale 0.02"
	if got := a.Method(); got != want {
		t.Errorf("method %q\nwant   %q", got, want)
	}
}

func TestSortAnomalies(t *testing.T) {
	b := time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC)
	as := []Anomaly{
		{KeyID: "b", Score: 10, Bucket: b},
		{KeyID: "a", Score: 10, Bucket: b.Add(BucketWidth)},
		{KeyID: "a", Score: 10, Bucket: b},
		{KeyID: "z", Score: 50, Bucket: b},
	}
	SortAnomalies(as)
	var got []string
	for _, a := range as {
		got = append(got, a.KeyID+a.Bucket.Format("1504"))
	}
	want := []string{"z1100", "a1100", "a1105", "b1100"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order %v, want %v", got, want)
		}
	}
}

// baselineOf reads the MAD off one sorted copy; it must equal the definition: quantileExact
// of the absolute deviations from the median.
func TestBaselineEqualsTheDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 2000 {
		n := 1 + rng.IntN(300)
		values := make([]float64, n)
		for i := range values {
			switch rng.IntN(3) {
			case 0: // many equal values, as zero-filled buckets are
			default:
				values[i] = float64(rng.IntN(50))
			}
		}
		m := Quantile(values, 0.5)
		dev := make([]float64, n)
		for i, v := range values {
			dev[i] = math.Abs(v - m)
		}
		want := Baseline{Median: m, MAD: Quantile(dev, 0.5), Tail: Quantile(values, TailLevel), Buckets: n}
		if got := baselineOf(values); got != want {
			t.Fatalf("trial %d, values %v: got %+v, want %+v", trial, values, got, want)
		}
	}
}
