package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/retry"
)

// WebhookFormat is the body the webhook receives.
type WebhookFormat string

const (
	// WebhookProtoJSON POSTs the AlertEvent as protojson (proto field names), one per request.
	WebhookProtoJSON WebhookFormat = "protojson"
	// WebhookAlertmanager POSTs a one-element Alertmanager v2 alert list, for
	// http://alertmanager:9093/api/v2/alerts: routing and silencing by its labels.
	WebhookAlertmanager WebhookFormat = "alertmanager"
)

// delivery is one alert waiting for the webhook.
type delivery struct {
	alert *keytrailv1.AlertEvent
}

// webhook delivers alerts in the background, so a slow or dead endpoint never holds up a
// scan: the scan enqueues and moves on.
type webhook struct {
	url      string
	format   WebhookFormat
	client   *http.Client
	timeout  time.Duration
	attempts int
	backoff  time.Duration
	queue    chan delivery
	metrics  *Metrics
	log      *slog.Logger
}

// enqueue hands an alert to the worker, or drops it (counted) when the queue is full.
func (w *webhook) enqueue(a *keytrailv1.AlertEvent) {
	select {
	case w.queue <- delivery{alert: a}:
	default:
		w.metrics.webhookFailures.WithLabelValues("queue_full").Inc()
		w.log.Warn("webhook queue full: alert not delivered to the webhook (it is on the stream)", "alert_id", a.GetAlertId())
	}
}

// run delivers until ctx ends; what is still queued then is dropped and counted (the alerts
// are on the stream).
func (w *webhook) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case d := <-w.queue:
					w.metrics.webhookFailures.WithLabelValues("shutdown").Inc()
					w.log.Warn("shutting down: alert not delivered to the webhook", "alert_id", d.alert.GetAlertId())
				default:
					return
				}
			}
		case d := <-w.queue:
			w.deliver(ctx, d.alert)
		}
	}
}

// deliver POSTs one alert: a timeout per attempt, retries with exponential backoff on
// network errors, 429 and 5xx; a 4xx other than 429 is final (retrying cannot fix it).
func (w *webhook) deliver(ctx context.Context, a *keytrailv1.AlertEvent) {
	body, err := w.body(a)
	if err != nil {
		w.metrics.webhookFailures.WithLabelValues("rejected").Inc()
		w.log.Error("encode webhook body", "alert_id", a.GetAlertId(), "error", err)
		return
	}
	tries, rejected := 0, false
	err = retry.Do(ctx, retry.Policy{First: w.backoff, Attempts: w.attempts}, func(attempt int) error {
		tries = attempt
		again, err := w.post(ctx, body)
		if err != nil && !again {
			rejected = true
			return retry.Permanent(err)
		}
		return err
	}, func(attempt int, err error, wait time.Duration) {
		w.log.Warn("webhook failed, retrying", "alert_id", a.GetAlertId(), "attempt", attempt, "in", wait, "error", err)
	})
	switch {
	case err == nil:
		w.metrics.webhookSent.Inc()
	case rejected:
		w.metrics.webhookFailures.WithLabelValues("rejected").Inc()
		w.log.Error("webhook rejected the alert", "alert_id", a.GetAlertId(), "error", err)
	case tries >= w.attempts:
		w.metrics.webhookFailures.WithLabelValues("exhausted").Inc()
		w.log.Error("webhook failed, giving up", "alert_id", a.GetAlertId(), "attempts", tries, "error", err)
	default: // ctx ended while waiting to retry
		w.metrics.webhookFailures.WithLabelValues("shutdown").Inc()
	}
}

func (w *webhook) post(ctx context.Context, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("status %d", resp.StatusCode)
	}
	return false, fmt.Errorf("status %d", resp.StatusCode)
}

func (w *webhook) body(a *keytrailv1.AlertEvent) ([]byte, error) {
	if w.format == WebhookAlertmanager {
		return json.Marshal([]alertmanagerAlert{toAlertmanager(a)})
	}
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
}

// alertmanagerAlert is one alert of Alertmanager's POST /api/v2/alerts.
type alertmanagerAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
}

func toAlertmanager(a *keytrailv1.AlertEvent) alertmanagerAlert {
	out := alertmanagerAlert{
		Labels:      map[string]string{"alert_id": a.GetAlertId()},
		Annotations: map[string]string{},
		StartsAt:    a.GetRaisedAt().AsTime(),
	}
	if an := a.GetAnomaly(); an != nil {
		out.Labels["alertname"] = "KeytrailAnomaly"
		out.Labels["project"] = an.GetProject()
		out.Labels["key_id"] = an.GetKeyId()
		out.Labels["service"] = an.GetService()
		out.Labels["metric"] = an.GetMetric().String()
		out.Annotations["summary"] = fmt.Sprintf("%s of key %s%s: %g against a usual %g (score %g) in the 5 minutes from %s",
			metricName(an.GetMetric()), an.GetKeyId(), serviceSuffix(an.GetService()), an.GetObserved(), an.GetExpected(), an.GetScore(),
			an.GetBucketStart().AsTime().Format(time.RFC3339))
		out.Annotations["method"] = an.GetMethod()
		out.StartsAt = an.GetBucketStart().AsTime()
	}
	if c := a.GetNewCaller(); c != nil {
		out.Labels["alertname"] = "KeytrailNewCaller"
		out.Labels["project"] = c.GetProject()
		out.Labels["key_id"] = c.GetKeyId()
		out.Labels["kind"] = c.GetKind().String()
		out.Labels["caller"] = c.GetCaller()
		out.Annotations["summary"] = fmt.Sprintf("%s %s used key %s for the first time at %s (key in use since %s)",
			callerKindName(c.GetKind()), c.GetCaller(), c.GetKeyId(), c.GetFirstSeen().AsTime().Format(time.RFC3339Nano),
			c.GetKeyFirstSeen().AsTime().Format(time.RFC3339))
		out.StartsAt = c.GetFirstSeen().AsTime()
	}
	return out
}

func metricName(m keytrailv1.AnomalyMetric) string {
	switch m {
	case keytrailv1.AnomalyMetric_ANOMALY_METRIC_ERROR_RATE:
		return "error rate"
	case keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST:
		return "cost (micros)"
	}
	return "requests"
}

func serviceSuffix(s string) string {
	if s == "" {
		return ""
	}
	return " from service " + s
}

func callerKindName(k keytrailv1.CallerKind) string {
	if k == keytrailv1.CallerKind_CALLER_KIND_CLIENT_IP {
		return "client IP"
	}
	return "service"
}
