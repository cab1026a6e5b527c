package anomaly

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// scanFirst is the one examined bucket of the scans below; the baseline is the hour before it.
var scanFirst = time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC)

// scorerWithRows feeds a scorer two candidate keys over 12 baseline buckets and one examined
// bucket (requests; no errors, cost 1 micro a request):
//
//	acme/key_a  one service (hash 10): 100 a bucket, then 1000 -> requests score (1000-100)/10 = 90
//	beta/key_b  two services: hash 20 50 a bucket then 500 (score (500-50)/5 = 90), hash 21 50
//	            throughout (score 0); the key's series: 100, then 550 -> score (550-100)/10 = 45
//
// and rows the scorer must drop: a key that is not a candidate (the same key id in another
// project) and a bucket before the window.
func scorerWithRows(spec ScanSpec) *Scorer {
	sc := NewScorer(spec)
	sc.AddKey(1, "acme", "key_a")
	sc.AddKey(2, "beta", "key_b")
	base := uint32(scanFirst.Add(-time.Hour).Unix())
	row := func(key, service uint64, i int, requests uint64) {
		sc.Add(key, service, base+uint32(i)*300, requests, 0, int64(requests))
	}
	for i := range 12 {
		row(1, 10, i, 100)
		row(2, 20, i, 50)
		row(2, 21, i, 50)
		row(3, 30, i, 1) // not a candidate
	}
	row(1, 10, 12, 1000)
	row(2, 20, 12, 500)
	row(2, 21, 12, 50)
	row(3, 30, 12, 100_000)
	row(1, 10, -1, 100_000) // before the baseline
	return sc
}

func TestScorerScopesAndThresholds(t *testing.T) {
	spec := ScanSpec{FirstBucket: scanFirst, End: scanFirst.Add(BucketWidth), BaselineBuckets: 12,
		Metrics: []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS}, Sensitivity: 6, MinRequests: 50, Limit: 1001}
	names := map[uint64]string{10: "billing", 20: "search", 21: "cron"}
	run := func(spec ScanSpec) ([]string, bool) {
		sc := scorerWithRows(spec)
		flagged := sc.Score()
		for i := range flagged {
			if flagged[i].PerService() {
				flagged[i].SetService(names[flagged[i].ServiceHash()])
			}
		}
		got, truncated := sc.Result(flagged)
		var out []string
		for _, a := range got {
			out = append(out, fmt.Sprintf("%s/%s/%s %s score %g (observed %g, expected %g, scale %g, %d requests at %s)",
				a.Project, a.KeyID, a.Service, a.Metric, a.Score, a.Observed, a.Expected, a.Scale, a.Requests, a.Bucket.Format("15:04")))
		}
		return out, truncated
	}
	const (
		keyA     = "acme/key_a/billing ANOMALY_METRIC_REQUESTS score 90 (observed 1000, expected 100, scale 10, 1000 requests at 11:00)"
		keyAOnly = "acme/key_a/ ANOMALY_METRIC_REQUESTS score 90 (observed 1000, expected 100, scale 10, 1000 requests at 11:00)"
		keyB     = "beta/key_b/ ANOMALY_METRIC_REQUESTS score 45 (observed 550, expected 100, scale 10, 550 requests at 11:00)"
		keyBSvc  = "beta/key_b/search ANOMALY_METRIC_REQUESTS score 90 (observed 500, expected 50, scale 5, 500 requests at 11:00)"
	)
	for _, tc := range []struct {
		name          string
		change        func(*ScanSpec)
		want          []string
		wantTruncated bool
	}{
		// A key with one service is reported once, with the service; a key with two gets its
		// own series and one per service.
		{"both scopes", func(*ScanSpec) {}, []string{keyA, keyBSvc, keyB}, false},
		{"key scope", func(s *ScanSpec) { s.Scope = ScopeKey }, []string{keyAOnly, keyB}, false},
		{"key x service scope", func(s *ScanSpec) { s.Scope = ScopeKeyService }, []string{keyA, keyBSvc}, false},
		{"min requests above the smaller buckets", func(s *ScanSpec) { s.MinRequests = 600 }, []string{keyA}, false},
		{"sensitivity above 45", func(s *ScanSpec) { s.Sensitivity = 50 }, []string{keyA, keyBSvc}, false},
		{"error rate only: no errors, nothing flagged", func(s *ScanSpec) {
			s.Metrics = []keytrailv1.AnomalyMetric{keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE}
		}, nil, false},
		// Limit-1 flagged buckets are kept, highest score first (ties by project).
		{"limit", func(s *ScanSpec) { s.Limit = 2 }, []string{keyA}, true},
		// Fewer than MinHistoryBuckets baseline buckets with requests: no history, no score.
		{"too little history", func(s *ScanSpec) { s.BaselineBuckets = 11; s.FirstBucket = scanFirst }, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := spec
			tc.change(&s)
			got, truncated := run(s)
			if !reflect.DeepEqual(got, tc.want) || truncated != tc.wantTruncated {
				t.Errorf("got %q (truncated %v)\nwant %q (truncated %v)", got, truncated, tc.want, tc.wantTruncated)
			}
		})
	}
}
