// Package alerting turns keytrail's anomaly and new-caller answers into alerts: an Evaluator
// scans the recent window on a ticker and publishes each new anomaly episode and each new
// caller of an established key once, as a keytrail.v1.AlertEvent, to JetStream and
// optionally to a webhook.
//
// # Where alerts go
//
//   - JetStream stream KEYTRAIL_ALERTS (EnsureStream), subject <prefix>.alerts.<project>,
//     protobuf binary with header Content-Type: application/protobuf (the same default as the
//     event contract; consumers decode keytrail.v1.AlertEvent), header Keytrail-Alert-Kind
//     (anomaly or new_caller) for filtering without decoding, and Nats-Msg-Id = alert_id.
//     This is the durable path: a consumer on <prefix>.alerts.> sees every alert, 30 days
//     back.
//   - The webhook (optional) gets the same AlertEvent as protojson (Content-Type:
//     application/json), or an Alertmanager v2 alert list, POSTed by a background worker:
//     per-attempt timeout, retries with exponential backoff on network errors, 429 and 5xx,
//     a bounded queue. It never holds up a scan; when the queue is full or the retries are
//     spent the delivery is dropped and counted (the alert is still on the stream).
//
// # Once per episode, across restarts
//
// Three layers, each covering the previous one's limit:
//
//  1. Memory: anomaly.Tracker keeps each series' open episode, so the scans of a spike that
//     lasts an hour (60 scans of a 1-minute ticker) publish one alert. New callers are
//     remembered by id until their first use leaves the window.
//  2. Deterministic ids: an episode's alert_id is a hash of the series, the metric and the
//     episode's first bucket, derived from the data; a new caller's from the key, kind and
//     caller. It is the Nats-Msg-Id, and the stream drops a repeated id within its duplicate
//     window (24 h). A restarted evaluator that re-derives an episode still open publishes a
//     duplicate that JetStream drops; the webhook is only called for publishes JetStream
//     stored (PubAck.Duplicate false), so it is not called twice either.
//  3. Read-back: at start the evaluator reads the alerts of the last RestoreLookback (24 h of
//     stream time) back into memory. This covers what 2 cannot: an episode older than the
//     duplicate window, and an episode whose first bucket is derived differently after the
//     restart (the baseline moved, or the episode began before the scanned window) — a run
//     of flagged buckets that starts at the first scanned bucket continues a read-back
//     episode of the same series instead of opening a new one.
//
// Limits: data that arrives later than the window (default 30 min) is never scanned for
// alerts (it still shows in the API). Two evaluators running at once each keep their own
// memory; layer 2 makes their publishes idempotent, but run one per deployment (keytrail
// does: only the query process holding the alert-evaluator lease runs it). A publish
// that fails is retried on the next scan under the same id (the episode is forgotten so it
// is derived again).
package alerting
