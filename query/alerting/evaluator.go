package alerting

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/chreader"
)

// Source is what the evaluator scans; *chreader.Reader implements it.
type Source interface {
	Anomalies(ctx context.Context, req chreader.AnomalyRequest) (chreader.AnomalyResult, error)
	NewCallers(ctx context.Context, req chreader.NewCallersRequest) (chreader.NewCallersResult, error)
}

// NewCallerMode says which new callers raise alerts.
type NewCallerMode string

const (
	// NewCallersAll alerts on new services and new client IPs of established keys.
	NewCallersAll NewCallerMode = "all"
	// NewCallersServices alerts on new services only (client IPs churn with autoscaling).
	NewCallersServices NewCallerMode = "services"
	// NewCallersOff raises no new-caller alerts.
	NewCallersOff NewCallerMode = "off"
)

// Defaults.
const (
	DefaultInterval        = time.Minute
	DefaultWindow          = 30 * time.Minute
	DefaultNewKeyGrace     = time.Hour
	DefaultRestoreLookback = DefaultDuplicateWindow
	DefaultPublishTimeout  = 5 * time.Second
	DefaultWebhookTimeout  = 5 * time.Second
	DefaultWebhookAttempts = 4
	DefaultWebhookBackoff  = time.Second
	webhookQueueSize       = 256
)

// Config configures an Evaluator. Zero values take the defaults.
type Config struct {
	Source    Source
	JetStream jetstream.JetStream
	// Prefix is the subject prefix: alerts go to <Prefix>.alerts.<project>.
	Prefix string
	// Interval between evaluation runs (1m).
	Interval time.Duration
	// Window is the range each run scans (30m): it must cover ingestion delay plus the
	// interval, and at most half the stream's duplicate window.
	Window time.Duration
	// Anomaly parameters (as for /v1/anomalies; zero means the API's default).
	Sensitivity float64
	MinRequests int64
	Baseline    time.Duration
	// NewCallers selects the new-caller alerts (all).
	NewCallers NewCallerMode
	// NewKeyGrace: a caller whose first use is within this of the key's own first use is
	// part of the key's roll-out, not suspicious, and raises no alert (1h).
	NewKeyGrace time.Duration
	// RestoreLookback is how much of the alerts stream (by storage time) is read back into
	// memory at start (24h).
	RestoreLookback time.Duration
	PublishTimeout  time.Duration
	// WebhookURL, when set, also receives every published alert.
	WebhookURL      string
	WebhookFormat   WebhookFormat
	WebhookTimeout  time.Duration
	WebhookAttempts int
	WebhookBackoff  time.Duration
	HTTPClient      *http.Client
	// Registerer gets the metrics; nil skips registration.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now is the clock (time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Interval, DefaultInterval)
	def(&c.Window, DefaultWindow)
	def(&c.NewKeyGrace, DefaultNewKeyGrace)
	def(&c.RestoreLookback, DefaultRestoreLookback)
	def(&c.PublishTimeout, DefaultPublishTimeout)
	def(&c.WebhookTimeout, DefaultWebhookTimeout)
	def(&c.WebhookBackoff, DefaultWebhookBackoff)
	if c.WebhookAttempts == 0 {
		c.WebhookAttempts = DefaultWebhookAttempts
	}
	if c.NewCallers == "" {
		c.NewCallers = NewCallersAll
	}
	if c.WebhookFormat == "" {
		c.WebhookFormat = WebhookProtoJSON
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports every problem at once (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Source == nil {
		errs = append(errs, errors.New("alerting: source (query reader) is required"))
	}
	if c.JetStream == nil {
		errs = append(errs, errors.New("alerting: jetstream is required"))
	}
	if err := validPrefix(c.Prefix); err != nil {
		errs = append(errs, err)
	}
	if c.Interval < time.Second {
		errs = append(errs, fmt.Errorf("alerting: interval %s must be at least 1s", c.Interval))
	}
	if c.Window < anomaly.BucketWidth || c.Window < c.Interval {
		errs = append(errs, fmt.Errorf("alerting: window %s must be at least 5m and at least the interval", c.Window))
	}
	if 2*c.Window > DefaultDuplicateWindow {
		errs = append(errs, fmt.Errorf("alerting: window %s must be at most half the alerts stream's duplicate window (%s)", c.Window, DefaultDuplicateWindow))
	}
	if _, err := chreader.AnomalySpecFor(chreader.AnomalyRequest{
		Sensitivity: c.Sensitivity, MinRequests: c.MinRequests, Baseline: c.Baseline,
	}, time.Unix(0, 0).Add(anomaly.MaxBaseline)); err != nil {
		errs = append(errs, fmt.Errorf("alerting: %w", err))
	}
	switch c.NewCallers {
	case NewCallersAll, NewCallersServices, NewCallersOff:
	default:
		errs = append(errs, fmt.Errorf("alerting: new callers %q must be all, services or off", c.NewCallers))
	}
	if c.NewKeyGrace < 0 || c.RestoreLookback < 0 || c.PublishTimeout < 0 {
		errs = append(errs, errors.New("alerting: new key grace, restore lookback and publish timeout must not be negative"))
	}
	if c.WebhookURL != "" {
		if u, err := url.Parse(c.WebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("alerting: webhook url %q must be an absolute http(s) URL", c.WebhookURL))
		}
	}
	switch c.WebhookFormat {
	case WebhookProtoJSON, WebhookAlertmanager:
	default:
		errs = append(errs, fmt.Errorf("alerting: webhook format %q must be protojson or alertmanager", c.WebhookFormat))
	}
	if c.WebhookAttempts < 1 || c.WebhookTimeout < 0 || c.WebhookBackoff < 0 {
		errs = append(errs, errors.New("alerting: webhook attempts must be at least 1, timeout and backoff not negative"))
	}
	return errors.Join(errs...)
}

// Evaluator publishes each new anomaly episode and new caller once. Run it in one process of
// a deployment.
type Evaluator struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics
	webhook *webhook

	// Owned by the goroutine calling Run/Evaluate.
	episodes *anomaly.Tracker
	// callers is the new-caller alerts already published, by id, with the caller's first
	// use (forgotten once it leaves the window).
	callers map[string]time.Time
}

// New builds an evaluator.
func New(cfg Config) (*Evaluator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	e := &Evaluator{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "alerting"),
		metrics:  NewMetrics(cfg.Registerer),
		episodes: anomaly.NewTracker(),
		callers:  map[string]time.Time{},
	}
	if cfg.WebhookURL != "" {
		e.webhook = &webhook{
			url: cfg.WebhookURL, format: cfg.WebhookFormat, client: cfg.HTTPClient, timeout: cfg.WebhookTimeout,
			attempts: cfg.WebhookAttempts, backoff: cfg.WebhookBackoff, queue: make(chan delivery, webhookQueueSize),
			metrics: e.metrics, log: e.log,
		}
	}
	return e, nil
}

// Run reads recent alerts back into memory, then evaluates at once and on every tick until
// ctx ends. A failed run is logged and counted; the next tick tries again.
func (e *Evaluator) Run(ctx context.Context) error {
	if e.webhook != nil {
		done := make(chan struct{})
		go func() { defer close(done); e.webhook.run(ctx) }()
		defer func() { <-done }()
	}
	if err := e.Restore(ctx); err != nil {
		// Not fatal: the deterministic ids still stop repeats within the duplicate window.
		e.log.Warn("could not read recent alerts back; relying on the stream's duplicate window", "error", err)
	}
	ticker := time.NewTicker(e.cfg.Interval)
	defer ticker.Stop()
	for {
		if err := e.Evaluate(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("alert evaluation failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// Evaluate runs one evaluation: both scans, then the publishes. Webhook deliveries are
// queued for the worker Run starts.
func (e *Evaluator) Evaluate(ctx context.Context) error {
	start := time.Now()
	defer func() { e.metrics.scanDuration.Observe(time.Since(start).Seconds()) }()
	now := e.cfg.Now()
	var errs []error
	if err := e.evaluateAnomalies(ctx, now); err != nil {
		errs = append(errs, err)
	}
	if e.cfg.NewCallers != NewCallersOff {
		if err := e.evaluateNewCallers(ctx, now); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Evaluator) evaluateAnomalies(ctx context.Context, now time.Time) error {
	res, err := e.cfg.Source.Anomalies(ctx, chreader.AnomalyRequest{
		Start: now.Add(-e.cfg.Window), End: now,
		Sensitivity: e.cfg.Sensitivity, MinRequests: e.cfg.MinRequests, Baseline: e.cfg.Baseline,
	})
	if err != nil {
		e.metrics.scanErrors.Inc()
		return fmt.Errorf("scan anomalies: %w", err)
	}
	if res.Truncated {
		e.log.Warn("more anomalies than one scan returns; only the highest scores are alerted", "max", anomaly.MaxAnomalies)
	}
	var failed error
	for _, ep := range e.episodes.Observe(res.FirstBucket, res.Anomalies) {
		e.metrics.raised.WithLabelValues(KindAnomaly).Inc()
		if failed == nil {
			alert := &keytrailv1.AlertEvent{
				AlertId:  ep.ID,
				RaisedAt: timestamppb.New(now),
				Subject:  &keytrailv1.AlertEvent_Anomaly{Anomaly: ep.First.Proto()},
			}
			if failed = e.publish(ctx, KindAnomaly, ep.Series.Project, alert); failed == nil {
				continue
			}
		}
		// Not published (this one failed, or an earlier one did and NATS is likely down:
		// trying each with its own timeout would hold the scan up). Forget the episode so
		// the next scan derives it again and retries under the same id.
		e.episodes.Forget(ep.Series, ep.ID)
	}
	e.metrics.openEpisodes.Set(float64(e.episodes.Open()))
	return failed
}

func (e *Evaluator) evaluateNewCallers(ctx context.Context, now time.Time) error {
	res, err := e.cfg.Source.NewCallers(ctx, chreader.NewCallersRequest{Start: now.Add(-e.cfg.Window), End: now})
	if err != nil {
		e.metrics.scanErrors.Inc()
		return fmt.Errorf("scan new callers: %w", err)
	}
	var failed error
	// Oldest first, so alerts go out in the order the callers appeared.
	for i := len(res.Callers) - 1; i >= 0 && failed == nil; i-- {
		c := res.Callers[i]
		if e.cfg.NewCallers == NewCallersServices && c.Kind != keytrailv1.CallerKind_CALLER_KIND_SERVICE {
			continue
		}
		if c.FirstSeen.Sub(c.KeyFirstSeen) < e.cfg.NewKeyGrace {
			continue // the key's own roll-out
		}
		id := anomaly.NewCallerAlertID(c.Project, c.KeyID, c.Kind, c.Caller)
		if _, done := e.callers[id]; done {
			continue
		}
		e.metrics.raised.WithLabelValues(KindNewCaller).Inc()
		alert := &keytrailv1.AlertEvent{
			AlertId:  id,
			RaisedAt: timestamppb.New(now),
			Subject:  &keytrailv1.AlertEvent_NewCaller{NewCaller: c.Proto()},
		}
		// Not remembered unless published: the next scan retries, same id. After a failure
		// the rest wait for the next scan too.
		if failed = e.publish(ctx, KindNewCaller, c.Project, alert); failed == nil {
			e.callers[id] = c.FirstSeen
		}
	}
	for id, first := range e.callers {
		if first.Before(res.Range.Start) {
			delete(e.callers, id)
		}
	}
	return failed
}

// publish stores the alert in the stream under its id and, when JetStream stored it (not a
// duplicate of an earlier publish), queues it for the webhook.
func (e *Evaluator) publish(ctx context.Context, kind, project string, a *keytrailv1.AlertEvent) error {
	data, err := proto.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode alert %s: %w", a.GetAlertId(), err)
	}
	msg := nats.NewMsg(Subject(e.cfg.Prefix, project))
	msg.Data = data
	msg.Header.Set("Content-Type", ContentType)
	msg.Header.Set(KindHeader, kind)
	pctx, cancel := context.WithTimeout(ctx, e.cfg.PublishTimeout)
	defer cancel()
	ack, err := e.cfg.JetStream.PublishMsg(pctx, msg, jetstream.WithMsgID(a.GetAlertId()), jetstream.WithExpectStream(StreamName))
	if err != nil {
		e.metrics.publishErrors.Inc()
		return fmt.Errorf("publish alert %s: %w", a.GetAlertId(), err)
	}
	if ack.Duplicate {
		e.metrics.duplicates.WithLabelValues(kind).Inc()
		e.log.Info("alert already published", "alert_id", a.GetAlertId(), "kind", kind)
		return nil
	}
	e.metrics.published.WithLabelValues(kind).Inc()
	e.log.Info("alert published", "alert_id", a.GetAlertId(), "kind", kind, "project", project)
	if e.webhook != nil {
		e.webhook.enqueue(a)
	}
	return nil
}

// Headers of an alert message.
const (
	ContentType = "application/protobuf"
	KindHeader  = "Keytrail-Alert-Kind"
)

// Restore reads the alerts stored in the last RestoreLookback back into memory (see the
// package doc, layer 3). Run calls it; it is exported for tests and tools.
func (e *Evaluator) Restore(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := e.cfg.JetStream.Stream(ctx, StreamName)
	if err != nil {
		return fmt.Errorf("alerts stream: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("alerts stream info: %w", err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	since := time.Now().Add(-e.cfg.RestoreLookback)
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{Filter(e.cfg.Prefix)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
	})
	if err != nil {
		return fmt.Errorf("read alerts back: %w", err)
	}
	restored := 0
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return fmt.Errorf("read alerts back: %w", err)
		}
		n := 0
		var seq uint64
		for m := range batch.Messages() {
			n++
			if meta, err := m.Metadata(); err == nil {
				seq = meta.Sequence.Stream
			}
			var a keytrailv1.AlertEvent
			if err := proto.Unmarshal(m.Data(), &a); err != nil {
				e.log.Warn("undecodable alert on the stream", "subject", m.Subject(), "error", err)
				continue
			}
			e.remember(&a)
			restored++
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read alerts back: %w", err)
		}
		if n == 0 || seq >= last {
			break
		}
	}
	e.metrics.openEpisodes.Set(float64(e.episodes.Open()))
	e.log.Info("read recent alerts back", "alerts", restored)
	return nil
}

func (e *Evaluator) remember(a *keytrailv1.AlertEvent) {
	if an := a.GetAnomaly(); an != nil {
		start := an.GetBucketStart().AsTime()
		e.episodes.Restore(anomaly.Series{Project: an.GetProject(), KeyID: an.GetKeyId(), Service: an.GetService(), Metric: an.GetMetric()}, start, start)
	}
	if c := a.GetNewCaller(); c != nil {
		e.callers[a.GetAlertId()] = c.GetFirstSeen().AsTime()
	}
}
