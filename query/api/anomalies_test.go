package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/auth"
)

// The anomaly fixture. The clock is anomNow; the default examined window is the hour
// before it, buckets 11:00 to 11:55, and the default baseline the 288 buckets (24 h) before
// 11:00. Every key is built from per-bucket loads, so the expected statistics can be worked
// out by hand (the literal numbers in the tests) and by the reference implementation in
// package anomaly (TestAnomaliesMatchReference).
var anomNow = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

var (
	anomFirst    = anomNow.Add(-time.Hour)         // first examined bucket, 11:00
	anomSpikeAt  = anomFirst.Add(30 * time.Minute) // 11:30
	anomBase24h  = anomFirst.Add(-24 * time.Hour)  // default baseline start
	anomBase2h   = anomFirst.Add(-2 * time.Hour)   // baseline=2h start
	anomExamined []time.Time
)

func init() {
	for b := anomFirst; b.Before(anomNow); b = b.Add(anomaly.BucketWidth) {
		anomExamined = append(anomExamined, b)
	}
}

// load is one bucket of one key x service: requests, how many of them failed, and the cost
// of each request.
type load struct {
	requests, errors int
	costEach         int64
}

type anomSeries struct {
	project, key, service string
	loads                 map[time.Time]load
}

// buckets fills [from, to) with f(i) for the i-th bucket.
func buckets(from, to time.Time, f func(i int, b time.Time) load) map[time.Time]load {
	m := map[time.Time]load{}
	i := 0
	for b := from; b.Before(to); b = b.Add(anomaly.BucketWidth) {
		if l := f(i, b); l.requests > 0 {
			m[b] = l
		}
		i++
	}
	return m
}

func anomFixture() []anomSeries {
	flat := func(n, errs int, cost int64) func(int, time.Time) load {
		return func(int, time.Time) load { return load{requests: n, errors: errs, costEach: cost} }
	}
	with := func(m map[time.Time]load, at time.Time, l load) map[time.Time]load { m[at] = l; return m }
	return []anomSeries{
		// 24 h of 20, 21, 22, 20, ... requests (median 21, MAD 1), then 21 a bucket except
		// 231 at 11:30.
		{"acme", "key_spike", "billing", with(buckets(anomBase24h, anomNow, func(i int, b time.Time) load {
			if !b.Before(anomFirst) {
				return load{requests: 21}
			}
			return load{requests: 20 + i%3}
		}), anomSpikeAt, load{requests: 231})},
		// Flat 60 a bucket; 62 at 11:30.
		{"acme", "key_steady", "search", with(buckets(anomBase24h, anomNow, flat(60, 0, 0)), anomSpikeAt, load{requests: 62})},
		// Used in 8 buckets only before 11:00, then 600 requests at 11:30: too little history.
		{"acme", "key_young", "app", with(buckets(anomFirst.Add(-40*time.Minute), anomFirst, flat(60, 0, 0)), anomSpikeAt, load{requests: 600})},
		// 2 h of 50 requests with 1 error, then 20 errors in 50 at 11:30.
		{"acme", "key_errors", "api", with(buckets(anomBase2h, anomNow, flat(50, 1, 0)), anomSpikeAt, load{requests: 50, errors: 20})},
		// 2 h of 50 requests at 1000 micros, then 50 at 20000 at 11:30.
		{"acme", "key_cost", "gen", with(buckets(anomBase2h, anomNow, flat(50, 0, 1000)), anomSpikeAt, load{requests: 50, costEach: 20000})},
		// Two services of 30 a bucket for 2 h; service b makes 150 at 11:30.
		{"acme", "key_multi", "a", buckets(anomBase2h, anomNow, flat(30, 0, 0))},
		{"acme", "key_multi", "b", with(buckets(anomBase2h, anomNow, flat(30, 0, 0)), anomSpikeAt, load{requests: 150})},
	}
}

func anomEvents(series []anomSeries) []any {
	var events []any
	n := 0
	for _, s := range series {
		for b, l := range s.loads {
			step := anomaly.BucketWidth / time.Duration(l.requests+1)
			for k := 0; k < l.requests; k++ {
				n++
				status := uint32(200)
				if k < l.errors {
					status = 503
				}
				events = append(events, &keytrailv1.UsageEvent{
					EventId: fmt.Sprintf("a%d", n), Time: timestamppb.New(b.Add(time.Duration(k+1) * step)),
					Project: s.project, KeyId: s.key, Service: s.service, StatusCode: status, CostMicros: l.costEach,
				})
			}
		}
	}
	return events
}

func startAnomalyAPI(t *testing.T) *apitest.Server {
	t.Helper()
	db := testenv.ClickHouse(t)
	testenv.Insert(t, db, anomEvents(anomFixture())...)
	return apitest.Start(t, db, apitest.Options{
		Now:    func() time.Time { return anomNow },
		Tokens: map[string]auth.Entry{"ktk_beta_reader": {Name: "beta-reader", Role: auth.RoleProjectReader, Projects: []string{"beta"}}},
	})
}

// anomRow is an anomaly in comparable form: the score as reported (2 decimals).
type anomRow struct {
	Key, Service string
	Metric       keytrailv1.AnomalyMetric
	Bucket       time.Time
	Observed     float64
	Expected     float64
	Score        float64
	Requests     int64
}

func anomRows(as []*keytrailv1.Anomaly) []anomRow {
	out := make([]anomRow, len(as))
	for i, a := range as {
		out[i] = anomRow{a.GetKeyId(), a.GetService(), a.GetMetric(), a.GetBucketStart().AsTime(), a.GetObserved(), a.GetExpected(), a.GetScore(), a.GetRequests()}
	}
	return out
}

func wantAnomalies(t *testing.T, got []*keytrailv1.Anomaly, want ...anomRow) {
	t.Helper()
	g := anomRows(got)
	if len(want) == 0 {
		want = []anomRow{}
	}
	if !slices.Equal(g, want) {
		t.Errorf("anomalies:\ngot  %+v\nwant %+v", g, want)
	}
}

const (
	metricRequests  = keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS
	metricErrorRate = keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE
	metricCost      = keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST
)

func TestAnomalies(t *testing.T) {
	t.Parallel()
	srv := startAnomalyAPI(t)
	ctx := context.Background()
	list := func(t *testing.T, req *keytrailv1.ListAnomaliesRequest) []*keytrailv1.Anomaly {
		t.Helper()
		resp, err := srv.Client.ListAnomalies(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAnomalies()
	}
	twoHours := durationpb.New(2 * time.Hour)

	t.Run("spike found with default parameters", func(t *testing.T) {
		got := list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_spike"})
		// median 21, MAD 1; scale = max(1.4826*1, 1, 10% of 21, (22-21)/2.326) = 2.1;
		// (231 - 21) / 2.1 = 100. One service in the window: reported once, with it.
		wantAnomalies(t, got, anomRow{"key_spike", "billing", metricRequests, anomSpikeAt, 231, 21, 100, 231})
		if len(got) == 1 {
			wantMethod := "robust z: (observed - median) / max(1.4826*MAD, floor) over 288 buckets of 5m, empty buckets as 0 before 2026-03-10T11:00:00Z; MAD 1, floor max(1, 10% of median, (p99-median)/2.326), scale 2.1"
			if got[0].GetMethod() != wantMethod {
				t.Errorf("method %q, want %q", got[0].GetMethod(), wantMethod)
			}
			if got[0].GetBucketWidth().AsDuration() != 5*time.Minute || got[0].GetProject() != "acme" {
				t.Errorf("anomaly %v", got[0])
			}
		}
	})

	t.Run("steady key and key with little history are not flagged", func(t *testing.T) {
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_steady"}))
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_young"}))
		// Even at the lowest sensitivity and without the volume gate, 8 buckets of history
		// are not a baseline.
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_young", Sensitivity: 0.01, MinRequests: 1}))
	})

	t.Run("error rate spike", func(t *testing.T) {
		// Rates 1/50 = 0.02 in every baseline bucket: median 0.02, MAD 0; scale =
		// max(0.02, sqrt(0.02*0.98/50) = 0.0198) = 0.02; (0.4 - 0.02) / 0.02 = 19.
		got := list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_errors", Baseline: twoHours})
		wantAnomalies(t, got, anomRow{"key_errors", "api", metricErrorRate, anomSpikeAt, 0.4, 0.02, 19, 50})
	})

	t.Run("cost spike", func(t *testing.T) {
		// 50 x 1000 micros a bucket: median 50000, MAD 0; scale = max(mean cost of a
		// request 1000, 10% of median 5000) = 5000; (1000000 - 50000) / 5000 = 190.
		got := list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_cost", Baseline: twoHours})
		wantAnomalies(t, got, anomRow{"key_cost", "gen", metricCost, anomSpikeAt, 1_000_000, 50_000, 190, 50})
	})

	t.Run("key and key x service scopes", func(t *testing.T) {
		// Service b: 30 -> 150, scale max(1, 3) = 3: 40. The key: 60 -> 180, scale 6: 20.
		svc := anomRow{"key_multi", "b", metricRequests, anomSpikeAt, 150, 30, 40, 150}
		key := anomRow{"key_multi", "", metricRequests, anomSpikeAt, 180, 60, 20, 180}
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_multi", Baseline: twoHours}), svc, key)
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_multi", Baseline: twoHours,
			Scope: keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY_SERVICE}), svc)
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_multi", Baseline: twoHours,
			Scope: keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY}), key)
		// A single-service key in the key scope alone is reported without its service.
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_spike", Scope: keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY}),
			anomRow{"key_spike", "", metricRequests, anomSpikeAt, 231, 21, 100, 231})
	})

	t.Run("metrics, sensitivity and min_requests filter", func(t *testing.T) {
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_cost", Baseline: twoHours,
			Metrics: []keytrailv1.AnomalyMetric{metricRequests, metricErrorRate}}))
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_errors", Baseline: twoHours, Sensitivity: 19.5}))
		wantAnomalies(t, list(t, &keytrailv1.ListAnomaliesRequest{KeyId: "key_cost", Baseline: twoHours, MinRequests: 51}))
	})

	t.Run("window matches the reference implementation", func(t *testing.T) {
		got := list(t, &keytrailv1.ListAnomaliesRequest{})
		want := referenceAnomalies(anomFixture(), 288, anomaly.DefaultSensitivity, anomaly.DefaultMinRequests)
		// Sanity: the default scan finds the spike, the bursty keys' errors and cost, and
		// nothing for the steady and young keys.
		if len(want) < 4 {
			t.Fatalf("reference found only %+v", want)
		}
		wantAnomalies(t, got, want...)
		for _, r := range anomRows(got) {
			t.Logf("%+v", r)
		}
	})

	// The scan reads the 5-minute series of the keys with an hour of at least min_requests
	// only: at every threshold, including the spike's own count (231) and one above it, the
	// answer must still be the reference's.
	t.Run("candidate search loses nothing at any min_requests", func(t *testing.T) {
		for _, minRequests := range []int{1, 20, 100, 230, 231, 232} {
			got := list(t, &keytrailv1.ListAnomaliesRequest{MinRequests: int64(minRequests)})
			want := referenceAnomalies(anomFixture(), 288, anomaly.DefaultSensitivity, minRequests)
			t.Logf("min_requests %d: %d anomalies", minRequests, len(want))
			wantAnomalies(t, got, want...)
		}
	})

	t.Run("REST", func(t *testing.T) {
		status, body := srv.Get(t, "/v1/anomalies", url.Values{"key_id": {"key_spike"}}, srv.AdminToken)
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		var resp struct {
			Anomalies []map[string]any `json:"anomalies"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		if len(resp.Anomalies) != 1 {
			t.Fatalf("body %s", body)
		}
		a := resp.Anomalies[0]
		for field, want := range map[string]any{
			"key_id": "key_spike", "service": "billing", "metric": "ANOMALY_METRIC_REQUESTS",
			"bucket_start": "2026-03-10T11:30:00Z", "bucket_width": "300s",
			"observed": 231.0, "expected": 21.0, "score": 100.0, "requests": "231",
		} {
			if a[field] != want {
				t.Errorf("%s = %v, want %v (%s)", field, a[field], want, body)
			}
		}
		// Durations, enums and repeated enums as query parameters.
		status, body = srv.Get(t, "/v1/anomalies", url.Values{"key_id": {"key_multi"}, "baseline": {"7200s"},
			"scope": {"ANOMALY_SCOPE_KEY_SERVICE"}, "metrics": {"ANOMALY_METRIC_REQUESTS", "ANOMALY_METRIC_COST"}, "sensitivity": {"4"}}, srv.AdminToken)
		resp.Anomalies = nil
		if err := json.Unmarshal(body, &resp); status != http.StatusOK || err != nil || len(resp.Anomalies) != 1 || resp.Anomalies[0]["service"] != "b" {
			t.Errorf("status %d: %s", status, body)
		}
	})

	t.Run("invalid input names the field", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			req   *keytrailv1.ListAnomaliesRequest
			field string
		}{
			{"negative sensitivity", &keytrailv1.ListAnomaliesRequest{Sensitivity: -1}, "sensitivity"},
			{"sensitivity too high", &keytrailv1.ListAnomaliesRequest{Sensitivity: 101}, "sensitivity"},
			{"baseline too long", &keytrailv1.ListAnomaliesRequest{Baseline: durationpb.New(8 * 24 * time.Hour)}, "baseline"},
			{"baseline too short", &keytrailv1.ListAnomaliesRequest{Baseline: durationpb.New(30 * time.Minute)}, "baseline"},
			{"baseline not whole buckets", &keytrailv1.ListAnomaliesRequest{Baseline: durationpb.New(2*time.Hour + time.Minute)}, "baseline"},
			{"negative min_requests", &keytrailv1.ListAnomaliesRequest{MinRequests: -1}, "min_requests"},
			{"unspecified metric", &keytrailv1.ListAnomaliesRequest{Metrics: []keytrailv1.AnomalyMetric{0}}, "metrics"},
			{"repeated metric", &keytrailv1.ListAnomaliesRequest{Metrics: []keytrailv1.AnomalyMetric{metricCost, metricCost}}, "metrics"},
			{"unknown scope", &keytrailv1.ListAnomaliesRequest{Scope: 7}, "scope"},
			{"end before start", &keytrailv1.ListAnomaliesRequest{StartTime: timestamppb.New(anomNow), EndTime: timestamppb.New(anomFirst)}, "end_time"},
			{"examined range too long", &keytrailv1.ListAnomaliesRequest{StartTime: timestamppb.New(anomNow.Add(-8 * 24 * time.Hour))}, "start_time"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := srv.Client.ListAnomalies(ctx, tc.req)
				spendWantInvalid(t, err, tc.field)
			})
		}
		status, body := srv.Get(t, "/v1/anomalies", url.Values{"sensitivity": {"-3"}}, srv.AdminToken)
		if status != http.StatusBadRequest || !json.Valid(body) {
			t.Errorf("REST bad sensitivity: %d %s", status, body)
		}
	})

	t.Run("a project reader sees its project only", func(t *testing.T) {
		resp, err := srv.Client.ListAnomalies(apitest.WithToken(ctx, "ktk_beta_reader"), &keytrailv1.ListAnomaliesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		wantAnomalies(t, resp.GetAnomalies())
	})
}

// referenceAnomalies computes what the scan must return for the fixture with the pure Go
// reference (package anomaly), independently of the SQL: both scopes, single-service keys
// folded, flagged buckets of the default window, sorted as the API sorts.
func referenceAnomalies(series []anomSeries, baselineBuckets int, sensitivity float64, minRequests int) []anomRow {
	byKey := map[string][]anomSeries{}
	for _, s := range series {
		byKey[s.key] = append(byKey[s.key], s)
	}
	baseStart := anomFirst.Add(-time.Duration(baselineBuckets) * anomaly.BucketWidth)
	var out []anomaly.Anomaly
	evaluate := func(key, service string, loads map[time.Time]load) {
		var reqs, costs, rates []float64
		var sumCost, sumReq float64
		for b := baseStart; b.Before(anomFirst); b = b.Add(anomaly.BucketWidth) {
			l, ok := loads[b]
			if !ok {
				continue
			}
			reqs = append(reqs, float64(l.requests))
			costs = append(costs, float64(int64(l.requests)*l.costEach))
			rates = append(rates, float64(l.errors)/float64(l.requests))
			sumCost += float64(int64(l.requests) * l.costEach)
			sumReq += float64(l.requests)
		}
		if len(reqs) < anomaly.MinHistoryBuckets {
			return
		}
		rb, cb, eb := anomaly.CountBaseline(reqs, baselineBuckets), anomaly.CountBaseline(costs, baselineBuckets), anomaly.RateBaseline(rates)
		for _, b := range anomExamined {
			l, ok := loads[b]
			if !ok || l.requests < minRequests {
				continue
			}
			add := func(m keytrailv1.AnomalyMetric, observed, median, scale float64) {
				if s := anomaly.Score(observed, median, scale); s >= sensitivity {
					out = append(out, anomaly.Anomaly{KeyID: key, Service: service, Metric: m, Bucket: b, Observed: observed,
						Expected: median, Score: anomaly.RoundScore(s), Requests: int64(l.requests)})
				}
			}
			rate := float64(l.errors) / float64(l.requests)
			add(metricRequests, float64(l.requests), rb.Median, anomaly.RequestsScale(rb))
			add(metricErrorRate, rate, eb.Median, anomaly.RateScale(eb, int64(l.requests)))
			add(metricCost, float64(int64(l.requests)*l.costEach), cb.Median, anomaly.CostScale(cb, anomaly.UnitCost(sumCost, sumReq)))
		}
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ss := byKey[k]
		if len(ss) == 1 {
			evaluate(k, ss[0].service, ss[0].loads)
			continue
		}
		total := map[time.Time]load{}
		for _, s := range ss {
			for b, l := range s.loads {
				t := total[b]
				t.requests += l.requests
				t.errors += l.errors
				total[b] = t
			}
			evaluate(k, s.service, s.loads)
		}
		evaluate(k, "", total) // the fixture's multi-service key has no cost
	}
	anomaly.SortAnomalies(out)
	rows := make([]anomRow, len(out))
	for i, a := range out {
		rows[i] = anomRow{a.KeyID, a.Service, a.Metric, a.Bucket, a.Observed, a.Expected, a.Score, a.Requests}
	}
	return rows
}

func TestNewCallers(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	at := func(d time.Duration) time.Time { return anomNow.Add(d) }
	n := 0
	use := func(project, key, service, ip string, t time.Time) *keytrailv1.UsageEvent {
		n++
		return &keytrailv1.UsageEvent{EventId: fmt.Sprintf("nc%d", n), Time: timestamppb.New(t), Project: project, KeyId: key,
			Service: service, ClientIp: ip, StatusCode: 200}
	}
	testenv.Insert(t, db,
		// An old key: billing from 10.0.0.1 since 30 h ago ...
		use("beta", "key_old", "billing", "10.0.0.1", at(-30*time.Hour+125*time.Millisecond)),
		use("beta", "key_old", "billing", "10.0.0.1", at(-3*time.Hour)),
		// ... then a new service from the known IP, and the known service from a new IP.
		use("beta", "key_old", "reports", "10.0.0.1", at(-2*time.Hour+500*time.Millisecond)),
		use("beta", "key_old", "billing", "203.0.113.9", at(-time.Hour+250*time.Millisecond)),
		use("beta", "key_old", "billing", "203.0.113.9", at(-50*time.Minute)),
		use("beta", "key_old", "billing", "203.0.113.9", at(-40*time.Minute+1*time.Millisecond)),
		// A new key: its first service and IP are new callers too, with key_first_seen equal
		// to their first use.
		use("beta", "key_fresh", "svc-x", "10.0.0.2", at(-3*time.Hour)),
		use("beta", "key_fresh", "svc-x", "", at(-20*time.Minute)),
		// Another project.
		use("gamma", "key_g", "svc-g", "10.9.9.9", at(-time.Hour)),
	)
	srv := apitest.Start(t, db, apitest.Options{
		Now:    func() time.Time { return anomNow },
		Tokens: map[string]auth.Entry{"ktk_beta_reader": {Name: "beta-reader", Role: auth.RoleProjectReader, Projects: []string{"beta"}}},
	})
	ctx := context.Background()
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(at(d)) }
	service, ip := keytrailv1.CallerKind_CALLER_KIND_SERVICE, keytrailv1.CallerKind_CALLER_KIND_CLIENT_IP
	newIP := &keytrailv1.NewCaller{Project: "beta", KeyId: "key_old", Kind: ip, Caller: "203.0.113.9",
		FirstSeen: ts(-time.Hour + 250*time.Millisecond), LastSeen: ts(-40*time.Minute + time.Millisecond), Requests: 3, KeyFirstSeen: ts(-30*time.Hour + 125*time.Millisecond)}
	newService := &keytrailv1.NewCaller{Project: "beta", KeyId: "key_old", Kind: service, Caller: "reports",
		FirstSeen: ts(-2*time.Hour + 500*time.Millisecond), LastSeen: ts(-2*time.Hour + 500*time.Millisecond), Requests: 1, KeyFirstSeen: ts(-30*time.Hour + 125*time.Millisecond)}
	freshService := &keytrailv1.NewCaller{Project: "beta", KeyId: "key_fresh", Kind: service, Caller: "svc-x",
		FirstSeen: ts(-3 * time.Hour), LastSeen: ts(-20 * time.Minute), Requests: 2, KeyFirstSeen: ts(-3 * time.Hour)}
	freshIP := &keytrailv1.NewCaller{Project: "beta", KeyId: "key_fresh", Kind: ip, Caller: "10.0.0.2",
		FirstSeen: ts(-3 * time.Hour), LastSeen: ts(-3 * time.Hour), Requests: 1, KeyFirstSeen: ts(-3 * time.Hour)}
	gamma := &keytrailv1.NewCaller{Project: "gamma", KeyId: "key_g", Kind: service, Caller: "svc-g",
		FirstSeen: ts(-time.Hour), LastSeen: ts(-time.Hour), Requests: 1, KeyFirstSeen: ts(-time.Hour)}
	gammaIP := &keytrailv1.NewCaller{Project: "gamma", KeyId: "key_g", Kind: ip, Caller: "10.9.9.9",
		FirstSeen: ts(-time.Hour), LastSeen: ts(-time.Hour), Requests: 1, KeyFirstSeen: ts(-time.Hour)}

	for _, tc := range []struct {
		name string
		ctx  context.Context
		req  *keytrailv1.ListNewCallersRequest
		want []*keytrailv1.NewCaller
	}{
		// Newest first; ties by project, key, kind (service first), caller.
		{"project, default last 24 h", ctx, &keytrailv1.ListNewCallersRequest{Project: "beta"}, []*keytrailv1.NewCaller{newIP, newService, freshService, freshIP}},
		{"everything", ctx, &keytrailv1.ListNewCallersRequest{}, []*keytrailv1.NewCaller{newIP, gamma, gammaIP, newService, freshService, freshIP}},
		{"one key", ctx, &keytrailv1.ListNewCallersRequest{KeyId: "key_old"}, []*keytrailv1.NewCaller{newIP, newService}},
		// The range is half-open and exact to the millisecond: reports' first use at
		// 10:00:00.500 is in, the new IP's at 11:00:00.250 is out, gamma's at 11:00 is in.
		{"range", ctx, &keytrailv1.ListNewCallersRequest{StartTime: ts(-2*time.Hour + 500*time.Millisecond), EndTime: ts(-time.Hour + 250*time.Millisecond)},
			[]*keytrailv1.NewCaller{gamma, gammaIP, newService}},
		{"a week: the old key's first callers too", ctx, &keytrailv1.ListNewCallersRequest{KeyId: "key_old", StartTime: ts(-7 * 24 * time.Hour)},
			[]*keytrailv1.NewCaller{newIP, newService,
				{Project: "beta", KeyId: "key_old", Kind: service, Caller: "billing", FirstSeen: ts(-30*time.Hour + 125*time.Millisecond),
					LastSeen: ts(-40*time.Minute + time.Millisecond), Requests: 5, KeyFirstSeen: ts(-30*time.Hour + 125*time.Millisecond)},
				{Project: "beta", KeyId: "key_old", Kind: ip, Caller: "10.0.0.1", FirstSeen: ts(-30*time.Hour + 125*time.Millisecond),
					LastSeen: ts(-2*time.Hour + 500*time.Millisecond), Requests: 3, KeyFirstSeen: ts(-30*time.Hour + 125*time.Millisecond)},
			}},
		{"project reader without a project filter", apitest.WithToken(ctx, "ktk_beta_reader"), &keytrailv1.ListNewCallersRequest{},
			[]*keytrailv1.NewCaller{newIP, newService, freshService, freshIP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := srv.Client.ListNewCallers(tc.ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			spendWantProto(t, "new callers", resp, &keytrailv1.ListNewCallersResponse{Callers: tc.want})
		})
	}

	t.Run("a project reader may not name another project", func(t *testing.T) {
		_, err := srv.Client.ListNewCallers(apitest.WithToken(ctx, "ktk_beta_reader"), &keytrailv1.ListNewCallersRequest{Project: "gamma"})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("error %v, want PermissionDenied", err)
		}
	})
	t.Run("invalid range", func(t *testing.T) {
		_, err := srv.Client.ListNewCallers(ctx, &keytrailv1.ListNewCallersRequest{StartTime: ts(0), EndTime: ts(-time.Hour)})
		spendWantInvalid(t, err, "end_time")
	})
	t.Run("REST", func(t *testing.T) {
		code, body := srv.Get(t, "/v1/new-callers", url.Values{"project": {"beta"}, "key_id": {"key_old"}, "start_time": {"2026-03-10T10:30:00Z"}}, srv.AdminToken)
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, body)
		}
		var resp struct {
			Callers []map[string]any `json:"callers"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Fatal(err)
		}
		if len(resp.Callers) != 1 || resp.Callers[0]["caller"] != "203.0.113.9" || resp.Callers[0]["kind"] != "CALLER_KIND_CLIENT_IP" ||
			resp.Callers[0]["first_seen"] != "2026-03-10T11:00:00.250Z" || resp.Callers[0]["key_first_seen"] != "2026-03-09T06:00:00.125Z" ||
			resp.Callers[0]["requests"] != "3" {
			t.Errorf("body %s", body)
		}
	})
}

// A SummingMergeTree keeps one row per part until parts merge, so a bucket can have several
// rows; the scan must add them up. Each Insert below is its own part.
func TestAnomaliesSumRowsAcrossParts(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	half := func(from, to time.Time, n int) []anomSeries {
		return []anomSeries{{"acme", "key_parts", "api", buckets(from, to, func(int, time.Time) load { return load{requests: n} })}}
	}
	// 2 h of 50 requests a bucket, written as two halves of 25; the examined hour likewise.
	testenv.Insert(t, db, anomEvents(half(anomBase2h, anomNow, 25))...)
	more := anomEvents(half(anomBase2h, anomNow, 25))
	for i, e := range more {
		e.(*keytrailv1.UsageEvent).EventId = fmt.Sprintf("b%d", i)
	}
	testenv.Insert(t, db, more...)
	// 11:30 gets 100 more in two further inserts: 150 in total.
	for _, id := range []string{"c", "d"} {
		evs := anomEvents([]anomSeries{{"acme", "key_parts", "api", map[time.Time]load{anomSpikeAt: {requests: 50}}}})
		for i, e := range evs {
			e.(*keytrailv1.UsageEvent).EventId = fmt.Sprintf("%s%d", id, i)
		}
		testenv.Insert(t, db, evs...)
	}
	srv := apitest.Start(t, db, apitest.Options{Now: func() time.Time { return anomNow }})
	resp, err := srv.Client.ListAnomalies(context.Background(), &keytrailv1.ListAnomaliesRequest{Baseline: durationpb.New(2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	// median 50, MAD 0, scale max(1, 5) = 5: (150 - 50) / 5 = 20.
	wantAnomalies(t, resp.GetAnomalies(), anomRow{"key_parts", "api", metricRequests, anomSpikeAt, 150, 50, 20, 150})
	if parts := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'usage_key_5min' AND active"); parts < 2 {
		t.Logf("only %d active usage_key_5min parts: merged before the scan", parts)
	}
}
