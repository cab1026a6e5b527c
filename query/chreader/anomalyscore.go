package chreader

import (
	"cmp"
	"math"
	"slices"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
)

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

// flaggedBucket is one examined bucket of one series where a requested metric reached the
// sensitivity, with the anomalies of every metric that did.
type flaggedBucket struct {
	base anomaly.Anomaly // project, key, service, bucket, requests, baseline end
	// best is the highest requested score: what the answer is ordered by.
	best  float64
	found []anomaly.Anomaly
	// perService marks a key x service series, serviceHash its service until it is named.
	perService  bool
	serviceHash uint64
}

func (fb *flaggedBucket) setService(name string) {
	fb.base.Service = name
	for i := range fb.found {
		fb.found[i].Service = name
	}
}

// anomalyScorer collects the candidates' rows and scores their series.
type anomalyScorer struct {
	spec    AnomalySpec
	start   int64 // the scan window's first bucket, unix seconds
	buckets int   // baseline and examined buckets in the window
	keys    map[uint64]*candidateKey
	scratch series // the series being scored, zero between series
}

func newAnomalyScorer(spec AnomalySpec) *anomalyScorer {
	start := spec.BaselineStart()
	n := int((spec.End.Sub(start) + anomaly.BucketWidth - 1) / anomaly.BucketWidth)
	return &anomalyScorer{spec: spec, start: start.Unix(), buckets: n, keys: map[uint64]*candidateKey{}}
}

func (sc *anomalyScorer) addKey(hash uint64, project, key string) {
	sc.keys[hash] = &candidateKey{project: project, key: key, services: map[uint64][]cell{}}
}

const bucketSeconds = int64(anomaly.BucketWidth / time.Second)

// add files one scanned row under its key and service. A row whose key is not a candidate
// (the scan selects by key id alone, so the same key id in another project) is dropped.
func (sc *anomalyScorer) add(keyHash, serviceHash uint64, bucket uint32, requests, errors uint64, cost int64) {
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

// score scores every candidate's series in the requested scope (see the scope note in
// anomalies.go) and returns the flagged buckets, service names still to be filled in.
func (sc *anomalyScorer) score() []flaggedBucket {
	sc.scratch = series{requests: make([]uint64, sc.buckets), errors: make([]uint64, sc.buckets), costs: make([]int64, sc.buckets)}
	var flagged []flaggedBucket
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
		case sc.spec.Scope == keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY:
			wholeKey(k)
		case sc.spec.Scope == keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY_SERVICE, len(k.services) == 1:
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
func (sc *anomalyScorer) scoreSeries(flagged []flaggedBucket, k *candidateKey, perService bool, serviceHash uint64) []flaggedBucket {
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
	if history < anomaly.MinHistoryBuckets {
		return flagged
	}
	rb, cb, eb := anomaly.CountBaseline(reqs, nb), anomaly.CountBaseline(costs, nb), anomaly.RateBaseline(rates)
	reqScale, costScale := anomaly.RequestsScale(rb), anomaly.CostScale(cb, anomaly.UnitCost(sumCost, sumReq))
	for i := nb; i < sc.buckets; i++ {
		n := s.requests[i]
		if n == 0 || int64(n) < spec.MinRequests {
			continue
		}
		fb := flaggedBucket{best: math.Inf(-1), perService: perService, serviceHash: serviceHash, base: anomaly.Anomaly{
			Project: k.project, KeyID: k.key, Requests: int64(n), BaselineEnd: spec.FirstBucket,
			Bucket: time.Unix(sc.start+int64(i)*bucketSeconds, 0).UTC(),
		}}
		flag := func(m keytrailv1.AnomalyMetric, observed float64, b anomaly.Baseline, scale float64, buckets int) {
			if !spec.has(m) {
				return
			}
			score := anomaly.Score(observed, b.Median, scale)
			fb.best = max(fb.best, score)
			if score < spec.Sensitivity {
				return
			}
			a := fb.base
			a.Metric, a.Observed, a.Expected, a.MAD, a.Scale, a.Score, a.BaselineBuckets = m, observed, b.Median, b.MAD, scale, anomaly.RoundScore(score), buckets
			fb.found = append(fb.found, a)
		}
		flag(keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS, float64(n), rb, reqScale, nb)
		flag(keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE, float64(s.errors[i])/float64(n), eb, anomaly.RateScale(eb, int64(n)), history)
		flag(keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST, float64(s.costs[i]), cb, costScale, nb)
		if len(fb.found) > 0 {
			flagged = append(flagged, fb)
		}
	}
	return flagged
}

// result keeps the spec.Limit-1 flagged buckets with the highest scores (ties by series and
// bucket) and returns their anomalies sorted, and whether any were left out.
func (sc *anomalyScorer) result(flagged []flaggedBucket) ([]anomaly.Anomaly, bool) {
	slices.SortFunc(flagged, func(a, b flaggedBucket) int {
		return cmp.Or(cmp.Compare(b.best, a.best), cmp.Compare(a.base.Project, b.base.Project), cmp.Compare(a.base.KeyID, b.base.KeyID),
			cmp.Compare(a.base.Service, b.base.Service), a.base.Bucket.Compare(b.base.Bucket))
	})
	truncated := false
	if keep := sc.spec.Limit - 1; len(flagged) > keep {
		flagged, truncated = flagged[:keep], true
	}
	var out []anomaly.Anomaly
	for _, fb := range flagged {
		out = append(out, fb.found...)
	}
	anomaly.SortAnomalies(out)
	if len(out) > anomaly.MaxAnomalies {
		out, truncated = out[:anomaly.MaxAnomalies], true
	}
	return out, truncated
}
