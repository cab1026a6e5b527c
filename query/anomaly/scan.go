package anomaly

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Scope is which series of a key are scored.
type Scope int

// The scopes. The zero value scores both.
const (
	// ScopeBoth scores a key's series (all its services together) and one series per key x
	// service. A key used by one service in the whole window has the same series for both; it
	// is scored and reported once, with the service set.
	ScopeBoth Scope = iota
	// ScopeKey scores a key's series only (service empty).
	ScopeKey
	// ScopeKeyService scores one series per key x service only.
	ScopeKeyService
)

// Valid reports whether s is one of the scopes.
func (s Scope) Valid() bool { return s >= ScopeBoth && s <= ScopeKeyService }

// String names the scope for messages.
func (s Scope) String() string {
	switch s {
	case ScopeBoth:
		return "key and key x service"
	case ScopeKey:
		return "key"
	case ScopeKeyService:
		return "key x service"
	}
	return fmt.Sprintf("scope(%d)", int(s))
}

// Metrics are the metrics a series is scored on, in the order answers list them.
var Metrics = []keytrailv1.AnomalyMetric{
	keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS,
	keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE,
	keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST,
}

// ScanSpec is what a scan scores: the window, the metrics and scope, and the thresholds.
type ScanSpec struct {
	// FirstBucket is the first examined bucket (5-minute aligned); examined buckets start
	// before End. The baseline is the BaselineBuckets buckets before FirstBucket.
	FirstBucket     time.Time
	End             time.Time
	BaselineBuckets int
	// Metrics is a non-empty set.
	Metrics     []keytrailv1.AnomalyMetric
	Scope       Scope
	Sensitivity float64
	MinRequests int64
	// Limit bounds the flagged buckets kept (each is one bucket of one series, with up to 3
	// anomalies): Limit-1 are kept, so one more than MaxAnomalies tells truncation apart.
	Limit int
}

// BaselineStart is where the baseline window starts.
func (s ScanSpec) BaselineStart() time.Time {
	return s.FirstBucket.Add(-time.Duration(s.BaselineBuckets) * BucketWidth)
}

func (s ScanSpec) has(m keytrailv1.AnomalyMetric) bool { return slices.Contains(s.Metrics, m) }

// cell is one usage_key_5min row of a series: the bucket's index in the scan window and its
// figures. A bucket can come in several rows while SummingMergeTree parts are unmerged.
type cell struct {
	bucket           uint32
	requests, errors uint64
	cost             int64
}

// candidateKey is one candidate key with its rows, per service hash.
type candidateKey struct {
	project, key string
	services     map[uint64][]cell
}

// series is one series' per-bucket totals over the scan window, one entry per 5-minute
// bucket; a bucket without requests has none of anything.
type series struct {
	requests, errors []uint64
	costs            []int64
}

func (s series) add(cells []cell) {
	for _, c := range cells {
		s.requests[c.bucket] += c.requests
		s.errors[c.bucket] += c.errors
		s.costs[c.bucket] += c.cost
	}
}

// clear zeroes the buckets cells touched, so one series buffer serves every series.
func (s series) clear(cells []cell) {
	for _, c := range cells {
		s.requests[c.bucket], s.errors[c.bucket], s.costs[c.bucket] = 0, 0, 0
	}
}

// Flagged is one examined bucket of one series where a requested metric reached the
// sensitivity, with the anomalies of every metric that did. A key x service series knows its
// service by hash until SetService names it.
type Flagged struct {
	base Anomaly // project, key, service, bucket, requests, baseline end
	// best is the highest requested score: what the answer is ordered by.
	best        float64
	found       []Anomaly
	perService  bool
	serviceHash uint64
}

// KeyID is the key of the flagged series.
func (f *Flagged) KeyID() string { return f.base.KeyID }

// PerService reports a key x service series, whose service is to be named.
func (f *Flagged) PerService() bool { return f.perService }

// ServiceHash identifies the service of a key x service series, as the rows did.
func (f *Flagged) ServiceHash() uint64 { return f.serviceHash }

// SetService names the service of the series.
func (f *Flagged) SetService(name string) {
	f.base.Service = name
	for i := range f.found {
		f.found[i].Service = name
	}
}

// Scorer collects the rows of candidate keys and scores their series. Keys and services are
// told apart by 64-bit hashes (computed by storage, so no name crosses the network per row);
// a collision between two of one scan (2^-64 per pair) would merge their series and is not
// guarded against. Memory: about 40 bytes per row added.
type Scorer struct {
	spec    ScanSpec
	start   int64 // the scan window's first bucket, unix seconds
	buckets int   // baseline and examined buckets in the window
	keys    map[uint64]*candidateKey
	scratch series // the series being scored, zero between series
}

// NewScorer prepares a scan of spec.
func NewScorer(spec ScanSpec) *Scorer {
	start := spec.BaselineStart()
	n := int((spec.End.Sub(start) + BucketWidth - 1) / BucketWidth)
	return &Scorer{spec: spec, start: start.Unix(), buckets: n, keys: map[uint64]*candidateKey{}}
}

// AddKey makes a key a candidate; hash is how its rows identify it.
func (sc *Scorer) AddKey(hash uint64, project, keyID string) {
	sc.keys[hash] = &candidateKey{project: project, key: keyID, services: map[uint64][]cell{}}
}

// Keys is how many candidate keys there are.
func (sc *Scorer) Keys() int { return len(sc.keys) }

const bucketSeconds = int64(BucketWidth / time.Second)

// Add files one row (a 5-minute bucket starting at bucket, unix seconds) under its key and
// service. A row whose key is not a candidate (a scan selecting by key id alone reads the
// same key id in other projects) or that lies outside the window is dropped.
func (sc *Scorer) Add(keyHash, serviceHash uint64, bucket uint32, requests, errors uint64, cost int64) {
	k, ok := sc.keys[keyHash]
	if !ok {
		return
	}
	i := (int64(bucket) - sc.start) / bucketSeconds
	if i < 0 || i >= int64(sc.buckets) {
		return
	}
	k.services[serviceHash] = append(k.services[serviceHash], cell{bucket: uint32(i), requests: requests, errors: errors, cost: cost})
}

// Score scores every candidate's series in the requested scope and returns the flagged
// buckets, key x service ones still to be named (SetService).
func (sc *Scorer) Score() []Flagged {
	sc.scratch = series{requests: make([]uint64, sc.buckets), errors: make([]uint64, sc.buckets), costs: make([]int64, sc.buckets)}
	var flagged []Flagged
	wholeKey := func(k *candidateKey) {
		for _, cells := range k.services {
			sc.scratch.add(cells)
		}
		flagged = sc.scoreSeries(flagged, k, false, 0)
		for _, cells := range k.services {
			sc.scratch.clear(cells)
		}
	}
	perService := func(k *candidateKey) {
		for hash, cells := range k.services {
			sc.scratch.add(cells)
			flagged = sc.scoreSeries(flagged, k, true, hash)
			sc.scratch.clear(cells)
		}
	}
	for _, k := range sc.keys {
		switch {
		case len(k.services) == 0:
		case sc.spec.Scope == ScopeKey:
			wholeKey(k)
		case sc.spec.Scope == ScopeKeyService, len(k.services) == 1:
			perService(k)
		default:
			wholeKey(k)
			perService(k)
		}
	}
	return flagged
}

// scoreSeries computes the baselines of the series in sc.scratch and appends its flagged
// examined buckets.
func (sc *Scorer) scoreSeries(flagged []Flagged, k *candidateKey, perService bool, serviceHash uint64) []Flagged {
	spec, s := sc.spec, sc.scratch
	nb := spec.BaselineBuckets
	var reqs, costs, rates []float64
	var sumCost, sumReq float64
	for i := 0; i < nb; i++ {
		if s.requests[i] == 0 {
			continue
		}
		r, c := float64(s.requests[i]), float64(s.costs[i])
		reqs, costs, rates = append(reqs, r), append(costs, c), append(rates, float64(s.errors[i])/r)
		sumReq, sumCost = sumReq+r, sumCost+c
	}
	history := len(reqs)
	if history < MinHistoryBuckets {
		return flagged
	}
	rb, cb, eb := CountBaseline(reqs, nb), CountBaseline(costs, nb), RateBaseline(rates)
	reqScale, costScale := RequestsScale(rb), CostScale(cb, UnitCost(sumCost, sumReq))
	for i := nb; i < sc.buckets; i++ {
		n := s.requests[i]
		if n == 0 || int64(n) < spec.MinRequests {
			continue
		}
		fb := Flagged{best: math.Inf(-1), perService: perService, serviceHash: serviceHash, base: Anomaly{
			Project: k.project, KeyID: k.key, Requests: int64(n), BaselineEnd: spec.FirstBucket,
			Bucket: time.Unix(sc.start+int64(i)*bucketSeconds, 0).UTC(),
		}}
		flag := func(m keytrailv1.AnomalyMetric, observed float64, b Baseline, scale float64, buckets int) {
			if !spec.has(m) {
				return
			}
			score := Score(observed, b.Median, scale)
			fb.best = max(fb.best, score)
			if score < spec.Sensitivity {
				return
			}
			a := fb.base
			a.Metric, a.Observed, a.Expected, a.MAD, a.Scale, a.Score, a.BaselineBuckets = m, observed, b.Median, b.MAD, scale, RoundScore(score), buckets
			fb.found = append(fb.found, a)
		}
		flag(keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS, float64(n), rb, reqScale, nb)
		flag(keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE, float64(s.errors[i])/float64(n), eb, RateScale(eb, int64(n)), history)
		flag(keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST, float64(s.costs[i]), cb, costScale, nb)
		if len(fb.found) > 0 {
			flagged = append(flagged, fb)
		}
	}
	return flagged
}

// Result keeps the spec.Limit-1 flagged buckets with the highest scores (ties by series and
// bucket) and returns their anomalies sorted (SortAnomalies), at most MaxAnomalies, and
// whether any were left out.
func (sc *Scorer) Result(flagged []Flagged) ([]Anomaly, bool) {
	slices.SortFunc(flagged, func(a, b Flagged) int {
		return cmp.Or(cmp.Compare(b.best, a.best), cmp.Compare(a.base.Project, b.base.Project), cmp.Compare(a.base.KeyID, b.base.KeyID),
			cmp.Compare(a.base.Service, b.base.Service), a.base.Bucket.Compare(b.base.Bucket))
	})
	truncated := false
	if keep := sc.spec.Limit - 1; len(flagged) > keep {
		flagged, truncated = flagged[:keep], true
	}
	var out []Anomaly
	for _, fb := range flagged {
		out = append(out, fb.found...)
	}
	SortAnomalies(out)
	if len(out) > MaxAnomalies {
		out, truncated = out[:MaxAnomalies], true
	}
	return out, truncated
}
