package anomaly

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// The method's constants, used by the scan (Scorer, and chreader for its windows) and the tests' reference alike.
const (
	// BucketWidth is the width of the usage_key_5min buckets.
	BucketWidth = 5 * time.Minute
	// DefaultWindow is the range examined when no start is given: the hour before the end.
	DefaultWindow = time.Hour
	// DefaultBaseline, MinBaseline and MaxBaseline bound the history a baseline is computed
	// from. Less than an hour cannot hold MinHistoryBuckets active buckets.
	DefaultBaseline = 24 * time.Hour
	MinBaseline     = time.Hour
	MaxBaseline     = 7 * 24 * time.Hour
	// DefaultSensitivity is the score from which a bucket is flagged.
	DefaultSensitivity = 6.0
	// DefaultMinRequests is the requests a bucket needs before any metric of it is flagged.
	DefaultMinRequests = 50
	// MinHistoryBuckets is the baseline buckets with requests a series needs to be scored.
	MinHistoryBuckets = 12
	// MADScale makes the MAD an estimate of the standard deviation of normal data.
	MADScale = 1.4826
	// TailLevel is the baseline quantile of the burst term of the floor, and TailZ the number
	// of standard deviations it lies above the median for normal data.
	TailLevel = 0.99
	TailZ     = 2.326
	// RelativeFloor is the share of the median below which a count's scale never falls.
	RelativeFloor = 0.1
	// CountFloor is the absolute floor of the requests scale (one request).
	CountFloor = 1.0
	// RateFloor is the absolute floor of the error-rate scale (two percentage points).
	RateFloor = 0.02
	// MaxAnomalies bounds one answer; the highest scores are kept.
	MaxAnomalies = 1000
)

// BucketStart is the start of the 5-minute bucket containing t.
func BucketStart(t time.Time) time.Time { return t.UTC().Truncate(BucketWidth) }

// Quantile is ClickHouse's quantileExact(level): the element at index floor(level * n) of the
// sorted values (0-based), so the median of an even count is the upper of the two middle
// values. It returns 0 for no values.
func Quantile(values []float64, level float64) float64 {
	if len(values) == 0 {
		return 0
	}
	s := slices.Clone(values)
	slices.Sort(s)
	return s[quantileIndex(len(s), level)]
}

// Baseline summarises a series' history for one metric.
type Baseline struct {
	Median float64
	MAD    float64
	// Tail is the TailLevel quantile (unused for rates).
	Tail float64
	// Buckets is how many buckets the statistics are over.
	Buckets int
}

// CountBaseline is the baseline of a count (requests, cost micros): values has one entry per
// baseline bucket with traffic, and the remaining buckets up to buckets count as 0.
func CountBaseline(values []float64, buckets int) Baseline {
	filled := make([]float64, buckets)
	copy(filled, values)
	return baselineOf(filled)
}

// RateBaseline is the baseline of the error rate: one rate per baseline bucket with requests.
func RateBaseline(rates []float64) Baseline { return baselineOf(rates) }

// baselineOf sorts the values once: the median and the tail are read from the sorted values,
// and the absolute deviations from the median, which grow outwards from it on both sides,
// are merged from there until the MAD's rank is reached. One sort per baseline instead of
// three: the anomaly scan computes three baselines for every candidate series.
func baselineOf(values []float64) Baseline {
	n := len(values)
	if n == 0 {
		return Baseline{}
	}
	s := slices.Clone(values)
	slices.Sort(s)
	mid := quantileIndex(n, 0.5)
	m := s[mid]
	// The deviation of rank `want` (0-based) in ascending order: take the smaller of the
	// next deviation below and above the median, want+1 times.
	want := quantileIndex(n, 0.5)
	lo, hi := mid-1, mid+1
	mad := 0.0 // s[mid] itself, deviation 0, is rank 0
	for range want {
		switch {
		case lo < 0:
			mad, hi = s[hi]-m, hi+1
		case hi >= n:
			mad, lo = m-s[lo], lo-1
		case m-s[lo] <= s[hi]-m:
			mad, lo = m-s[lo], lo-1
		default:
			mad, hi = s[hi]-m, hi+1
		}
	}
	return Baseline{Median: m, MAD: mad, Tail: s[quantileIndex(n, TailLevel)], Buckets: n}
}

// quantileIndex is where quantileExact(level) reads in n sorted values.
func quantileIndex(n int, level float64) int { return min(int(level*float64(n)), n-1) }

// RequestsScale is the denominator of the requests score.
func RequestsScale(b Baseline) float64 {
	return max(MADScale*b.MAD, CountFloor, RelativeFloor*b.Median, (b.Tail-b.Median)/TailZ)
}

// UnitCost is the cost floor: the baseline's mean cost of one request, at least 1 micro.
func UnitCost(baselineCostMicros, baselineRequests float64) float64 {
	if baselineRequests <= 0 {
		return 1
	}
	return max(baselineCostMicros/baselineRequests, 1)
}

// CostScale is the denominator of the cost score.
func CostScale(b Baseline, unitCost float64) float64 {
	return max(MADScale*b.MAD, unitCost, RelativeFloor*b.Median, (b.Tail-b.Median)/TailZ)
}

// RateScale is the denominator of the error-rate score of a bucket with this many requests.
func RateScale(b Baseline, requests int64) float64 {
	return max(MADScale*b.MAD, RateFloor, math.Sqrt(b.Median*(1-b.Median)/float64(requests)))
}

// Score is the robust z-score of an observation.
func Score(observed, median, scale float64) float64 { return (observed - median) / scale }

// RoundScore is the score as reported: two decimals, half away from zero.
func RoundScore(s float64) float64 { return math.Round(s*100) / 100 }

// Anomaly is one flagged bucket of one series and metric.
type Anomaly struct {
	Project string
	KeyID   string
	// Service is empty for the key scope (all services of the key).
	Service string
	Metric  keytrailv1.AnomalyMetric
	Bucket  time.Time
	// Observed is the bucket's requests, cost micros or error rate; Expected the baseline
	// median; Score is rounded to two decimals.
	Observed float64
	Expected float64
	Score    float64
	// MAD and Scale are the baseline's median absolute deviation and the score's denominator.
	MAD   float64
	Scale float64
	// BaselineBuckets is how many buckets the baseline statistics are over; BaselineEnd is
	// where the baseline window ends (the first examined bucket).
	BaselineBuckets int
	BaselineEnd     time.Time
	Requests        int64
}

// Method says how the score was computed, for a reader of the answer or the alert.
func (a Anomaly) Method() string {
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }
	var over, floor string
	switch a.Metric {
	case keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE:
		over = fmt.Sprintf("the %d baseline buckets of 5m with requests", a.BaselineBuckets)
		floor = "max(0.02, sqrt(median*(1-median)/requests))"
	case keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST:
		over = fmt.Sprintf("%d buckets of 5m, empty buckets as 0", a.BaselineBuckets)
		floor = "max(mean cost of a request, 10% of median, (p99-median)/2.326)"
	default:
		over = fmt.Sprintf("%d buckets of 5m, empty buckets as 0", a.BaselineBuckets)
		floor = "max(1, 10% of median, (p99-median)/2.326)"
	}
	return fmt.Sprintf("robust z: (observed - median) / max(1.4826*MAD, floor) over %s before %s; MAD %s, floor %s, scale %s",
		over, a.BaselineEnd.UTC().Format(time.RFC3339), g(a.MAD), floor, g(a.Scale))
}

// Proto is the form the API answers and the alert stream carry.
func (a Anomaly) Proto() *keytrailv1.Anomaly {
	return &keytrailv1.Anomaly{
		Project:     a.Project,
		KeyId:       a.KeyID,
		Service:     a.Service,
		Metric:      a.Metric,
		BucketStart: timestamppb.New(a.Bucket),
		BucketWidth: durationpb.New(BucketWidth),
		Observed:    a.Observed,
		Expected:    a.Expected,
		Score:       a.Score,
		Method:      a.Method(),
		Requests:    a.Requests,
	}
}

// SortAnomalies orders by score, highest first, then by series, bucket and metric, so an
// answer is deterministic.
func SortAnomalies(as []Anomaly) {
	slices.SortStableFunc(as, func(a, b Anomaly) int {
		switch {
		case a.Score != b.Score:
			if a.Score > b.Score {
				return -1
			}
			return 1
		case a.Project != b.Project:
			return compare(a.Project, b.Project)
		case a.KeyID != b.KeyID:
			return compare(a.KeyID, b.KeyID)
		case a.Service != b.Service:
			return compare(a.Service, b.Service)
		case !a.Bucket.Equal(b.Bucket):
			return a.Bucket.Compare(b.Bucket)
		}
		return int(a.Metric) - int(b.Metric)
	})
}

func compare(a, b string) int {
	if a < b {
		return -1
	}
	return 1
}
