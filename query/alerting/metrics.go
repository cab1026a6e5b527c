package alerting

import "github.com/prometheus/client_golang/prometheus"

// Alert kinds, the kind label of the metrics and the Keytrail-Alert-Kind header.
const (
	KindAnomaly   = "anomaly"
	KindNewCaller = "new_caller"
)

// Metrics are the evaluator's Prometheus series.
type Metrics struct {
	raised          *prometheus.CounterVec
	published       *prometheus.CounterVec
	duplicates      *prometheus.CounterVec
	publishErrors   prometheus.Counter
	webhookSent     prometheus.Counter
	webhookFailures *prometheus.CounterVec
	scanErrors      prometheus.Counter
	scanDuration    prometheus.Histogram
	openEpisodes    prometheus.Gauge
}

// NewMetrics creates the series and registers them with reg (skipped when reg is nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		raised: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_alerts_raised_total",
			Help: "New anomaly episodes and new callers found by the evaluator, by kind (before publishing; one whose publish failed is found and counted again on the next scan).",
		}, []string{"kind"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_alerts_published_total",
			Help: "Alerts stored in the alerts stream, by kind.",
		}, []string{"kind"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_alerts_duplicates_total",
			Help: "Alerts JetStream dropped because the same alert id was already stored (e.g. re-derived after a restart), by kind.",
		}, []string{"kind"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keytrail_alerts_publish_errors_total",
			Help: "Failed alert publishes (retried on the next scan under the same id).",
		}),
		webhookSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keytrail_alerts_webhook_delivered_total",
			Help: "Alerts the webhook accepted (2xx).",
		}),
		webhookFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_alerts_webhook_failures_total",
			Help: "Alerts not delivered to the webhook, by reason: rejected (4xx), exhausted (retries spent), queue_full, shutdown.",
		}, []string{"reason"}),
		scanErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keytrail_alerts_scan_errors_total",
			Help: "Evaluation runs that could not read the anomalies or new callers.",
		}),
		scanDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keytrail_alerts_scan_duration_seconds",
			Help:    "Time of one evaluation run (both scans and the publishes).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
		}),
		openEpisodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_alerts_open_episodes",
			Help: "Anomaly episodes the evaluator remembers as open.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.raised, m.published, m.duplicates, m.publishErrors, m.webhookSent, m.webhookFailures,
			m.scanErrors, m.scanDuration, m.openEpisodes)
	}
	return m
}
