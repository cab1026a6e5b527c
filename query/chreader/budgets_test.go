package chreader

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/budget"
)

func TestKeyBudgetsSQL(t *testing.T) {
	at := mustTime(t, "2026-03-02T00:30:00.25Z")
	got := KeyBudgets(BudgetFilter{Project: "acme", KeyID: "key_a"}, at)
	wantSQL := `SELECT project, key_id, argMax(assumeNotNull(budget_amount_micros), (event_time_ms, event_id)) AS amount_micros, argMax(budget_period, (event_time_ms, event_id)) AS period
FROM lifecycle_events
WHERE event_time <= toDateTime(?)
  AND event_time_ms <= ?
  AND budget_amount_micros IS NOT NULL
  AND project = ?
  AND key_id = ?
GROUP BY project, key_id
ORDER BY project, key_id`
	wantArgs := []any{int64(1772411400), int64(1772411400250), "acme", "key_a"}
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

// budgetKeysSQL is the budgeted-keys subquery BudgetSpend emits, with the caller's filter.
func budgetKeysSQL(filter string) string {
	return `(project, key_id) IN
      (
          SELECT project, key_id
          FROM lifecycle_events
          WHERE event_time <= toDateTime(?)
            AND event_time_ms <= ?
            AND budget_amount_micros IS NOT NULL
            AND ` + filter + `
          GROUP BY project, key_id
          HAVING argMax(budget_period, (event_time_ms, event_id)) = ?
      )`
}

func TestBudgetSpendSQL(t *testing.T) {
	at := mustTime(t, "2026-03-02T00:30:00.25Z")
	from := mustTime(t, "2026-02-09T00:00:00Z")
	got := BudgetSpend(BudgetFilter{Project: "acme"}, budget.Week, from, at)
	keys := budgetKeysSQL("project = ?")
	wantSQL := `SELECT project, key_id, period_start, sum(cost) AS cost_micros
FROM
(
    SELECT project, key_id, toDateTime(toMonday(day, 'UTC'), 'UTC') AS period_start, sum(total_cost_micros) AS cost
    FROM spend_daily
    WHERE day >= toDateTime(?)
      AND day < toDateTime(?)
      AND project = ?
      AND ` + keys + `
    GROUP BY project, key_id, period_start
    UNION ALL
    SELECT project, key_id, toDateTime(toMonday(hour, 'UTC'), 'UTC') AS period_start, sum(total_cost_micros) AS cost
    FROM usage_key_hourly
    WHERE hour >= toDateTime(?)
      AND hour < toDateTime(?)
      AND project = ?
      AND ` + keys + `
    GROUP BY project, key_id, period_start
    UNION ALL
    SELECT project, key_id, toDateTime(toMonday(event_time, 'UTC'), 'UTC') AS period_start, sum(cost_micros) AS cost
    FROM usage_events
    WHERE event_time >= toDateTime(?)
      AND event_time <= toDateTime(?)
      AND event_time_ms >= ?
      AND event_time_ms <= ?
      AND project = ?
      AND key_id IN
      (
          SELECT key_id
          FROM lifecycle_events
          WHERE event_time <= toDateTime(?)
            AND event_time_ms <= ?
            AND budget_amount_micros IS NOT NULL
            AND project = ?
          GROUP BY project, key_id
          HAVING argMax(budget_period, (event_time_ms, event_id)) = ?
      )
      AND ` + keys + `
    GROUP BY project, key_id, period_start
)
GROUP BY project, key_id, period_start`
	keyArgs := []any{int64(1772411400), int64(1772411400250), "acme", "week"}
	// at = 2026-03-02 00:30:00.25: whole days from 2026-02-09 to 03-02 00:00, whole hours of
	// 03-02 (none: 00:00 to 00:00), raw rows from 00:00 to the millisecond.
	wantArgs := append([]any{int64(1770595200), int64(1772409600), "acme"}, keyArgs...)
	wantArgs = append(wantArgs, int64(1772409600), int64(1772409600), "acme")
	wantArgs = append(wantArgs, keyArgs...)
	wantArgs = append(wantArgs, int64(1772409600), int64(1772411400), int64(1772409600000), int64(1772411400250), "acme")
	wantArgs = append(wantArgs, keyArgs...)
	wantArgs = append(wantArgs, keyArgs...)
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

func TestBudgetSpendNowSQL(t *testing.T) {
	now := mustTime(t, "2026-03-02T00:30:00.25Z")
	got := BudgetSpendNow(BudgetFilter{KeyID: "key_a"}, budget.Day, mustTime(t, "2026-02-27T00:00:00Z"), now)
	keys := budgetKeysSQL("key_id = ?")
	wantSQL := `SELECT project, key_id, period_start, sum(cost) AS cost_micros
FROM
(
    SELECT project, key_id, toStartOfDay(day, 'UTC') AS period_start, sum(total_cost_micros) AS cost
    FROM spend_daily
    WHERE day >= toDateTime(?)
      AND day < toDateTime(?)
      AND key_id = ?
      AND ` + keys + `
    GROUP BY project, key_id, period_start
    UNION ALL
    SELECT project, key_id, toStartOfDay(hour, 'UTC') AS period_start, sum(total_cost_micros) AS cost
    FROM usage_key_hourly
    WHERE hour >= toDateTime(?)
      AND key_id = ?
      AND ` + keys + `
    GROUP BY project, key_id, period_start
)
GROUP BY project, key_id, period_start`
	keyArgs := []any{int64(1772411400), int64(1772411400250), "key_a", "day"}
	// Whole days from 02-27 to 03-02 00:00, then every hour from 03-02 00:00 on: no raw rows.
	wantArgs := append([]any{int64(1772150400), int64(1772409600), "key_a"}, keyArgs...)
	wantArgs = append(append(wantArgs, int64(1772409600), "key_a"), keyArgs...)
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}

func TestBudgetSpendSQLPeriodBuckets(t *testing.T) {
	at := mustTime(t, "2026-03-02T00:30:00Z")
	for p, want := range map[budget.Period]string{
		budget.Day:   "toStartOfDay(day, 'UTC') AS period_start",
		budget.Month: "toDateTime(toStartOfMonth(day, 'UTC'), 'UTC') AS period_start",
	} {
		q := BudgetSpend(BudgetFilter{}, p, p.Start(at), at)
		if !containsLine(q.SQL, "    SELECT project, key_id, "+want+", sum(total_cost_micros) AS cost") {
			t.Errorf("%s: SQL lacks %q:\n%s", p, want, q.SQL)
		}
		if q.Args[len(q.Args)-1] != p.String() {
			t.Errorf("%s: period bound as %v", p, q.Args[len(q.Args)-1])
		}
	}
}

func containsLine(sql, line string) bool {
	for _, l := range strings.Split(sql, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

// The stored period names (written by the ingester) are the ones budget.ParsePeriod reads
// and BudgetSpend binds.
func TestBudgetPeriodNamesMatchStorage(t *testing.T) {
	for proto, want := range map[keytrailv1.BudgetPeriod]budget.Period{
		keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY:   budget.Day,
		keytrailv1.BudgetPeriod_BUDGET_PERIOD_WEEK:  budget.Week,
		keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH: budget.Month,
	} {
		name := event.BudgetPeriodName(proto)
		if got, ok := budget.ParsePeriod(name); !ok || got != want || want.String() != name {
			t.Errorf("%s stored as %q: parsed %v %v, binds %q", proto, name, got, ok, want.String())
		}
	}
}

func TestResolveBudgets(t *testing.T) {
	now := mustTime(t, "2026-03-02T12:00:00Z")
	p, err := resolveBudgets(BudgetsRequest{}, now)
	if err != nil || p.threshold != 80 || p.previous != 3 || !p.at.Equal(now) {
		t.Errorf("defaults: %+v %v", p, err)
	}
	at := mustTime(t, "2026-01-01T00:00:00Z")
	p, err = resolveBudgets(BudgetsRequest{ThresholdPercent: 95.5, PreviousPeriods: 24, At: at}, now)
	if err != nil || p.threshold != 95.5 || p.previous != 24 || !p.at.Equal(at) {
		t.Errorf("given: %+v %v", p, err)
	}
	for _, tt := range []struct {
		req  BudgetsRequest
		want string
	}{
		{BudgetsRequest{ThresholdPercent: -1}, "threshold_percent: must be between 0 and 1000"},
		{BudgetsRequest{ThresholdPercent: 1000.5}, "threshold_percent: must be between 0 and 1000"},
		{BudgetsRequest{ThresholdPercent: math.NaN()}, "threshold_percent: must be between 0 and 1000"},
		{BudgetsRequest{PreviousPeriods: 25}, "previous_periods: must be between 0 and 24"},
		{BudgetsRequest{PreviousPeriods: -1}, "previous_periods: must be between 0 and 24"},
	} {
		_, err := resolveBudgets(tt.req, now)
		var invalid *InvalidError
		if !errors.As(err, &invalid) || err.Error() != tt.want {
			t.Errorf("%+v: error %v, want %q", tt.req, err, tt.want)
		}
	}
}

func TestEvaluateBudgets(t *testing.T) {
	at := mustTime(t, "2026-03-02T00:30:00Z") // a Monday
	day := func(s string) int64 { return mustTime(t, s).Unix() }
	budgets := []KeyBudget{
		{Project: "acme", KeyID: "k_day", AmountMicros: 1_000_000, Period: budget.Day},
		{Project: "acme", KeyID: "k_week", AmountMicros: 2_000_000, Period: budget.Week},
		{Project: "acme", KeyID: "k_month", AmountMicros: 10_000_000, Period: budget.Month},
		{Project: "beta", KeyID: "k_idle", AmountMicros: 100, Period: budget.Day},
	}
	spend := map[budgetPeriodKey]int64{
		{"acme", "k_day", day("2026-03-02T00:00:00Z")}:   800_000,
		{"acme", "k_day", day("2026-03-01T00:00:00Z")}:   900_000,
		{"acme", "k_week", day("2026-03-02T00:00:00Z")}:  2_500_000,
		{"acme", "k_week", day("2026-02-23T00:00:00Z")}:  1_400_000,
		{"acme", "k_month", day("2026-03-01T00:00:00Z")}: 3_000_000,
		// Another key's spend, or a period outside the window, changes nothing.
		{"acme", "k_none", day("2026-03-02T00:00:00Z")}: 5,
		{"acme", "k_day", day("2026-02-01T00:00:00Z")}:  7,
	}
	params := budgetParams{threshold: 80, previous: 1, at: at}
	got := evaluateBudgets(budgets, spend, params, false)
	ps := func(start, end string, cost int64, pct float64) PeriodSpend {
		return PeriodSpend{Start: mustTime(t, start), End: mustTime(t, end), CostMicros: cost, PercentUsed: pct}
	}
	want := []BudgetUtilization{
		{KeyBudget: budgets[1], Status: budget.Over,
			Current:  ps("2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z", 2_500_000, 125),
			Previous: []PeriodSpend{ps("2026-02-23T00:00:00Z", "2026-03-02T00:00:00Z", 1_400_000, 70)}},
		{KeyBudget: budgets[0], Status: budget.Near,
			Current:  ps("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 800_000, 80),
			Previous: []PeriodSpend{ps("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", 900_000, 90)}},
		{KeyBudget: budgets[2], Status: budget.OK,
			Current:  ps("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", 3_000_000, 30),
			Previous: []PeriodSpend{ps("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", 0, 0)}},
		{KeyBudget: budgets[3], Status: budget.OK,
			Current:  ps("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", 0, 0),
			Previous: []PeriodSpend{ps("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", 0, 0)}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	alerting := evaluateBudgets(budgets, spend, budgetParams{threshold: 85, previous: 0, at: at}, true)
	if len(alerting) != 1 || alerting[0].KeyID != "k_week" || alerting[0].Previous != nil {
		t.Errorf("only alerting at 85%%: %+v", alerting)
	}
}
