package budget

import "time"

// Period is a calendar unit in UTC. Day, Week and Month are the budget periods; Hour, Day
// and Month are the buckets of spend reports.
type Period int

// The periods. The zero value is not a period.
const (
	Hour Period = iota + 1
	Day
	Week // ISO week: Monday 00:00 UTC to the next Monday
	Month
)

// ParsePeriod maps a stored budget period name ("day", "week", "month", as written by the
// ingester) to a Period; ok is false for anything else, including "" (no period).
func ParsePeriod(name string) (p Period, ok bool) {
	switch name {
	case "day":
		return Day, true
	case "week":
		return Week, true
	case "month":
		return Month, true
	}
	return 0, false
}

// String is the lower-case name: "hour", "day", "week" or "month".
func (p Period) String() string {
	switch p {
	case Hour:
		return "hour"
	case Day:
		return "day"
	case Week:
		return "week"
	case Month:
		return "month"
	}
	return "unknown"
}

// Start is the start of the period containing t, in UTC.
func (p Period) Start(t time.Time) time.Time {
	t = t.UTC()
	switch p {
	case Hour:
		return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), 0, 0, 0, time.UTC)
	case Day:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	case Week:
		// time.Weekday counts from Sunday; ISO weeks start on Monday.
		back := (int(t.Weekday()) + 6) % 7
		return time.Date(t.Year(), t.Month(), t.Day()-back, 0, 0, 0, 0, time.UTC)
	case Month:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	}
	panic("budget: Start of unknown period " + p.String())
}

// Shift moves a period start by n periods (n may be negative). start must be a period start.
func (p Period) Shift(start time.Time, n int) time.Time {
	start = start.UTC()
	switch p {
	case Hour:
		return start.Add(time.Duration(n) * time.Hour)
	case Day:
		return start.AddDate(0, 0, n)
	case Week:
		return start.AddDate(0, 0, 7*n)
	case Month:
		// Day 1 never overflows into the next month, so AddDate's normalisation is exact here.
		return start.AddDate(0, n, 0)
	}
	panic("budget: Shift of unknown period " + p.String())
}

// Cover widens [start, end) to whole periods: from the start of the period containing start
// to the end of the period containing the last instant before end. An end already on a
// period boundary stays where it is.
func (p Period) Cover(start, end time.Time) (time.Time, time.Time) {
	from := p.Start(start)
	to := p.Start(end)
	if to.Before(end.UTC()) {
		to = p.Shift(to, 1)
	}
	return from, to
}
