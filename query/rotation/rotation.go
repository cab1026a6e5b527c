package rotation

import (
	"fmt"
	"sort"
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

// Facts are what the stored events say about the two keys.
type Facts struct {
	OldKey, NewKey string
	End            time.Time
	Quiet          time.Duration
	// Use of each key per service over the comparison window.
	OldInWindow, NewInWindow []ServiceUse
	// Use of the old key per service over the quiet period [End-Quiet, End).
	OldInQuiet []ServiceUse
}

// Migration of one service, mirroring keytrail.v1.ServiceMigration.
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

// Service is the per-service line of the report.
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
	recentOldSuccess  time.Time
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
	Services            []Service
	OldRequests         uint64
	NewRequests         uint64
	NewShare            float64
	ServicesNotOnNewKey []string
	OldLastSuccess      time.Time
	Verdict             Verdict
	Reasons             []string
	ServicesToChase     []string
}

// Share is new / (old + new), 0 when there was no traffic.
func Share(oldRequests, newRequests uint64) float64 {
	if oldRequests+newRequests == 0 {
		return 0
	}
	return float64(newRequests) / float64(oldRequests+newRequests)
}

// Analyze classifies every service and reaches the verdict.
func Analyze(f Facts) Result {
	byService := map[string]*Service{}
	get := func(name string) *Service {
		s, ok := byService[name]
		if !ok {
			s = &Service{Service: name}
			byService[name] = s
		}
		return s
	}
	var res Result
	for _, u := range f.OldInWindow {
		s := get(u.Service)
		s.OldRequests, s.OldLastSeen, s.OldLastSuccess = u.Requests, u.LastSeen, u.LastSuccess
		res.OldRequests += u.Requests
	}
	for _, u := range f.NewInWindow {
		s := get(u.Service)
		s.NewRequests, s.NewFirstSeen, s.NewLastSeen = u.Requests, u.FirstSeen, u.LastSeen
		res.NewRequests += u.Requests
	}
	quietStart := f.End.Add(-f.Quiet)
	var recentSuccesses []string
	for _, u := range f.OldInQuiet {
		s := get(u.Service)
		s.recentOldRequests, s.recentOldSuccess = u.Requests, u.LastSuccess
		if s.OldLastSeen.Before(u.LastSeen) {
			// The quiet period can reach before the window; it still counts as old-key use.
			s.OldLastSeen = u.LastSeen
		}
		if s.OldLastSuccess.Before(u.LastSuccess) {
			s.OldLastSuccess = u.LastSuccess
		}
		if !u.LastSuccess.IsZero() {
			recentSuccesses = append(recentSuccesses, u.Service)
		}
	}
	res.NewShare = Share(res.OldRequests, res.NewRequests)

	names := make([]string, 0, len(byService))
	for n := range byService {
		names = append(names, n)
	}
	sort.Strings(names)
	var notStarted, mixed []string
	for _, n := range names {
		s := byService[n]
		switch {
		case s.NewRequests == 0:
			s.Migration = NotStarted
			notStarted = append(notStarted, n)
			if s.OldRequests > 0 {
				res.ServicesNotOnNewKey = append(res.ServicesNotOnNewKey, n)
			}
		case s.recentOldRequests > 0:
			s.Migration = Mixed
			mixed = append(mixed, n)
		default:
			s.Migration = Moved
		}
		if res.OldLastSuccess.Before(s.OldLastSuccess) {
			res.OldLastSuccess = s.OldLastSuccess
		}
		res.Services = append(res.Services, *s)
	}

	chase := map[string]bool{}
	if len(recentSuccesses) == 0 {
		res.Verdict = SafeToRevoke
		res.Reasons = append(res.Reasons, fmt.Sprintf("no successful request on %s since %s (quiet period %s)", f.OldKey, quietStart.UTC().Format(time.RFC3339), f.Quiet))
	} else {
		res.Verdict = NotYet
		var recent uint64
		var last time.Time
		for _, n := range recentSuccesses {
			s := byService[n]
			recent += s.recentOldRequests
			if last.Before(s.recentOldSuccess) {
				last = s.recentOldSuccess
			}
			chase[n] = true
		}
		res.Reasons = append(res.Reasons, fmt.Sprintf("%s served %d requests to %d services in the last %s, the last success at %s: %s",
			f.OldKey, recent, len(recentSuccesses), f.Quiet, last.UTC().Format(time.RFC3339Nano), strings.Join(recentSuccesses, ", ")))
	}
	if len(mixed) > 0 {
		res.Reasons = append(res.Reasons, fmt.Sprintf("still using both keys within the quiet period: %s", strings.Join(mixed, ", ")))
	}
	if len(res.ServicesNotOnNewKey) > 0 {
		res.Reasons = append(res.Reasons, fmt.Sprintf("never used %s in the window: %s", f.NewKey, strings.Join(res.ServicesNotOnNewKey, ", ")))
		for _, n := range res.ServicesNotOnNewKey {
			s := byService[n]
			// A service whose old-key use still succeeds is one to chase even if it was
			// outside the quiet period: it has not moved and the key still works for it.
			if !s.OldLastSuccess.IsZero() {
				chase[n] = true
			}
		}
	}
	for _, n := range names {
		if chase[n] {
			res.ServicesToChase = append(res.ServicesToChase, n)
		}
	}
	return res
}
