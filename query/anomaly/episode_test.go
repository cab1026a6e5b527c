package anomaly

import (
	"testing"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

var (
	epT0      = time.Date(2026, 3, 10, 11, 0, 0, 0, time.UTC)
	epSeries  = Series{Project: "acme", KeyID: "key_a", Service: "api", Metric: keytrailv1.AnomalyMetric_ANOMALY_METRIC_REQUESTS}
	epSeries2 = Series{Project: "acme", KeyID: "key_a", Service: "api", Metric: keytrailv1.AnomalyMetric_ANOMALY_METRIC_COST}
)

// bucket n is the n-th bucket after epT0.
func bucket(n int) time.Time { return epT0.Add(time.Duration(n) * BucketWidth) }

func flagged(s Series, buckets ...int) []Anomaly {
	var out []Anomaly
	for _, n := range buckets {
		out = append(out, Anomaly{Project: s.Project, KeyID: s.KeyID, Service: s.Service, Metric: s.Metric, Bucket: bucket(n)})
	}
	return out
}

func ids(eps []Episode) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.ID)
	}
	return out
}

func wantEpisodes(t *testing.T, got []Episode, want ...Episode) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("episodes %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].ID != want[i].ID || got[i].Series != want[i].Series || !got[i].First.Bucket.Equal(want[i].First.Bucket) {
			t.Errorf("episode %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func ep(s Series, start int) Episode {
	return Episode{ID: AlertID(s, bucket(start)), Series: s, First: Anomaly{Bucket: bucket(start)}}
}

func TestAlertID(t *testing.T) {
	a := AlertID(epSeries, bucket(0))
	if a != AlertID(epSeries, bucket(0)) {
		t.Error("not deterministic")
	}
	for _, other := range []string{AlertID(epSeries, bucket(1)), AlertID(epSeries2, bucket(0)),
		AlertID(Series{Project: "acme", KeyID: "key_a", Metric: epSeries.Metric}, bucket(0))} {
		if other == a {
			t.Errorf("id %s shared by different episodes", a)
		}
	}
	if len(a) != len("anomaly-")+32 {
		t.Errorf("id %q", a)
	}
	c := NewCallerAlertID("acme", "key_a", keytrailv1.CallerKind_CALLER_KIND_SERVICE, "billing")
	if c == NewCallerAlertID("acme", "key_a", keytrailv1.CallerKind_CALLER_KIND_CLIENT_IP, "billing") {
		t.Error("kinds share an id")
	}
}

func TestTrackerOneEpisodePerRun(t *testing.T) {
	tr := NewTracker()
	// Scan 1 (window from bucket 0): buckets 3 and 4 flagged, and the cost of bucket 4.
	wantEpisodes(t, tr.Observe(bucket(0), append(flagged(epSeries, 4, 3), flagged(epSeries2, 4)...)), ep(epSeries, 3), ep(epSeries2, 4))
	// Scan 2: the same buckets plus the next one: the same episodes.
	wantEpisodes(t, tr.Observe(bucket(1), append(flagged(epSeries, 3, 4, 5), flagged(epSeries2, 4)...)))
	// Scan 3: the baseline moved and bucket 4 is no longer flagged, 6 is: still one episode
	// (memory is monotonic; 6 is adjacent to the remembered 5).
	wantEpisodes(t, tr.Observe(bucket(2), flagged(epSeries, 3, 5, 6)))
	// Scan 4: nothing flagged; scan 5: bucket 9 is not adjacent to 6: a new episode.
	wantEpisodes(t, tr.Observe(bucket(3), nil))
	wantEpisodes(t, tr.Observe(bucket(4), flagged(epSeries, 9)), ep(epSeries, 9))
	// Two runs in one scan are two episodes.
	tr2 := NewTracker()
	wantEpisodes(t, tr2.Observe(bucket(0), flagged(epSeries, 1, 2, 5)), ep(epSeries, 1), ep(epSeries, 5))
}

func TestTrackerForgetsEndedEpisodes(t *testing.T) {
	tr := NewTracker()
	tr.Observe(bucket(0), flagged(epSeries, 2))
	if tr.Open() != 1 {
		t.Fatalf("open %d", tr.Open())
	}
	// The window now starts at bucket 3: bucket 2 + 5m is not before it, keep.
	tr.Observe(bucket(3), nil)
	if tr.Open() != 1 {
		t.Fatalf("open %d", tr.Open())
	}
	// Window from bucket 4: the episode ended before it.
	tr.Observe(bucket(4), nil)
	if tr.Open() != 0 {
		t.Fatalf("open %d", tr.Open())
	}
}

func TestTrackerRestore(t *testing.T) {
	// An episode raised before a restart at bucket 2; the new process scans from bucket 6.
	t.Run("a run from the window start continues it", func(t *testing.T) {
		tr := NewTracker()
		tr.Restore(epSeries, bucket(2), bucket(2))
		wantEpisodes(t, tr.Observe(bucket(6), flagged(epSeries, 6, 7)))
	})
	t.Run("a run starting later is a new episode", func(t *testing.T) {
		tr := NewTracker()
		tr.Restore(epSeries, bucket(2), bucket(2))
		wantEpisodes(t, tr.Observe(bucket(6), flagged(epSeries, 8)), ep(epSeries, 8))
	})
	t.Run("adjacent to the restored episode", func(t *testing.T) {
		tr := NewTracker()
		tr.Restore(epSeries, bucket(2), bucket(2))
		wantEpisodes(t, tr.Observe(bucket(0), flagged(epSeries, 2, 3)))
	})
	t.Run("the latest restored episode wins", func(t *testing.T) {
		tr := NewTracker()
		tr.Restore(epSeries, bucket(5), bucket(5))
		tr.Restore(epSeries, bucket(1), bucket(1))
		wantEpisodes(t, tr.Observe(bucket(0), flagged(epSeries, 6)))
	})
}

func TestTrackerForget(t *testing.T) {
	tr := NewTracker()
	eps := tr.Observe(bucket(0), flagged(epSeries, 3))
	tr.Forget(epSeries, "some other id")
	if tr.Open() != 1 {
		t.Fatal("forgot an episode by the wrong id")
	}
	tr.Forget(epSeries, eps[0].ID)
	// Derived again, same id: a failed publish is retried under the same Nats-Msg-Id.
	if got := ids(tr.Observe(bucket(0), flagged(epSeries, 3, 4))); len(got) != 1 || got[0] != eps[0].ID {
		t.Errorf("re-derived %v, want [%s]", got, eps[0].ID)
	}
}
