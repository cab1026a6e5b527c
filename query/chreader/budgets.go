package chreader

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/keytrail/keytrail/query/budget"
)

// Budgets: which keys have a budget, and how much of it they spent in the current and past
// periods.
//
//   - A key's budget at an instant `at` is the one carried by its latest lifecycle event at or
//     before `at` that has a budget (ACTION_BUDGET_CHANGED, or any other action carrying one,
//     such as a creation with a budget). Ties on the millisecond go to the larger event id, so
//     the answer does not depend on storage order. A latest budget of 0 micros means the
//     budget was removed: the key is not listed.
//   - Periods are UTC: a day starts at midnight, a week on Monday 00:00 (ISO), a month on the
//     1st at 00:00.
//   - The budget in effect at `at` applies to the whole current period, even when it was set
//     halfway through it, and the previous periods are measured against that same budget so
//     that their percentages compare with the current one (the budget history is in the audit
//     trail).
//   - The current period counts spend up to and including the millisecond `at`, exactly:
//     whole days come from spend_daily, the whole hours of the day containing `at` from
//     usage_key_hourly and the partial hour containing `at` from the raw usage_events (one hour
//     of raw rows at most, for keys with a budget only). Without `at` (as of now) every stored
//     request of the period counts, also one stamped a little ahead of the server's clock,
//     and the rollups alone answer (BudgetSpendNow).

// Budget defaults and bounds.
const (
	DefaultBudgetThresholdPercent = 80
	MaxBudgetThresholdPercent     = 1000
	DefaultBudgetPreviousPeriods  = 3
	MaxBudgetPreviousPeriods      = 24
)

// BudgetFilter narrows budgets; empty fields match everything.
type BudgetFilter struct {
	Project string
	KeyID   string
}

// KeyBudget is the budget in effect for a key.
type KeyBudget struct {
	Project      string
	KeyID        string
	AmountMicros int64
	Period       budget.Period
}

// PeriodSpend is the spend of a key in one budget period [Start, End).
type PeriodSpend struct {
	Start, End  time.Time
	CostMicros  int64
	PercentUsed float64
}

// BudgetUtilization is a key's budget with its spend in the current and past periods.
type BudgetUtilization struct {
	KeyBudget
	// Current is the period containing the evaluation instant; its spend counts up to it.
	Current PeriodSpend
	// Previous are the periods before it, newest first.
	Previous []PeriodSpend
	Status   budget.Status
}

// latestBudget orders a key's budget-carrying events: the last one wins.
const latestBudget = "(event_time_ms, event_id)"

// budgetEventsWhere selects the events that carry a budget and happened at or before at.
func budgetEventsWhere(f BudgetFilter, at time.Time) ([]string, []any) {
	ms := at.UnixMilli()
	where := []string{"event_time <= toDateTime(?)", "event_time_ms <= ?", "budget_amount_micros IS NOT NULL"}
	args := []any{floorSec(ms), ms}
	if f.Project != "" {
		where = append(where, "project = ?")
		args = append(args, f.Project)
	}
	if f.KeyID != "" {
		where = append(where, "key_id = ?")
		args = append(args, f.KeyID)
	}
	return where, args
}

// KeyBudgets is the budget in effect at `at` for every key that has one: the amount and
// stored period name ("day", "week", "month") of the key's latest budget-carrying event.
func KeyBudgets(f BudgetFilter, at time.Time) Query {
	where, args := budgetEventsWhere(f, at)
	sql := "SELECT project, key_id, argMax(assumeNotNull(budget_amount_micros), " + latestBudget + ") AS amount_micros, argMax(budget_period, " + latestBudget + ") AS period" +
		"\nFROM lifecycle_events\nWHERE " + strings.Join(where, "\n  AND ") +
		"\nGROUP BY project, key_id\nORDER BY project, key_id"
	return Query{SQL: sql, Args: args}
}

// BudgetSpend is the spend per period of p from `from` (a period start, so a day start) up
// to and including the millisecond `at`, of every key whose budget at `at` has period p:
// whole days from spend_daily, whole hours of the day containing `at` from usage_key_hourly,
// the partial hour containing `at` from usage_events.
func BudgetSpend(f BudgetFilter, p budget.Period, from, at time.Time) Query {
	return budgetSpend(f, p, from, at, true)
}

// BudgetSpendNow is BudgetSpend as of now: every stored request from `from` on counts, also
// one stamped a little ahead of the server's clock (ingestion accepts an hour of skew), as
// in a key's last use as of now. With no instant to cut at, no raw row is needed: whole days
// from spend_daily, the hours since from usage_key_hourly. The exact cut at an instant needs
// the raw partial hour, and usage_events, sorted by key, cannot read an hour of the budgeted
// keys without their other rows (at 100M events: 15M rows, 1.2 s).
func BudgetSpendNow(f BudgetFilter, p budget.Period, from, now time.Time) Query {
	return budgetSpend(f, p, from, now, false)
}

func budgetSpend(f BudgetFilter, p budget.Period, from, at time.Time, exact bool) Query {
	day, hour := budget.Day.Start(at), budget.Hour.Start(at)
	atMs := at.UnixMilli()

	// The keys whose budget at `at` has this period, as an IN set. A subquery rather than a
	// list of bound ids: thousands of keys would not fit ClickHouse's max_query_size.
	evWhere, evArgs := budgetEventsWhere(f, at)
	budgeted := func(columns string) string {
		return columns + " IN\n      (\n          SELECT " + strings.Trim(columns, "()") + "\n          FROM lifecycle_events\n          WHERE " +
			strings.Join(evWhere, "\n            AND ") +
			"\n          GROUP BY project, key_id\n          HAVING argMax(budget_period, " + latestBudget + ") = ?\n      )"
	}
	keys := budgeted("(project, key_id)")
	keysArgs := append(append([]any{}, evArgs...), p.String())

	// Equality filters let every table use its sort key (spend_daily and spend_hourly:
	// project, key_id; usage_events: key_id).
	var narrow []string
	var narrowArgs []any
	if f.Project != "" {
		narrow = append(narrow, "project = ?")
		narrowArgs = append(narrowArgs, f.Project)
	}
	if f.KeyID != "" {
		narrow = append(narrow, "key_id = ?")
		narrowArgs = append(narrowArgs, f.KeyID)
	}

	// usage_events is sorted by key_id alone first: a key_id IN set lets it read only the
	// budgeted keys' recent rows (the (project, key_id) tuple cannot use its index, and
	// without this the partial hour scanned the month's event_time column: 2 s at 100M).
	keyIDs := budgeted("key_id")

	var parts []string
	var args []any
	part := func(table, timeColumn, cost string, where []string, whereArgs []any, sets ...string) {
		where = append(append(where, narrow...), sets...)
		parts = append(parts, "    SELECT project, key_id, "+periodStartSQL(p, timeColumn)+" AS period_start, sum("+cost+") AS cost\n"+
			"    FROM "+table+"\n    WHERE "+strings.Join(where, "\n      AND ")+"\n"+
			"    GROUP BY project, key_id, period_start")
		args = append(append(args, whereArgs...), narrowArgs...)
		for range sets {
			args = append(args, keysArgs...)
		}
	}
	part("spend_daily", "day", "total_cost_micros",
		[]string{"day >= toDateTime(?)", "day < toDateTime(?)"}, []any{from.Unix(), day.Unix()}, keys)
	// The day's whole hours from the per-key hourly rollup: sorted by hour first, it reads
	// only those hours (spend_hourly, sorted by key, would read every hour of the keys).
	if !exact {
		part("usage_key_hourly", "hour", "total_cost_micros", []string{"hour >= toDateTime(?)"}, []any{day.Unix()}, keys)
	} else {
		part("usage_key_hourly", "hour", "total_cost_micros",
			[]string{"hour >= toDateTime(?)", "hour < toDateTime(?)"}, []any{day.Unix(), hour.Unix()}, keys)
		part("usage_events", "event_time", "cost_micros",
			[]string{"event_time >= toDateTime(?)", "event_time <= toDateTime(?)", "event_time_ms >= ?", "event_time_ms <= ?"},
			[]any{hour.Unix(), floorSec(atMs), hour.UnixMilli(), atMs}, keyIDs, keys)
	}

	sql := "SELECT project, key_id, period_start, sum(cost) AS cost_micros\nFROM\n(\n" +
		strings.Join(parts, "\n    UNION ALL\n") + "\n)\nGROUP BY project, key_id, period_start"
	return Query{SQL: sql, Args: args}
}

// BudgetsRequest is the input of the budget list.
type BudgetsRequest struct {
	Filter BudgetFilter
	// ThresholdPercent: 0 means DefaultBudgetThresholdPercent.
	ThresholdPercent float64
	// OnlyAlerting keeps the keys that are NEAR or OVER.
	OnlyAlerting bool
	// PreviousPeriods: 0 means DefaultBudgetPreviousPeriods.
	PreviousPeriods int32
	// At is the evaluation instant; zero means now.
	At time.Time
}

type budgetParams struct {
	threshold float64
	previous  int
	at        time.Time
}

func resolveBudgets(req BudgetsRequest, now time.Time) (budgetParams, error) {
	p := budgetParams{threshold: req.ThresholdPercent, previous: int(req.PreviousPeriods), at: req.At}
	if math.IsNaN(p.threshold) || p.threshold < 0 || p.threshold > MaxBudgetThresholdPercent {
		return p, &InvalidError{Field: "threshold_percent", Reason: fmt.Sprintf("must be between 0 and %d", MaxBudgetThresholdPercent)}
	}
	if p.threshold == 0 {
		p.threshold = DefaultBudgetThresholdPercent
	}
	if p.previous < 0 || p.previous > MaxBudgetPreviousPeriods {
		return p, &InvalidError{Field: "previous_periods", Reason: fmt.Sprintf("must be between 0 and %d", MaxBudgetPreviousPeriods)}
	}
	if p.previous == 0 {
		p.previous = DefaultBudgetPreviousPeriods
	}
	if p.at.IsZero() {
		p.at = now
	}
	p.at = p.at.UTC()
	return p, nil
}

// budgetPeriodKey identifies one key's spend in one period.
type budgetPeriodKey struct {
	project, keyID string
	start          int64 // Unix seconds of the period start
}

// Budgets lists the keys with a budget, highest percentage of the current period first.
func (rd *Reader) Budgets(ctx context.Context, req BudgetsRequest) ([]BudgetUtilization, error) {
	params, err := resolveBudgets(req, rd.now())
	if err != nil {
		return nil, err
	}
	// 1. The budgets in effect at `at`.
	budgets, err := rd.keyBudgets(ctx, KeyBudgets(req.Filter, params.at))
	if err != nil {
		return nil, err
	}
	periods := map[budget.Period]bool{}
	for _, b := range budgets {
		periods[b.Period] = true
	}

	// 2. Spend per period, one query per kind of period in use.
	spend := map[budgetPeriodKey]int64{}
	for _, p := range []budget.Period{budget.Day, budget.Week, budget.Month} {
		if !periods[p] {
			continue
		}
		from := p.Shift(p.Start(params.at), -params.previous)
		q := BudgetSpend(req.Filter, p, from, params.at)
		if req.At.IsZero() {
			q = BudgetSpendNow(req.Filter, p, from, params.at)
		}
		if err := rd.budgetSpend(ctx, q, spend); err != nil {
			return nil, fmt.Errorf("%s budgets: %w", p, err)
		}
	}

	// 3. Compare.
	return evaluateBudgets(budgets, spend, params, req.OnlyAlerting), nil
}

// keyBudgets reads the budgets KeyBudgets finds, dropping removed ones (0) and periods the
// ingester would have rejected: there is nothing to measure them against.
func (rd *Reader) keyBudgets(ctx context.Context, q Query) ([]KeyBudget, error) {
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("query budgets: %w", err)
	}
	defer rows.Close()
	var budgets []KeyBudget
	for rows.Next() {
		var (
			b          KeyBudget
			periodName string
		)
		if err := rows.Scan(&b.Project, &b.KeyID, &b.AmountMicros, &periodName); err != nil {
			return nil, fmt.Errorf("scan budget: %w", err)
		}
		period, ok := budget.ParsePeriod(periodName)
		if !ok || b.AmountMicros <= 0 {
			continue
		}
		b.Period = period
		budgets = append(budgets, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read budgets: %w", err)
	}
	return budgets, nil
}

func (rd *Reader) budgetSpend(ctx context.Context, q Query, into map[budgetPeriodKey]int64) error {
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return fmt.Errorf("query spend: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			k     budgetPeriodKey
			start time.Time
			cost  int64
		)
		if err := rows.Scan(&k.project, &k.keyID, &start, &cost); err != nil {
			return fmt.Errorf("scan spend: %w", err)
		}
		k.start = start.Unix()
		into[k] += cost
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read spend: %w", err)
	}
	return nil
}

// evaluateBudgets builds each key's periods from the spend found, classifies the current one
// and orders the keys by percentage used, descending (ties by project, then key id).
func evaluateBudgets(budgets []KeyBudget, spend map[budgetPeriodKey]int64, params budgetParams, onlyAlerting bool) []BudgetUtilization {
	out := make([]BudgetUtilization, 0, len(budgets))
	for _, b := range budgets {
		period := func(start time.Time) PeriodSpend {
			cost := spend[budgetPeriodKey{b.Project, b.KeyID, start.Unix()}]
			return PeriodSpend{Start: start, End: b.Period.Shift(start, 1), CostMicros: cost, PercentUsed: budget.PercentUsed(cost, b.AmountMicros)}
		}
		current := b.Period.Start(params.at)
		u := BudgetUtilization{KeyBudget: b, Current: period(current)}
		u.Status = budget.Classify(u.Current.CostMicros, b.AmountMicros, params.threshold)
		if onlyAlerting && u.Status == budget.OK {
			continue
		}
		for i := 1; i <= params.previous; i++ {
			u.Previous = append(u.Previous, period(b.Period.Shift(current, -i)))
		}
		out = append(out, u)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Current.PercentUsed != b.Current.PercentUsed {
			return a.Current.PercentUsed > b.Current.PercentUsed
		}
		if a.Project != b.Project {
			return a.Project < b.Project
		}
		return a.KeyID < b.KeyID
	})
	return out
}
