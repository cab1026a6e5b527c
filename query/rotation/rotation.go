package rotation

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// ServiceUse is one service's use of one key over a range.
type ServiceUse struct {
	Service     string
	Requests    uint64
	FirstSeen   time.Time
	LastSeen    time.Time
	LastSuccess time.Time // zero when no request succeeded
}

// Calls is one service's use of the old key over the history (HistoryStart to the window's
// end): what its rhythm is learned from.
type Calls struct {
	Service     string
	Requests    uint64
	LastSeen    time.Time
	LastSuccess time.Time // zero when no request succeeded
	// Runs counts the groups of successful requests: a gap longer than the quiet period
	// between two successes starts a new run. 0 when no request succeeded.
	Runs int
	// LargestGap is the longest time between two consecutive successful requests. Successes
	// are read per minute (the last of each minute), so it is exact to about a minute.
	LargestGap time.Duration
}

// Facts are what the stored events say about the two keys, all within one project.
type Facts struct {
	OldKey, NewKey string
	// Start and End bound the comparison window [Start, End).
	Start, End time.Time
	Quiet      time.Duration
	Lookback   time.Duration
	// OldKeyStatus is the old key's status at End ("active", "disabled", "expired",
	// "deleted") and RevokedAt when it stopped being valid (zero while it is).
	OldKeyStatus string
	RevokedAt    time.Time
	// Use of each key per service over the window.
	OldInWindow, NewInWindow []ServiceUse
	// Use of the old key per service over the quiet period within the window,
	// [max(Start, End-Quiet), End).
	OldInQuiet []ServiceUse
	// Every service's calls on the old key over [HistoryStart, End).
	OldHistory []Calls
	// Use of the new key per service over [HistoryStart, End): a service has moved once it
	// succeeds on the new key after its last success on the old one.
	NewHistory []ServiceUse
	// Accepted are services the caller accepts losing the old key (accept_pending).
	Accepted []string
}

// HistoryStart is where the history read for the verdict begins: the lookback before the
// window, or the start of the quiet period if that reaches further back (the quiet rule must
// see every success in it, window or not).
func HistoryStart(start, end time.Time, quiet, lookback time.Duration) time.Time {
	h := start.Add(-lookback)
	if q := end.Add(-quiet); q.Before(h) {
		h = q
	}
	return h
}

// Migration of one service within the window, mirroring keytrail.v1.ServiceMigration.
type Migration int

const (
	Moved Migration = iota + 1
	Mixed
	NotStarted
)

func (m Migration) String() string {
	switch m {
	case Moved:
		return "moved"
	case Mixed:
		return "mixed"
	case NotStarted:
		return "not started"
	}
	return "unknown"
}

// Service is the per-service line of the window report.
type Service struct {
	Service           string
	OldRequests       uint64
	NewRequests       uint64
	OldLastSeen       time.Time
	OldLastSuccess    time.Time
	NewFirstSeen      time.Time
	NewLastSeen       time.Time
	Migration         Migration
	recentOldRequests uint64
}

// CallerState is where one service seen on the old key over the history stands, mirroring
// keytrail.v1.CallerState.
type CallerState int

const (
	// CallerMoved succeeded on the new key after its last success on the old key.
	CallerMoved CallerState = iota + 1
	// CallerPending has not moved and its next call is still due: it blocks the verdict.
	CallerPending
	// CallerOverdue has not moved, but its expected call did not come: taken as no longer
	// calling, it does not block.
	CallerOverdue
	// CallerAccepted has not moved and the caller accepted that (accept_pending).
	CallerAccepted
	// CallerFailing gets nothing from the old key: every request failed, or every one since
	// the key was revoked did. Revoking changes nothing for it; it does not block.
	CallerFailing
)

func (s CallerState) String() string {
	switch s {
	case CallerMoved:
		return "moved"
	case CallerPending:
		return "pending"
	case CallerOverdue:
		return "overdue"
	case CallerAccepted:
		return "accepted"
	case CallerFailing:
		return "failing"
	}
	return "unknown"
}

// Caller is the judgement of one service seen on the old key over the history.
type Caller struct {
	Service     string
	State       CallerState
	Requests    uint64
	LastSeen    time.Time
	LastSuccess time.Time
	Runs        int
	// Rhythm is the largest gap between its successful calls, learned when it called in at
	// least two runs; zero otherwise.
	Rhythm time.Duration
	// ExpectedBy is when its next successful call is due at the latest: the last success
	// plus the rhythm (the whole lookback without one) plus the quiet period. Zero for
	// services that moved or get nothing from the old key.
	ExpectedBy     time.Time
	NewLastSuccess time.Time
	// Evidence says why, in one sentence.
	Evidence string
}

// Verdict mirrors keytrail.v1.RotationVerdict.
type Verdict int

const (
	SafeToRevoke Verdict = iota + 1
	NotYet
)

func (v Verdict) String() string {
	if v == SafeToRevoke {
		return "SAFE_TO_REVOKE"
	}
	return "NOT_YET"
}

// Result is the judgement.
type Result struct {
	// Window figures: over [Start, End) only.
	Services            []Service
	OldRequests         uint64
	NewRequests         uint64
	NewShare            float64
	ServicesNotOnNewKey []string
	OldLastSuccess      time.Time
	// History figures: over [HistoryStart, End).
	HistoryStart time.Time
	Callers      []Caller
	// Accepted are the services judged CallerAccepted.
	Accepted        []string
	Verdict         Verdict
	Reasons         []string
	ServicesToChase []string
}

// Share is new / (old + new), 0 when there was no traffic.
func Share(oldRequests, newRequests uint64) float64 {
	if oldRequests+newRequests == 0 {
		return 0
	}
	return float64(newRequests) / float64(oldRequests+newRequests)
}

// Analyze classifies every service and reaches the verdict. The verdict keeps the package's
// promise (doc.go); the window lists only describe the window.
func Analyze(f Facts) Result {
	res := Result{HistoryStart: HistoryStart(f.Start, f.End, f.Quiet, f.Lookback)}
	mixed := res.window(f)
	res.judgeCallers(f)

	quietStart := f.End.Add(-f.Quiet)
	var activeInQuiet []string
	var lastInQuiet time.Time
	var pending, overdue, failing, accepted []Caller
	for _, c := range res.Callers {
		switch c.State {
		case CallerPending:
			pending = append(pending, c)
		case CallerOverdue:
			overdue = append(overdue, c)
		case CallerFailing:
			failing = append(failing, c)
		case CallerAccepted:
			accepted = append(accepted, c)
			res.Accepted = append(res.Accepted, c.Service)
		}
		if c.State != CallerAccepted && !c.LastSuccess.Before(quietStart) {
			activeInQuiet = append(activeInQuiet, c.Service)
			lastInQuiet = later(lastInQuiet, c.LastSuccess)
		}
		if c.State == CallerPending || c.State == CallerFailing {
			res.ServicesToChase = append(res.ServicesToChase, c.Service)
		}
	}

	if len(activeInQuiet) == 0 && len(pending) == 0 {
		res.Verdict = SafeToRevoke
		res.Reasons = append(res.Reasons, fmt.Sprintf("no successful request on %s in the %s before the window end", f.OldKey, f.Quiet))
	} else {
		res.Verdict = NotYet
		if len(activeInQuiet) > 0 {
			res.Reasons = append(res.Reasons, fmt.Sprintf("%s served successful requests to %d services in the %s before the window end, the last at %s: %s",
				f.OldKey, len(activeInQuiet), f.Quiet, stamp(lastInQuiet), strings.Join(activeInQuiet, ", ")))
		}
	}
	for _, group := range [][]Caller{pending, overdue, failing, accepted} {
		for _, c := range group {
			res.Reasons = append(res.Reasons, c.Evidence)
		}
	}
	var unmatched []string
	for _, name := range uniqueSorted(f.Accepted) {
		if !slices.Contains(res.Accepted, name) {
			unmatched = append(unmatched, name)
		}
	}
	if len(unmatched) > 0 {
		res.Reasons = append(res.Reasons, fmt.Sprintf("accept_pending names services with nothing pending on %s since %s: %s",
			f.OldKey, stamp(res.HistoryStart), strings.Join(unmatched, ", ")))
	}
	if len(mixed) > 0 {
		res.Reasons = append(res.Reasons, fmt.Sprintf("still using both keys within the quiet period: %s", strings.Join(mixed, ", ")))
	}
	if len(res.ServicesNotOnNewKey) > 0 {
		res.Reasons = append(res.Reasons, fmt.Sprintf("never used %s in the window: %s", f.NewKey, strings.Join(res.ServicesNotOnNewKey, ", ")))
	}
	return res
}

// window fills the window figures and returns the services still on both keys.
func (res *Result) window(f Facts) (mixed []string) {
	byService := map[string]*Service{}
	get := func(name string) *Service {
		s, ok := byService[name]
		if !ok {
			s = &Service{Service: name}
			byService[name] = s
		}
		return s
	}
	for _, u := range f.OldInWindow {
		s := get(u.Service)
		s.OldRequests, s.OldLastSeen, s.OldLastSuccess = u.Requests, u.LastSeen, u.LastSuccess
		res.OldRequests += u.Requests
		res.OldLastSuccess = later(res.OldLastSuccess, u.LastSuccess)
	}
	for _, u := range f.NewInWindow {
		s := get(u.Service)
		s.NewRequests, s.NewFirstSeen, s.NewLastSeen = u.Requests, u.FirstSeen, u.LastSeen
		res.NewRequests += u.Requests
	}
	for _, u := range f.OldInQuiet {
		// The quiet range lies within the window, so every service in it is listed already.
		if s, ok := byService[u.Service]; ok {
			s.recentOldRequests = u.Requests
		}
	}
	res.NewShare = Share(res.OldRequests, res.NewRequests)

	names := make([]string, 0, len(byService))
	for n := range byService {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		s := byService[n]
		switch {
		case s.NewRequests == 0:
			s.Migration = NotStarted
			if s.OldRequests > 0 {
				res.ServicesNotOnNewKey = append(res.ServicesNotOnNewKey, n)
			}
		case s.recentOldRequests > 0:
			s.Migration = Mixed
			mixed = append(mixed, n)
		default:
			s.Migration = Moved
		}
		res.Services = append(res.Services, *s)
	}
	return mixed
}

// judgeCallers gives every service seen on the old key over the history its state.
func (res *Result) judgeCallers(f Facts) {
	newLast := map[string]time.Time{}
	for _, u := range f.NewHistory {
		newLast[u.Service] = u.LastSuccess
	}
	history := slices.Clone(f.OldHistory)
	slices.SortFunc(history, func(a, b Calls) int { return strings.Compare(a.Service, b.Service) })
	for _, h := range history {
		c := Caller{
			Service: h.Service, Requests: h.Requests, LastSeen: h.LastSeen, LastSuccess: h.LastSuccess,
			Runs: h.Runs, NewLastSuccess: newLast[h.Service],
		}
		if !c.NewLastSuccess.IsZero() && c.NewLastSuccess.After(h.LastSuccess) {
			c.State = CallerMoved
			c.Evidence = fmt.Sprintf("%s moved to %s: last success there %s", h.Service, f.NewKey, stamp(c.NewLastSuccess))
			if !h.LastSuccess.IsZero() {
				c.Evidence += fmt.Sprintf(", after its last on %s at %s", f.OldKey, stamp(h.LastSuccess))
			}
			res.Callers = append(res.Callers, c)
			continue
		}
		revoked := !f.RevokedAt.IsZero()
		switch {
		case h.LastSuccess.IsZero():
			c.State = CallerFailing
			c.Evidence = fmt.Sprintf("%s: all its %d requests on %s since %s failed (the last at %s); the key serves it nothing",
				h.Service, h.Requests, f.OldKey, stamp(res.HistoryStart), stamp(h.LastSeen))
		case revoked && h.LastSeen.After(f.RevokedAt) && h.LastSuccess.Before(f.RevokedAt):
			c.State = CallerFailing
			c.Evidence = fmt.Sprintf("%s: its requests on %s since it was %s at %s failed (the last at %s, the last success at %s); revoking changes nothing for it",
				h.Service, f.OldKey, f.OldKeyStatus, stamp(f.RevokedAt), stamp(h.LastSeen), stamp(h.LastSuccess))
		default:
			wait := f.Lookback
			var rhythm string
			if h.Runs >= 2 {
				c.Rhythm, wait = h.LargestGap, h.LargestGap
				rhythm = fmt.Sprintf("calls %s about every %s (the largest gap over %d runs since %s), last success %s",
					f.OldKey, Approx(h.LargestGap), h.Runs, stamp(res.HistoryStart), stamp(h.LastSuccess))
			} else {
				rhythm = fmt.Sprintf("called %s in one run since %s, last success %s; no rhythm to learn, so it is given the whole lookback (%s)",
					f.OldKey, stamp(res.HistoryStart), stamp(h.LastSuccess), Approx(f.Lookback))
			}
			c.ExpectedBy = h.LastSuccess.Add(wait + f.Quiet)
			if f.End.Before(c.ExpectedBy) {
				c.State = CallerPending
				c.Evidence = fmt.Sprintf("%s has not moved to %s: %s; expected again by %s", h.Service, f.NewKey, rhythm, stamp(c.ExpectedBy))
			} else {
				c.State = CallerOverdue
				c.Evidence = fmt.Sprintf("%s has not moved to %s: %s; expected again by %s but not seen since, so taken as no longer calling",
					h.Service, f.NewKey, rhythm, stamp(c.ExpectedBy))
			}
		}
		if slices.Contains(f.Accepted, h.Service) {
			c.State = CallerAccepted
			c.Evidence = "accepted by the caller (accept_pending): " + c.Evidence
		}
		res.Callers = append(res.Callers, c)
	}
}

// Approx renders a duration the way a person says a rhythm: "45m", "24h", "1h30m", "3d",
// "2d22h" (minutes dropped from two days on, seconds below a minute only).
func Approx(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%ds", int64(d.Round(time.Second)/time.Second))
	}
	const day = 24 * time.Hour
	if d >= 2*day {
		d = d.Round(time.Hour)
		s := fmt.Sprintf("%dd", int64(d/day))
		if h := int64(d % day / time.Hour); h > 0 {
			s += fmt.Sprintf("%dh", h)
		}
		return s
	}
	d = d.Round(time.Minute)
	var s string
	if h := int64(d / time.Hour); h > 0 {
		s = fmt.Sprintf("%dh", h)
	}
	if m := int64(d % time.Hour / time.Minute); m > 0 {
		s += fmt.Sprintf("%dm", m)
	}
	return s
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func uniqueSorted(names []string) []string {
	out := slices.Clone(names)
	slices.Sort(out)
	return slices.Compact(out)
}
