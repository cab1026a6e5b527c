package alerting

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/chreader"
)

// The scenario: key_a (project acme, service api) makes 60 requests every 5 minutes from
// 08:00; at 11:00 and 11:05 it makes 600 (one episode of two buckets), at 11:25 600 again (a
// second episode). With a 2 h baseline: median 60, MAD 0, scale max(1, 6) = 6, score
// (600 - 60) / 6 = 90.
var (
	alT0     = time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC)
	alFrom   = alT0.Add(-3 * time.Hour)
	alSecond = alT0.Add(25 * time.Minute)
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }

type alertEnv struct {
	db     *testenv.Database
	js     *testenv.JetStream
	reader *chreader.Reader
	clock  *clock
	n      int
	queued []any
}

func newAlertEnv(t *testing.T) *alertEnv {
	t.Helper()
	env := &alertEnv{db: testenv.ClickHouse(t), js: testenv.NewJetStream(t, broker.DefaultStreamConfig()), clock: &clock{}}
	env.reader = chreader.NewReader(env.db.Conn, env.clock.Now)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnsureStream(ctx, env.js.JS, "keytrail"); err != nil {
		t.Fatal(err)
	}
	return env
}

// traffic queues n requests of key/service/ip in the bucket starting at b; store writes
// what is queued in one insert.
func (env *alertEnv) traffic(key, service, ip string, b time.Time, n int) {
	step := anomaly.BucketWidth / time.Duration(n+1)
	for i := range n {
		env.n++
		env.queued = append(env.queued, &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("e%d", env.n), Time: timestamppb.New(b.Add(time.Duration(i+1) * step)),
			Project: "acme", KeyId: key, Service: service, ClientIp: ip, StatusCode: 200,
		})
	}
}

func (env *alertEnv) store(t *testing.T) {
	t.Helper()
	testenv.Insert(t, env.db, env.queued...)
	env.queued = nil
}

func (env *alertEnv) evaluator(t *testing.T, webhookURL string, reg prometheus.Registerer) *Evaluator {
	t.Helper()
	e, err := New(Config{
		Source: env.reader, JetStream: env.js.JS, Prefix: "keytrail",
		Baseline: 2 * time.Hour, NewCallers: NewCallersOff,
		WebhookURL: webhookURL, WebhookBackoff: 10 * time.Millisecond,
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: env.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// alerts reads every message of the alerts stream.
func (env *alertEnv) alerts(t *testing.T) []jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := env.js.JS.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *m)
	}
	return out
}

func evaluate(t *testing.T, e *Evaluator) {
	t.Helper()
	if err := e.Evaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// webhookServer counts POSTs and keeps their bodies.
type webhookServer struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newWebhookServer(t *testing.T) *webhookServer {
	w := &webhookServer{}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.mu.Lock()
		w.bodies = append(w.bodies, string(b))
		w.mu.Unlock()
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *webhookServer) posts() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.bodies...)
}

// runWebhook runs the evaluator's webhook worker until the test ends.
func runWebhook(t *testing.T, e *Evaluator) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.webhook.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestEvaluatorOneAlertPerEpisode(t *testing.T) {
	t.Parallel()
	env := newAlertEnv(t)
	for b := alFrom; b.Before(alT0.Add(time.Hour)); b = b.Add(anomaly.BucketWidth) {
		n := 60
		if b.Equal(alT0) || b.Equal(alT0.Add(5*time.Minute)) {
			n = 600
		}
		env.traffic("key_a", "api", "", b, n)
	}
	env.store(t)
	hook := newWebhookServer(t)
	reg := prometheus.NewRegistry()
	e := env.evaluator(t, hook.URL, reg)
	runWebhook(t, e)

	// Run 1 at 11:09: the episode (11:00, 11:05) is new.
	env.clock.Set(alT0.Add(9 * time.Minute))
	evaluate(t, e)
	msgs := env.alerts(t)
	if len(msgs) != 1 {
		t.Fatalf("%d alerts after run 1, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Subject != "keytrail.alerts.acme" || m.Header.Get("Content-Type") != "application/protobuf" || m.Header.Get(KindHeader) != KindAnomaly {
		t.Errorf("message %s %v", m.Subject, m.Header)
	}
	var alert keytrailv1.AlertEvent
	if err := proto.Unmarshal(m.Data, &alert); err != nil {
		t.Fatal(err)
	}
	series := anomaly.Series{Project: "acme", KeyID: "key_a", Service: "api", Metric: keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS}
	wantID := anomaly.AlertID(series, alT0)
	an := alert.GetAnomaly()
	if alert.GetAlertId() != wantID || m.Header.Get("Nats-Msg-Id") != wantID || !alert.GetRaisedAt().AsTime().Equal(alT0.Add(9*time.Minute)) ||
		an.GetKeyId() != "key_a" || an.GetService() != "api" || !an.GetBucketStart().AsTime().Equal(alT0) ||
		an.GetObserved() != 600 || an.GetExpected() != 60 || an.GetScore() != 90 || an.GetRequests() != 600 {
		t.Errorf("alert %v (want id %s)", protojson.Format(&alert), wantID)
	}

	// Runs 2 and 3 at 11:10 and 11:14: same episode, nothing new.
	for _, at := range []time.Duration{10 * time.Minute, 14 * time.Minute} {
		env.clock.Set(alT0.Add(at))
		evaluate(t, e)
	}
	if n := len(env.alerts(t)); n != 1 {
		t.Fatalf("%d alerts after 3 runs, want 1", n)
	}

	// A restart without reading back: the episode is derived again with the same id and
	// JetStream drops it; the new process does not call the webhook for it.
	reg2 := prometheus.NewRegistry()
	e2 := env.evaluator(t, hook.URL, reg2)
	runWebhook(t, e2)
	evaluate(t, e2)
	if n := len(env.alerts(t)); n != 1 {
		t.Fatalf("%d alerts after a restart, want 1", n)
	}
	if got := value(e2.metrics.duplicates.WithLabelValues(KindAnomaly)); got != 1 {
		t.Errorf("duplicates after restart %g, want 1", got)
	}

	// A restart that reads back: it knows the episode and does not even publish.
	e3 := env.evaluator(t, "", nil)
	if err := e3.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e3.episodes.Open() != 1 {
		t.Fatalf("read back %d episodes, want 1", e3.episodes.Open())
	}
	evaluate(t, e3)
	if got := value(e3.metrics.raised.WithLabelValues(KindAnomaly)); got != 0 {
		t.Errorf("raised after read-back %g, want 0", got)
	}

	// A second spike at 11:25, not adjacent: a second episode, a second alert.
	env.traffic("key_a", "api", "", alSecond, 540)
	env.store(t)
	env.clock.Set(alSecond.Add(3 * time.Minute))
	evaluate(t, e)
	msgs = env.alerts(t)
	if len(msgs) != 2 || msgs[1].Header.Get("Nats-Msg-Id") != anomaly.AlertID(series, alSecond) {
		t.Fatalf("alerts %d, want 2, the second for 11:25", len(msgs))
	}

	// Exactly one POST per episode, from the process that stored it.
	testenv.Eventually(t, 5*time.Second, func() error {
		if n := len(hook.posts()); n != 2 {
			return fmt.Errorf("%d webhook posts", n)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond) // nothing more may arrive
	posts := hook.posts()
	if len(posts) != 2 || !strings.Contains(posts[0], `"alert_id":"`+wantID+`"`) || !strings.Contains(posts[1], anomaly.AlertID(series, alSecond)) {
		t.Errorf("webhook posts %q", posts)
	}
	var fromHook keytrailv1.AlertEvent
	if err := protojson.Unmarshal([]byte(posts[0]), &fromHook); err != nil || !proto.Equal(&fromHook, &alert) {
		t.Errorf("webhook body %s (%v), want the published alert", posts[0], err)
	}
	for name, want := range map[string]float64{
		"keytrail_alerts_raised_total":            2,
		"keytrail_alerts_published_total":         2,
		"keytrail_alerts_webhook_delivered_total": 2,
		"keytrail_alerts_webhook_failures_total":  0,
		"keytrail_alerts_publish_errors_total":    0,
		"keytrail_alerts_duplicates_total":        0,
		"keytrail_alerts_scan_duration_seconds":   -1, // present
		"keytrail_alerts_open_episodes":           1,
		"keytrail_alerts_scan_errors_total":       0,
	} {
		got, err := gathered(reg, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if want >= 0 && got != want {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}
}

// value reads a counter or gauge.
func value(m prometheus.Metric) float64 {
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		return -1
	}
	if c := out.GetCounter(); c != nil {
		return c.GetValue()
	}
	return out.GetGauge().GetValue()
}

// gathered sums a metric family's counters or gauges (-1 for a histogram).
func gathered(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			default:
				return -1, nil
			}
		}
		return sum, nil
	}
	// Vectors without a child yet are not gathered: zero.
	return 0, nil
}

func TestEvaluatorNewCallers(t *testing.T) {
	t.Parallel()
	env := newAlertEnv(t)
	// key_old in use since 08:00 by api from 10.0.0.1; at 11:02 a new service, at 11:03 a
	// new IP. key_new is first used at 11:01 by two services: its roll-out, no alert.
	env.traffic("key_old", "api", "10.0.0.1", alFrom, 3)
	env.traffic("key_old", "cron", "10.0.0.1", alT0.Add(2*time.Minute), 2)
	env.traffic("key_old", "api", "198.51.100.7", alT0.Add(3*time.Minute), 1)
	env.traffic("key_new", "web", "10.0.0.5", alT0.Add(time.Minute), 1)
	env.traffic("key_new", "worker", "10.0.0.6", alT0.Add(90*time.Second), 1)
	env.store(t)

	e, err := New(Config{Source: env.reader, JetStream: env.js.JS, Prefix: "keytrail", Baseline: 2 * time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: env.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Duration{5 * time.Minute, 6 * time.Minute, 20 * time.Minute} {
		env.clock.Set(alT0.Add(at))
		evaluate(t, e)
	}
	var got []string
	for _, m := range env.alerts(t) {
		var a keytrailv1.AlertEvent
		if err := proto.Unmarshal(m.Data, &a); err != nil {
			t.Fatal(err)
		}
		c := a.GetNewCaller()
		got = append(got, fmt.Sprintf("%s %s %s %s", m.Header.Get(KindHeader), c.GetKeyId(), c.GetKind(), c.GetCaller()))
		if m.Header.Get("Nats-Msg-Id") != anomaly.NewCallerAlertID("acme", c.GetKeyId(), c.GetKind(), c.GetCaller()) {
			t.Errorf("message id %s", m.Header.Get("Nats-Msg-Id"))
		}
	}
	want := []string{
		"new_caller key_old CALLER_KIND_SERVICE cron",
		"new_caller key_old CALLER_KIND_CLIENT_IP 198.51.100.7",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("alerts %q\nwant   %q", got, want)
	}

	// Services only: a new IP raises nothing.
	env2 := newAlertEnv(t)
	env2.traffic("key_old", "api", "10.0.0.1", alFrom, 1)
	env2.traffic("key_old", "api", "198.51.100.7", alT0, 1)
	env2.store(t)
	e2, err := New(Config{Source: env2.reader, JetStream: env2.js.JS, Prefix: "keytrail", NewCallers: NewCallersServices,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: env2.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	env2.clock.Set(alT0.Add(time.Minute))
	evaluate(t, e2)
	if n := len(env2.alerts(t)); n != 0 {
		t.Errorf("%d alerts for a new IP with services-only, want 0", n)
	}
}

func TestWebhookDelivery(t *testing.T) {
	t.Parallel()
	alert := &keytrailv1.AlertEvent{AlertId: "anomaly-x", RaisedAt: timestamppb.New(alT0),
		Subject: &keytrailv1.AlertEvent_Anomaly{Anomaly: &keytrailv1.Anomaly{Project: "acme", KeyId: "key_a", BucketStart: timestamppb.New(alT0)}}}
	newHook := func(url string, format WebhookFormat) *webhook {
		return &webhook{url: url, format: format, client: &http.Client{}, timeout: time.Second, attempts: 3, backoff: time.Millisecond,
			queue: make(chan delivery, 1), metrics: NewMetrics(nil), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	t.Run("retries 503 then succeeds", func(t *testing.T) {
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if calls.Add(1) < 3 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}))
		defer srv.Close()
		h := newHook(srv.URL, WebhookProtoJSON)
		h.deliver(context.Background(), alert)
		if calls.Load() != 3 || value(h.metrics.webhookSent) != 1 {
			t.Errorf("%d calls, delivered %g", calls.Load(), value(h.metrics.webhookSent))
		}
	})
	t.Run("a 400 is not retried", func(t *testing.T) {
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			calls.Add(1)
			w.WriteHeader(http.StatusBadRequest)
		}))
		defer srv.Close()
		h := newHook(srv.URL, WebhookProtoJSON)
		h.deliver(context.Background(), alert)
		if calls.Load() != 1 || value(h.metrics.webhookFailures.WithLabelValues("rejected")) != 1 {
			t.Errorf("%d calls", calls.Load())
		}
	})
	t.Run("a dead endpoint is given up after the attempts", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		h := newHook(url, WebhookProtoJSON)
		h.deliver(context.Background(), alert)
		if value(h.metrics.webhookFailures.WithLabelValues("exhausted")) != 1 {
			t.Error("not counted as exhausted")
		}
	})
	t.Run("a full queue drops and counts, never blocks", func(t *testing.T) {
		h := newHook("http://127.0.0.1:1", WebhookProtoJSON)
		h.enqueue(alert)
		h.enqueue(alert) // capacity 1, no worker
		if value(h.metrics.webhookFailures.WithLabelValues("queue_full")) != 1 {
			t.Error("not counted as queue_full")
		}
	})
	t.Run("alertmanager format", func(t *testing.T) {
		var body string
		srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			body = string(b)
		}))
		defer srv.Close()
		newHook(srv.URL, WebhookAlertmanager).deliver(context.Background(), alert)
		for _, want := range []string{`"alertname":"KeytrailAnomaly"`, `"alert_id":"anomaly-x"`, `"key_id":"key_a"`, `"startsAt":"2026-03-10T11:00:00Z"`} {
			if !strings.Contains(body, want) {
				t.Errorf("body %s lacks %s", body, want)
			}
		}
	})
}

func TestEnsureStream(t *testing.T) {
	t.Parallel()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	ctx := context.Background()
	for range 2 { // idempotent
		if err := EnsureStream(ctx, js.JS, "kt"); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.JS.Stream(ctx, StreamName)
	if err != nil {
		t.Fatal(err)
	}
	c := s.CachedInfo().Config
	if len(c.Subjects) != 1 || c.Subjects[0] != "kt.alerts.>" || c.Storage != jetstream.FileStorage || c.Retention != jetstream.LimitsPolicy ||
		c.MaxAge != 30*24*time.Hour || c.Duplicates != 24*time.Hour || c.Duplicates < 2*DefaultWindow {
		t.Errorf("stream config %+v", c)
	}
	if got := Subject("kt", "a.b c"); got != "kt.alerts.a_b_c" {
		t.Errorf("subject %q", got)
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{Prefix: "a.*", Window: 24 * time.Hour, Interval: time.Millisecond, Sensitivity: -1, NewCallers: "some",
		WebhookURL: "ftp://x", WebhookFormat: "xml"}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"source", "jetstream", "prefix", "interval", "window", "sensitivity", "new callers", "webhook url", "webhook format"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// Fault: the alerts stream is missing for the first run (publishes fail). Load: one spike
// episode. Expected: run 1 returns the publish error and stores nothing; after the stream is
// created, run 2 publishes the same episode under the same id: exactly 1 alert, 1 publish
// error, 1 published.
func TestEvaluatorRetriesFailedPublish(t *testing.T) {
	t.Parallel()
	env := &alertEnv{db: testenv.ClickHouse(t), js: testenv.NewJetStream(t, broker.DefaultStreamConfig()), clock: &clock{}}
	env.reader = chreader.NewReader(env.db.Conn, env.clock.Now)
	for b := alFrom; b.Before(alT0.Add(10 * time.Minute)); b = b.Add(anomaly.BucketWidth) {
		n := 60
		if b.Equal(alT0) {
			n = 600
		}
		env.traffic("key_a", "api", "", b, n)
	}
	env.store(t)
	e := env.evaluator(t, "", nil)
	e.cfg.PublishTimeout = time.Second
	env.clock.Set(alT0.Add(4 * time.Minute))
	if err := e.Evaluate(context.Background()); err == nil {
		t.Fatal("run 1 succeeded without an alerts stream")
	}
	if err := EnsureStream(context.Background(), env.js.JS, "keytrail"); err != nil {
		t.Fatal(err)
	}
	env.clock.Set(alT0.Add(5 * time.Minute))
	evaluate(t, e)
	msgs := env.alerts(t)
	series := anomaly.Series{Project: "acme", KeyID: "key_a", Service: "api", Metric: keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS}
	if len(msgs) != 1 || msgs[0].Header.Get("Nats-Msg-Id") != anomaly.AlertID(series, alT0) {
		t.Fatalf("%d alerts, want 1 for the 11:00 episode", len(msgs))
	}
	if got := value(e.metrics.publishErrors); got != 1 {
		t.Errorf("publish errors %g, want 1", got)
	}
	if got := value(e.metrics.published.WithLabelValues(KindAnomaly)); got != 1 {
		t.Errorf("published %g, want 1", got)
	}
}
