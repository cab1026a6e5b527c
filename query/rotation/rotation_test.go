package rotation

import (
	"reflect"
	"testing"
	"time"
)

// The window of every case: two hours to end, quiet 15 minutes, lookback 7 days, so the
// history starts at 2026-10-25T10:00:00Z.
var end = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return end.Add(-d) }

const (
	hour = time.Hour
	day  = 24 * time.Hour
)

func facts(mod func(f *Facts)) Facts {
	f := Facts{OldKey: "o", NewKey: "n", Start: ago(2 * hour), End: end, Quiet: 15 * time.Minute, Lookback: 7 * day, OldKeyStatus: "active"}
	if mod != nil {
		mod(&f)
	}
	return f
}

// calls is a service that succeeded on the old key, last at lastAgo.
func calls(service string, runs int, gap, lastAgo time.Duration) Calls {
	return Calls{Service: service, Requests: uint64(runs), LastSeen: ago(lastAgo), LastSuccess: ago(lastAgo), Runs: runs, LargestGap: gap}
}

func TestAnalyze(t *testing.T) {
	const safe = "no successful request on o in the 15m0s before the window end"
	for _, tc := range []struct {
		name    string
		facts   Facts
		verdict Verdict
		reasons []string
		chase   []string
		states  map[string]CallerState
		// expected lists the ExpectedBy of callers that have one.
		expected map[string]time.Time
		accepted []string
	}{
		{
			name:    "no traffic at all",
			facts:   facts(nil),
			verdict: SafeToRevoke, reasons: []string{safe},
		},
		{
			name: "hourly caller inside its next run",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("hourly", 170, hour, 20*time.Minute)}
			}),
			verdict: NotYet,
			reasons: []string{"hourly has not moved to n: calls o about every 1h (the largest gap over 170 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:40:00Z; expected again by 2026-11-01T12:55:00Z"},
			chase:   []string{"hourly"}, states: map[string]CallerState{"hourly": CallerPending},
			expected: map[string]time.Time{"hourly": ago(-55 * time.Minute)},
		},
		{
			name: "hourly caller that missed its run is overdue and does not block",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("hourly", 160, hour, 90*time.Minute)}
			}),
			verdict:  SafeToRevoke,
			reasons:  []string{safe, "hourly has not moved to n: calls o about every 1h (the largest gap over 160 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T10:30:00Z; expected again by 2026-11-01T11:45:00Z but not seen since, so taken as no longer calling"},
			states:   map[string]CallerState{"hourly": CallerOverdue},
			expected: map[string]time.Time{"hourly": ago(15 * time.Minute)},
		},
		{
			name: "nightly job that ran 55 minutes ago",
			facts: facts(func(f *Facts) {
				f.OldInWindow = []ServiceUse{{Service: "nightly", Requests: 3, FirstSeen: ago(57 * time.Minute), LastSeen: ago(55 * time.Minute), LastSuccess: ago(55 * time.Minute)}}
				f.OldHistory = []Calls{calls("nightly", 8, 24*hour+3*time.Minute, 55*time.Minute)}
			}),
			verdict: NotYet,
			reasons: []string{
				"nightly has not moved to n: calls o about every 24h3m (the largest gap over 8 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:05:00Z; expected again by 2026-11-02T11:23:00Z",
				"never used n in the window: nightly",
			},
			chase: []string{"nightly"}, states: map[string]CallerState{"nightly": CallerPending},
			expected: map[string]time.Time{"nightly": ago(55*time.Minute - 24*hour - 18*time.Minute)},
		},
		{
			name: "a service seen in one run is given the whole lookback",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("weekly", 1, 2*time.Minute, 3*day)}
			}),
			verdict: NotYet,
			reasons: []string{"weekly has not moved to n: called o in one run since 2026-10-25T10:00:00Z, last success 2026-10-29T12:00:00Z; no rhythm to learn, so it is given the whole lookback (7d); expected again by 2026-11-05T12:15:00Z"},
			chase:   []string{"weekly"}, states: map[string]CallerState{"weekly": CallerPending},
			expected: map[string]time.Time{"weekly": ago(-4*day - 15*time.Minute)},
		},
		{
			name: "one run older than a short lookback is overdue",
			facts: facts(func(f *Facts) {
				f.Lookback = day
				f.OldHistory = []Calls{calls("once", 1, 0, 25*hour)}
			}),
			verdict:  SafeToRevoke,
			reasons:  []string{safe, "once has not moved to n: called o in one run since 2026-10-31T10:00:00Z, last success 2026-10-31T11:00:00Z; no rhythm to learn, so it is given the whole lookback (24h); expected again by 2026-11-01T11:15:00Z but not seen since, so taken as no longer calling"},
			states:   map[string]CallerState{"once": CallerOverdue},
			expected: map[string]time.Time{"once": ago(45 * time.Minute)},
		},
		{
			name: "irregular caller: the largest gap sets the rhythm",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("adhoc", 4, 2*day+22*hour, 2*hour)}
			}),
			verdict: NotYet,
			reasons: []string{"adhoc has not moved to n: calls o about every 2d22h (the largest gap over 4 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T10:00:00Z; expected again by 2026-11-04T08:15:00Z"},
			chase:   []string{"adhoc"}, states: map[string]CallerState{"adhoc": CallerPending},
			expected: map[string]time.Time{"adhoc": ago(2*hour - 2*day - 22*hour - 15*time.Minute)},
		},
		{
			name: "moved: a success on the new key after the last on the old",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("billing", 100, time.Minute, 50*time.Minute)}
				f.NewHistory = []ServiceUse{{Service: "billing", LastSuccess: ago(time.Minute)}}
			}),
			verdict: SafeToRevoke, reasons: []string{safe},
			states: map[string]CallerState{"billing": CallerMoved},
		},
		{
			name: "flipped back: the new key's success is older than the old key's",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("search", 3, 95*time.Minute, 5*time.Minute)}
				f.NewHistory = []ServiceUse{{Service: "search", LastSuccess: ago(80 * time.Minute)}}
			}),
			verdict: NotYet,
			reasons: []string{
				"o served successful requests to 1 services in the 15m0s before the window end, the last at 2026-11-01T11:55:00Z: search",
				"search has not moved to n: calls o about every 1h35m (the largest gap over 3 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:55:00Z; expected again by 2026-11-01T13:45:00Z",
			},
			chase: []string{"search"}, states: map[string]CallerState{"search": CallerPending},
			expected: map[string]time.Time{"search": ago(-105 * time.Minute)},
		},
		{
			name: "a moved service still succeeding on the old key in the quiet period blocks, not chased",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("billing", 1, 0, 10*time.Minute)}
				f.NewHistory = []ServiceUse{{Service: "billing", LastSuccess: ago(2 * time.Minute)}}
			}),
			verdict: NotYet,
			reasons: []string{"o served successful requests to 1 services in the 15m0s before the window end, the last at 2026-11-01T11:50:00Z: billing"},
			states:  map[string]CallerState{"billing": CallerMoved},
		},
		{
			name: "failing only: the key serves it nothing; chased, not blocking",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{{Service: "broken", Requests: 7, LastSeen: ago(3 * time.Minute)}}
			}),
			verdict: SafeToRevoke,
			reasons: []string{safe, "broken: all its 7 requests on o since 2026-10-25T10:00:00Z failed (the last at 2026-11-01T11:57:00Z); the key serves it nothing"},
			chase:   []string{"broken"}, states: map[string]CallerState{"broken": CallerFailing},
		},
		{
			name: "failing-only caller that uses the new key has moved",
			facts: facts(func(f *Facts) {
				f.OldInWindow = []ServiceUse{{Service: "cron", Requests: 3, FirstSeen: ago(10 * time.Minute), LastSeen: ago(time.Minute)}}
				f.OldInQuiet = f.OldInWindow
				f.NewInWindow = []ServiceUse{{Service: "cron", Requests: 1, FirstSeen: ago(20 * time.Minute), LastSeen: ago(20 * time.Minute), LastSuccess: ago(20 * time.Minute)}}
				f.OldHistory = []Calls{{Service: "cron", Requests: 3, LastSeen: ago(time.Minute)}}
				f.NewHistory = f.NewInWindow
			}),
			verdict: SafeToRevoke,
			reasons: []string{safe, "still using both keys within the quiet period: cron"},
			states:  map[string]CallerState{"cron": CallerMoved},
		},
		{
			name: "failing since the key was disabled: revoking changes nothing",
			facts: facts(func(f *Facts) {
				f.OldKeyStatus, f.RevokedAt = "disabled", ago(30*time.Minute)
				f.OldHistory = []Calls{{Service: "cron", Requests: 3, LastSeen: ago(10 * time.Minute), LastSuccess: ago(60 * time.Minute), Runs: 1}}
			}),
			verdict: SafeToRevoke,
			reasons: []string{safe, "cron: its requests on o since it was disabled at 2026-11-01T11:30:00Z failed (the last at 2026-11-01T11:50:00Z, the last success at 2026-11-01T11:00:00Z); revoking changes nothing for it"},
			chase:   []string{"cron"}, states: map[string]CallerState{"cron": CallerFailing},
		},
		{
			name: "disabled key: a service not heard from since is still waited for",
			facts: facts(func(f *Facts) {
				f.OldKeyStatus, f.RevokedAt = "disabled", ago(30*time.Minute)
				f.OldHistory = []Calls{calls("hourly", 150, hour, 50*time.Minute)}
			}),
			verdict: NotYet,
			reasons: []string{"hourly has not moved to n: calls o about every 1h (the largest gap over 150 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:10:00Z; expected again by 2026-11-01T12:25:00Z"},
			chase:   []string{"hourly"}, states: map[string]CallerState{"hourly": CallerPending},
			expected: map[string]time.Time{"hourly": ago(-25 * time.Minute)},
		},
		{
			name: "accepted: a pending service the caller accepts does not block, and is listed",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("nightly", 8, 24*hour, 55*time.Minute), calls("hourly", 100, hour, 5*time.Minute)}
				f.Accepted = []string{"nightly", "hourly", "typo", "typo"}
			}),
			verdict: SafeToRevoke,
			reasons: []string{
				safe,
				"accepted by the caller (accept_pending): hourly has not moved to n: calls o about every 1h (the largest gap over 100 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:55:00Z; expected again by 2026-11-01T13:10:00Z",
				"accepted by the caller (accept_pending): nightly has not moved to n: calls o about every 24h (the largest gap over 8 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:05:00Z; expected again by 2026-11-02T11:20:00Z",
				"accept_pending names services with nothing pending on o since 2026-10-25T10:00:00Z: typo",
			},
			states:   map[string]CallerState{"nightly": CallerAccepted, "hourly": CallerAccepted},
			expected: map[string]time.Time{"nightly": ago(55*time.Minute - 24*hour - 15*time.Minute), "hourly": ago(-70 * time.Minute)},
			accepted: []string{"hourly", "nightly"},
		},
		{
			name: "accepting a moved service changes nothing",
			facts: facts(func(f *Facts) {
				f.OldHistory = []Calls{calls("billing", 10, time.Minute, hour)}
				f.NewHistory = []ServiceUse{{Service: "billing", LastSuccess: ago(time.Minute)}}
				f.Accepted = []string{"billing"}
			}),
			verdict: SafeToRevoke,
			reasons: []string{safe, "accept_pending names services with nothing pending on o since 2026-10-25T10:00:00Z: billing"},
			states:  map[string]CallerState{"billing": CallerMoved},
		},
		{
			name: "window lists: mixed and not started, the quiet use of a service outside the window ignored",
			facts: facts(func(f *Facts) {
				f.OldInWindow = []ServiceUse{
					{Service: "search", Requests: 2, LastSeen: ago(5 * time.Minute), LastSuccess: ago(5 * time.Minute)},
					{Service: "reports", Requests: 1, LastSeen: ago(3 * hour / 2), LastSuccess: ago(3 * hour / 2)},
				}
				f.NewInWindow = []ServiceUse{{Service: "search", Requests: 6, FirstSeen: ago(80 * time.Minute), LastSeen: ago(80 * time.Minute), LastSuccess: ago(80 * time.Minute)}}
				f.OldInQuiet = []ServiceUse{{Service: "search", Requests: 1}, {Service: "ghost", Requests: 1}}
				f.Accepted = []string{"search", "reports"}
				f.OldHistory = []Calls{calls("search", 2, 95*time.Minute, 5*time.Minute), calls("reports", 1, 0, 3*hour/2)}
				f.NewHistory = f.NewInWindow
			}),
			verdict: SafeToRevoke,
			reasons: []string{
				safe,
				"accepted by the caller (accept_pending): reports has not moved to n: called o in one run since 2026-10-25T10:00:00Z, last success 2026-11-01T10:30:00Z; no rhythm to learn, so it is given the whole lookback (7d); expected again by 2026-11-08T10:45:00Z",
				"accepted by the caller (accept_pending): search has not moved to n: calls o about every 1h35m (the largest gap over 2 runs since 2026-10-25T10:00:00Z), last success 2026-11-01T11:55:00Z; expected again by 2026-11-01T13:45:00Z",
				"still using both keys within the quiet period: search",
				"never used n in the window: reports",
			},
			states:   map[string]CallerState{"search": CallerAccepted, "reports": CallerAccepted},
			expected: map[string]time.Time{"search": ago(-105 * time.Minute), "reports": ago(3*hour/2 - 7*day - 15*time.Minute)},
			accepted: []string{"reports", "search"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Analyze(tc.facts)
			if r.Verdict != tc.verdict {
				t.Errorf("verdict %v, want %v", r.Verdict, tc.verdict)
			}
			if !reflect.DeepEqual(r.Reasons, tc.reasons) {
				t.Errorf("reasons\n got %q\nwant %q", r.Reasons, tc.reasons)
			}
			if !reflect.DeepEqual(r.ServicesToChase, tc.chase) {
				t.Errorf("chase %q, want %q", r.ServicesToChase, tc.chase)
			}
			if !reflect.DeepEqual(r.Accepted, tc.accepted) {
				t.Errorf("accepted %q, want %q", r.Accepted, tc.accepted)
			}
			states := map[string]CallerState{}
			expected := map[string]time.Time{}
			for _, c := range r.Callers {
				states[c.Service] = c.State
				if !c.ExpectedBy.IsZero() {
					expected[c.Service] = c.ExpectedBy
				}
			}
			if len(states) == 0 {
				states = nil
			}
			if len(expected) == 0 {
				expected = nil
			}
			if !reflect.DeepEqual(states, tc.states) {
				t.Errorf("caller states %v, want %v", states, tc.states)
			}
			if !reflect.DeepEqual(expected, tc.expected) {
				t.Errorf("expected by %v, want %v", expected, tc.expected)
			}
		})
	}
}

func TestAnalyzeWindowFigures(t *testing.T) {
	r := Analyze(facts(func(f *Facts) {
		f.OldInWindow = []ServiceUse{
			{Service: "billing", Requests: 2, LastSeen: ago(100 * time.Minute), LastSuccess: ago(100 * time.Minute)},
			{Service: "search", Requests: 2, LastSeen: ago(5 * time.Minute), LastSuccess: ago(5 * time.Minute)},
		}
		f.NewInWindow = []ServiceUse{
			{Service: "billing", Requests: 2, FirstSeen: ago(90 * time.Minute), LastSeen: ago(30 * time.Minute)},
			{Service: "ingest", Requests: 1, FirstSeen: ago(50 * time.Minute), LastSeen: ago(50 * time.Minute)},
			{Service: "search", Requests: 1, FirstSeen: ago(80 * time.Minute), LastSeen: ago(80 * time.Minute)},
		}
		f.OldInQuiet = []ServiceUse{{Service: "search", Requests: 1}}
	}))
	want := []Service{
		{Service: "billing", OldRequests: 2, NewRequests: 2, OldLastSeen: ago(100 * time.Minute), OldLastSuccess: ago(100 * time.Minute), NewFirstSeen: ago(90 * time.Minute), NewLastSeen: ago(30 * time.Minute), Migration: Moved},
		{Service: "ingest", NewRequests: 1, NewFirstSeen: ago(50 * time.Minute), NewLastSeen: ago(50 * time.Minute), Migration: Moved},
		{Service: "search", OldRequests: 2, NewRequests: 1, OldLastSeen: ago(5 * time.Minute), OldLastSuccess: ago(5 * time.Minute), NewFirstSeen: ago(80 * time.Minute), NewLastSeen: ago(80 * time.Minute), Migration: Mixed, recentOldRequests: 1},
	}
	if !reflect.DeepEqual(r.Services, want) {
		t.Errorf("services\n got %+v\nwant %+v", r.Services, want)
	}
	if r.OldRequests != 4 || r.NewRequests != 4 || r.NewShare != 0.5 || !r.OldLastSuccess.Equal(ago(5*time.Minute)) || r.ServicesNotOnNewKey != nil {
		t.Errorf("totals old %d new %d share %v last success %v not on new %v", r.OldRequests, r.NewRequests, r.NewShare, r.OldLastSuccess, r.ServicesNotOnNewKey)
	}
	if !r.HistoryStart.Equal(ago(2*hour + 7*day)) {
		t.Errorf("history start %v", r.HistoryStart)
	}
}

func TestHistoryStartCoversTheQuietPeriod(t *testing.T) {
	if got := HistoryStart(ago(10*time.Minute), end, time.Hour, 30*time.Minute); !got.Equal(ago(time.Hour)) {
		t.Errorf("quiet reaching past the lookback: %v", got)
	}
	if got := HistoryStart(ago(2*hour), end, 15*time.Minute, 7*day); !got.Equal(ago(2*hour + 7*day)) {
		t.Errorf("lookback: %v", got)
	}
}

func TestApprox(t *testing.T) {
	for d, want := range map[time.Duration]string{
		30 * time.Second:                 "30s",
		59*time.Minute + 31*time.Second:  "1h",
		hour:                             "1h",
		hour + 30*time.Minute:            "1h30m",
		24*hour + 2*time.Minute:          "24h2m",
		47*hour + 59*time.Minute:         "47h59m",
		2*day + 22*hour + 10*time.Minute: "2d22h",
		7 * day:                          "7d",
		6*day + 23*hour + 40*time.Minute: "7d",
	} {
		if got := Approx(d); got != want {
			t.Errorf("Approx(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestNames(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Moved.String(), "moved"}, {Mixed.String(), "mixed"}, {NotStarted.String(), "not started"}, {Migration(0).String(), "unknown"},
		{SafeToRevoke.String(), "SAFE_TO_REVOKE"}, {NotYet.String(), "NOT_YET"},
		{CallerMoved.String(), "moved"}, {CallerPending.String(), "pending"}, {CallerOverdue.String(), "overdue"},
		{CallerAccepted.String(), "accepted"}, {CallerFailing.String(), "failing"}, {CallerState(0).String(), "unknown"},
	} {
		if c.got != c.want {
			t.Errorf("%q, want %q", c.got, c.want)
		}
	}
}
