package anomaly

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Series is what an episode is about: one metric of a key (Service empty) or of a key x
// service.
type Series struct {
	Project string
	KeyID   string
	Service string
	Metric  keytrailv1.AnomalyMetric
}

// SeriesOf is the series a flagged bucket belongs to.
func SeriesOf(a Anomaly) Series {
	return Series{Project: a.Project, KeyID: a.KeyID, Service: a.Service, Metric: a.Metric}
}

// AlertID is the id of the episode of s whose first bucket is start. It depends on nothing
// else, so whoever derives the same episode (this process after a restart, another replica)
// derives the same id, and JetStream drops the repeat (it is the Nats-Msg-Id).
func AlertID(s Series, start time.Time) string {
	return "anomaly-" + digest("anomaly", s.Project, s.KeyID, s.Service, s.Metric.String(),
		strconv.FormatInt(start.Unix(), 10))
}

// NewCallerAlertID is the id of the alert for a caller's first use of a key. A first use
// never changes (it is the minimum over all history), so neither does the id.
func NewCallerAlertID(project, keyID string, kind keytrailv1.CallerKind, caller string) string {
	return "new-caller-" + digest("new_caller", project, keyID, kind.String(), caller)
}

// digest hashes fields unambiguously (NUL never occurs in them: they are validated names).
func digest(fields ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(fields, "\x00")))
	return hex.EncodeToString(sum[:16])
}

// Episode is a newly opened episode and the anomaly of its first bucket.
type Episode struct {
	ID     string
	Series Series
	First  Anomaly
}

// Tracker remembers the open episode of each series between scans, so a spike that stays
// flagged over many scans is reported once. It is not safe for concurrent use.
//
// Episodes are runs of consecutive flagged buckets. Memory is monotonic: a bucket flagged in
// one scan and not in a later one (the baseline moved by a bucket) does not end or split
// its episode; only a flagged bucket that is not adjacent to the episode's last one starts a
// new episode.
type Tracker struct {
	open map[Series]*openEpisode
}

type openEpisode struct {
	id          string
	start, last time.Time
	// restored episodes were read back from earlier alerts: their last bucket is a lower
	// bound, so a run starting at the first examined bucket is taken as their continuation.
	restored bool
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return &Tracker{open: map[Series]*openEpisode{}} }

// Restore remembers an episode raised before this tracker existed (read back from the alert
// stream after a restart): first bucket start, flagged at least up to last.
func (t *Tracker) Restore(s Series, start, last time.Time) {
	if e, ok := t.open[s]; ok && e.start.After(start) {
		return
	}
	t.open[s] = &openEpisode{id: AlertID(s, start), start: start, last: last, restored: true}
}

// Open is how many episodes are remembered.
func (t *Tracker) Open() int { return len(t.open) }

// Observe takes the flagged buckets of one scan whose first examined bucket is windowStart
// and returns the episodes that are new, in the order of their first bucket. Afterwards it
// forgets episodes that ended before the window: a later flagged bucket cannot be adjacent
// to them.
func (t *Tracker) Observe(windowStart time.Time, flagged []Anomaly) []Episode {
	bySeries := map[Series][]Anomaly{}
	var order []Series
	for _, a := range flagged {
		s := SeriesOf(a)
		if _, ok := bySeries[s]; !ok {
			order = append(order, s)
		}
		bySeries[s] = append(bySeries[s], a)
	}
	var opened []Episode
	for _, s := range order {
		as := bySeries[s]
		slices.SortFunc(as, func(a, b Anomaly) int { return a.Bucket.Compare(b.Bucket) })
		for i := 0; i < len(as); {
			// The run [as[i], as[j-1]] of consecutive buckets.
			j := i + 1
			for j < len(as) && !as[j].Bucket.After(as[j-1].Bucket.Add(BucketWidth)) {
				j++
			}
			first, last := as[i].Bucket, as[j-1].Bucket
			e := t.open[s]
			switch {
			case e != nil && (!first.After(e.last.Add(BucketWidth)) || (e.restored && first.Equal(windowStart))):
				if last.After(e.last) {
					e.last = last
				}
				e.restored = false
			default:
				id := AlertID(s, first)
				t.open[s] = &openEpisode{id: id, start: first, last: last}
				opened = append(opened, Episode{ID: id, Series: s, First: as[i]})
			}
			i = j
		}
	}
	for s, e := range t.open {
		if e.last.Add(BucketWidth).Before(windowStart) {
			delete(t.open, s)
		}
	}
	slices.SortStableFunc(opened, func(a, b Episode) int { return a.First.Bucket.Compare(b.First.Bucket) })
	return opened
}

// Forget drops the open episode of s if it is the one with this id: its alert could not be
// published, and the next scan must derive it again.
func (t *Tracker) Forget(s Series, id string) {
	if e, ok := t.open[s]; ok && e.id == id {
		delete(t.open, s)
	}
}
