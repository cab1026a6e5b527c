package reconcile

import "github.com/prometheus/client_golang/prometheus"

// metrics are the reconciliation's Prometheus series.
type metrics struct {
	runs          *prometheus.CounterVec
	failures      *prometheus.CounterVec
	hoursChecked  *prometheus.CounterVec
	hoursRepaired *prometheus.CounterVec
	cellsRepaired *prometheus.CounterVec
	rowsCorrected *prometheus.CounterVec
	deferred      *prometheus.CounterVec
	excess        *prometheus.CounterVec
	lastSweep     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_runs_total",
			Help: "Rollup checks run, by trigger: redelivery (events found already stored after a take-over or a failed write) or schedule (the sweep).",
		}, []string{"trigger"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_failures_total",
			Help: "Rollup checks that ended with an error, by trigger (a redelivery check is retried by the ingester, a sweep at its next run).",
		}, []string{"trigger"}),
		hoursChecked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_hours_checked_total",
			Help: "Hours of usage whose rollup cells were compared with the raw rows, by trigger.",
		}, []string{"trigger"}),
		hoursRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_hours_repaired_total",
			Help: "Hours (days for spend_daily) of a bucketed rollup in which at least one cell was short of the raw rows and was corrected, by rollup.",
		}, []string{"rollup"}),
		cellsRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_cells_repaired_total",
			Help: "Rollup rows (cells) that were short of the raw rows and got a correcting row, by rollup.",
		}, []string{"rollup"}),
		rowsCorrected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_rows_corrected_total",
			Help: "Requests (usage_events rows) a rollup was missing and now counts, by rollup.",
		}, []string{"rollup"}),
		deferred: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_cells_deferred_total",
			Help: "Rollup cells left for a later check because another writer inserted into them while they were being compared, by rollup.",
		}, []string{"rollup"}),
		excess: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_reconcile_cells_excess_total",
			Help: "Rollup cells holding more than the raw rows (never caused by a lost insert; not repaired; investigate), by rollup.",
		}, []string{"rollup"}),
		lastSweep: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keytrail_reconcile_last_sweep_timestamp_seconds",
			Help: "When the last scheduled sweep finished without error (Unix time).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.runs, m.failures, m.hoursChecked, m.hoursRepaired, m.cellsRepaired, m.rowsCorrected, m.deferred, m.excess, m.lastSweep)
	}
	return m
}
