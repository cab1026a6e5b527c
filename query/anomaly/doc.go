// Package anomaly is the scoring behind keytrail's anomaly answers and alerts: the robust
// baseline statistics, the score, the thresholds that keep quiet keys quiet, and the episode
// bookkeeping that turns flagged buckets into one alert per spike. It does no I/O.
//
// # Method
//
// Usage is bucketed in 5-minute buckets (the usage_key_5min rollup). A series is a key (all its
// services together) or a key x service. Each bucket under examination is compared with the
// series' own history over the baseline window just before the examined range (24 h unless
// asked otherwise):
//
//	score = (observed - median) / scale
//	scale = max(1.4826 * MAD, floor)
//
// median is the baseline's median and MAD the median of absolute deviations from it; 1.4826 *
// MAD estimates the standard deviation of normal data without being pulled by the outliers we
// are looking for. Medians are the upper median (element n/2 of the sorted values, 0-based),
// as ClickHouse's quantileExact(0.5), so a figure can be checked with clickhouse-client. The
// anomaly scan reads the rows (package chreader) and scores them with Scorer, built on these
// functions; the integration tests check it against a reference written from them and against
// figures worked out by hand.
//
// Per metric:
//
//   - requests: buckets without traffic count as 0 (an idle hour is part of the history).
//     floor = max(1 request, 10% of the median, (p99 - median) / 2.326).
//   - cost (micros): like requests; the absolute floor is the baseline's mean cost of one
//     request (at least 1 micro) instead of 1.
//   - error rate (errors / requests): over the baseline buckets that had requests only (an
//     empty bucket has no rate; counting it as 0 would make a key idle half of the time look
//     error-free and every ordinary error burst an alarm). floor = max(0.02, sqrt(median *
//     (1 - median) / requests)): two percentage points, and the binomial noise of a bucket of
//     that many requests, so 3 errors in 50 requests never outscore 300 in 5000.
//
// Why each floor term exists, by the false alarm it prevents:
//
//   - 1 request / mean request cost: a perfectly flat series has MAD 0; without a floor one
//     extra request would be an infinite score.
//   - 10% of the median: a big, very regular key (MAD 2 on a median of 10 000) would flag a
//     4% wobble.
//   - (p99 - median) / 2.326: a bursty key — an hourly batch job, a key used a few times a
//     day — is idle in most buckets, so its median and MAD are 0 and every batch would be an
//     alarm. For normal data (p99 - median) / 2.326 is the standard deviation again, so the
//     term changes nothing for steady keys; for bursty keys it scales the score by the
//     bursts the key already makes. p99 is quantileExact(0.99): the third largest of 288
//     buckets, so one or two past spikes do not hide the next one.
//
// The price of the burst term: a key that spiked in three or more buckets of its baseline
// (1% of 24 h) has that spike as its p99, so a repeat of the same size scores about 2.3 and
// is not flagged — the key "does this". Likewise a lasting level shift stops being flagged
// once a few of its buckets are in the baseline; the alert evaluator has raised it by then.
//
// A bucket is flagged when score >= sensitivity (default 6) and the bucket has at least
// min_requests requests (default 50), for every metric: the error rate of 3 requests means
// nothing, and neither does a spend spike of a key that made 4 calls. A series is scored only
// with requests in at least 12 of its baseline buckets (an hour's worth): a brand-new or
// nearly unused key has no history to be anomalous against, and would otherwise be flagged
// on its first busy bucket. Only increases are anomalies (a drop is a negative score).
//
// # Episodes
//
// An episode is a run of consecutive flagged 5-minute buckets of one series and metric. Its
// alert id is a hash of the series, the metric and the episode's first bucket, so the same
// episode always gets the same id (Tracker, AlertID).
package anomaly
