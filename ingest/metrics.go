package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the ingester's Prometheus series.
type Metrics struct {
	received     *prometheus.CounterVec
	inserted     *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	// deadLetterFallback counts the dead letters kept in ClickHouse because the dead-letter
	// stream refused them, by cause.
	deadLetterFallback *prometheus.CounterVec
	duplicates         *prometheus.CounterVec
	secretsRedacted    *prometheus.CounterVec
	insertErrors       prometheus.Counter
	batchSize          prometheus.Histogram
	insertDuration     prometheus.Histogram
	pending            prometheus.Gauge
	ackPending         prometheus.Gauge
	stalled            prometheus.Gauge
	lastProgress       prometheus.Gauge
}

// NewMetrics creates the series and registers them with reg (skipped when reg is nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_ingest_events_received_total",
			Help: "Valid events taken from the stream, by kind.",
		}, []string{"kind"}),
		inserted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_ingest_events_inserted_total",
			Help: "Events stored in ClickHouse, by kind.",
		}, []string{"kind"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_ingest_events_dead_lettered_total",
			Help: "Messages rejected and dead-lettered (to the dead-letter stream, or the dead_letters table when the stream refused them), by reason.",
		}, []string{"reason"}),
		deadLetterFallback: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_ingest_dead_letter_fallback_total",
			Help: "Dead letters kept in the ClickHouse table dead_letters because the dead-letter stream refused them, by cause (no_stream, stream_full, too_large, refused, unavailable, shutdown).",
		}, []string{"cause"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_ingest_duplicates_dropped_total",
			Help: "Events dropped because the same event (same id and content) was already taken or stored, by kind.",
		}, []string{"kind"}),
		secretsRedacted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_ingest_secrets_redacted_total",
			Help: "Secret-shaped values replaced by fingerprints before storage or dead-lettering, by kind (unknown: a dead letter whose subject names no kind).",
		}, []string{"kind"}),
		insertErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keytrail_ingest_insert_errors_total",
			Help: "Failed attempts to store a batch (each is retried).",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keytrail_ingest_batch_size",
			Help:    "Events per stored batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		insertDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keytrail_ingest_insert_duration_seconds",
			Help:    "Time to store one batch in ClickHouse.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_ingest_consumer_pending",
			Help: "Messages in the stream not yet delivered to the ingester (consumer lag).",
		}),
		ackPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_ingest_consumer_ack_pending",
			Help: "Messages delivered to the ingester and not yet acknowledged.",
		}),
		stalled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_ingest_stalled",
			Help: "1 while the consumer has a backlog and the ingester has acknowledged nothing for longer than its stall timeout.",
		}),
		lastProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_ingest_last_progress_timestamp_seconds",
			Help: "When the ingester last acknowledged a batch or found the consumer's backlog empty (unix time).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.inserted, m.deadLettered, m.duplicates, m.secretsRedacted, m.insertErrors, m.batchSize, m.insertDuration, m.pending, m.ackPending,
			m.deadLetterFallback, m.stalled, m.lastProgress)
	}
	return m
}
