package budget

import (
	"math"
	"testing"
	"time"
)

func ts(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPeriodStartAndShift(t *testing.T) {
	tests := []struct {
		period      Period
		at          string
		start, next string
		prev        string
	}{
		{Hour, "2026-03-01T23:59:59.999Z", "2026-03-01T23:00:00Z", "2026-03-02T00:00:00Z", "2026-03-01T22:00:00Z"},
		{Day, "2026-03-01T23:59:59.999Z", "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-02-28T00:00:00Z"},
		{Day, "2026-03-02T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", "2026-03-01T00:00:00Z"},
		// 2026-03-01 is a Sunday: it belongs to the ISO week that started on Monday 02-23.
		{Week, "2026-03-01T23:59:59.999Z", "2026-02-23T00:00:00Z", "2026-03-02T00:00:00Z", "2026-02-16T00:00:00Z"},
		{Week, "2026-03-02T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z", "2026-02-23T00:00:00Z"},
		// A week across a year end.
		{Week, "2027-01-01T08:00:00Z", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z", "2026-12-21T00:00:00Z"},
		{Month, "2026-02-28T23:59:59.999Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-01-01T00:00:00Z"},
		{Month, "2026-03-31T10:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-02-01T00:00:00Z"},
		{Month, "2026-01-15T00:00:00Z", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "2025-12-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.period.String()+" "+tt.at, func(t *testing.T) {
			start := tt.period.Start(ts(t, tt.at))
			if !start.Equal(ts(t, tt.start)) || start.Location() != time.UTC {
				t.Errorf("Start = %s, want %s UTC", start, tt.start)
			}
			if got := tt.period.Shift(start, 1); !got.Equal(ts(t, tt.next)) {
				t.Errorf("Shift(+1) = %s, want %s", got, tt.next)
			}
			if got := tt.period.Shift(start, -1); !got.Equal(ts(t, tt.prev)) {
				t.Errorf("Shift(-1) = %s, want %s", got, tt.prev)
			}
		})
	}
}

func TestPeriodStartIgnoresTheCallersZone(t *testing.T) {
	tokyo := time.FixedZone("JST", 9*3600)
	// 2026-03-02 08:30 in Tokyo is 2026-03-01 23:30 UTC: still day 03-01.
	got := Day.Start(time.Date(2026, 3, 2, 8, 30, 0, 0, tokyo))
	if want := ts(t, "2026-03-01T00:00:00Z"); !got.Equal(want) {
		t.Errorf("Start = %s, want %s", got, want)
	}
}

func TestCover(t *testing.T) {
	tests := []struct {
		period     Period
		start, end string
		from, to   string
	}{
		{Day, "2026-03-01T06:00:00Z", "2026-03-02T12:00:00Z", "2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z"},
		{Day, "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z"},
		{Day, "2026-03-01T00:00:00Z", "2026-03-02T00:00:00.001Z", "2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z"},
		{Hour, "2026-03-01T06:59:59.999Z", "2026-03-01T07:00:00Z", "2026-03-01T06:00:00Z", "2026-03-01T07:00:00Z"},
		{Month, "2026-02-15T00:00:00Z", "2026-04-15T00:00:00Z", "2026-02-01T00:00:00Z", "2026-05-01T00:00:00Z"},
	}
	for _, tt := range tests {
		from, to := tt.period.Cover(ts(t, tt.start), ts(t, tt.end))
		if !from.Equal(ts(t, tt.from)) || !to.Equal(ts(t, tt.to)) {
			t.Errorf("%s.Cover(%s, %s) = [%s, %s), want [%s, %s)", tt.period, tt.start, tt.end, from, to, tt.from, tt.to)
		}
	}
}

func TestParsePeriod(t *testing.T) {
	for name, want := range map[string]Period{"day": Day, "week": Week, "month": Month} {
		if got, ok := ParsePeriod(name); !ok || got != want {
			t.Errorf("ParsePeriod(%q) = %v, %v", name, got, ok)
		}
	}
	for _, name := range []string{"", "hour", "DAY", "year"} {
		if _, ok := ParsePeriod(name); ok {
			t.Errorf("ParsePeriod(%q) accepted", name)
		}
	}
}

func TestFormatMicros(t *testing.T) {
	tests := map[int64]string{
		0:                  "0.000000",
		5:                  "0.000005",
		999_999:            "0.999999",
		1_000_000:          "1.000000",
		12_345_678:         "12.345678",
		3_750_001:          "3.750001",
		math.MaxInt64:      "9223372036854.775807",
		-1:                 "-0.000001",
		-12_345_678:        "-12.345678",
		math.MinInt64:      "-9223372036854.775808",
		100_000_000_000_01: "10000000.000001",
	}
	for micros, want := range tests {
		if got := FormatMicros(micros); got != want {
			t.Errorf("FormatMicros(%d) = %q, want %q", micros, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		spend, budget int64
		threshold     float64
		want          Status
		percent       float64
	}{
		{0, 1_000_000, 80, OK, 0},
		{799_999, 1_000_000, 80, OK, 79.9999},
		{800_000, 1_000_000, 80, Near, 80},
		{999_999, 1_000_000, 80, Near, 99.9999},
		{1_000_000, 1_000_000, 80, Over, 100},
		{2_500_000, 2_000_000, 80, Over, 125},
		// 0.1 is not exact in binary (the float is a little above one tenth), yet 1 micro of
		// 1000 is exactly the 0.1% the caller asked for.
		{0, 1000, 0.1, OK, 0},
		{1, 1000, 0.1, Near, 0.1},
		{332, 1000, 33.3, OK, 33.2},
		{333, 1000, 33.3, Near, 33.3},
		// A threshold above 100 never makes NEAR: OVER comes first.
		{1_500_000, 1_000_000, 150, Over, 150},
		{math.MaxInt64, math.MaxInt64, 80, Over, 100},
		{math.MaxInt64 - 1, math.MaxInt64, 80, Near, 100},
		{10, 1000, math.NaN(), OK, 1},
	}
	for _, tt := range tests {
		if got := Classify(tt.spend, tt.budget, tt.threshold); got != tt.want {
			t.Errorf("Classify(%d, %d, %v) = %s, want %s", tt.spend, tt.budget, tt.threshold, got, tt.want)
		}
		if got := PercentUsed(tt.spend, tt.budget); math.Abs(got-tt.percent) > 1e-9 {
			t.Errorf("PercentUsed(%d, %d) = %v, want %v", tt.spend, tt.budget, got, tt.percent)
		}
	}
	if got := PercentUsed(10, 0); got != 0 {
		t.Errorf("PercentUsed of a zero budget = %v", got)
	}
}
