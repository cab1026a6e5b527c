package api

import (
	"fmt"
	"slices"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/budget"
	"github.com/keytrail/keytrail/query/chreader"
	"github.com/keytrail/keytrail/query/keystate"
)

// The API's enums are mapped to the domain's here and nowhere else. Requests arrive checked
// by protovalidate (defined values, no repeats); these mappings still refuse anything else
// with the field named, as InvalidArgument, so a request that reaches a handler another way
// cannot slip an unknown value through.

var spendDimensions = map[keytrailv1.SpendDimension]chreader.Dimension{
	keytrailv1.SpendDimension_SPEND_DIMENSION_KEY:     chreader.DimensionKey,
	keytrailv1.SpendDimension_SPEND_DIMENSION_SERVICE: chreader.DimensionService,
	keytrailv1.SpendDimension_SPEND_DIMENSION_MODEL:   chreader.DimensionModel,
	keytrailv1.SpendDimension_SPEND_DIMENSION_PROJECT: chreader.DimensionProject,
}

// spendGroupBy maps group_by, naming a bad value as the caller sent it.
func spendGroupBy(groupBy []keytrailv1.SpendDimension) ([]chreader.Dimension, error) {
	if len(groupBy) > 2 {
		return nil, &chreader.InvalidError{Field: "group_by", Reason: "at most 2 dimensions"}
	}
	var out []chreader.Dimension
	for i, pd := range groupBy {
		d, ok := spendDimensions[pd]
		if !ok {
			return nil, &chreader.InvalidError{Field: "group_by", Reason: fmt.Sprintf("%s is not a dimension", pd)}
		}
		if slices.Contains(groupBy[:i], pd) {
			return nil, &chreader.InvalidError{Field: "group_by", Reason: fmt.Sprintf("%s is repeated", pd)}
		}
		out = append(out, d)
	}
	return out, nil
}

var spendBuckets = map[keytrailv1.Granularity]budget.Period{
	keytrailv1.Granularity_GRANULARITY_UNSPECIFIED: budget.Day,
	keytrailv1.Granularity_GRANULARITY_HOUR:        budget.Hour,
	keytrailv1.Granularity_GRANULARITY_DAY:         budget.Day,
	keytrailv1.Granularity_GRANULARITY_MONTH:       budget.Month,
}

func spendGranularity(g keytrailv1.Granularity) (budget.Period, error) {
	p, ok := spendBuckets[g]
	if !ok {
		return 0, &chreader.InvalidError{Field: "granularity", Reason: fmt.Sprintf("%s is not a granularity", g)}
	}
	return p, nil
}

var budgetPeriods = map[budget.Period]keytrailv1.BudgetPeriod{
	budget.Day:   keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY,
	budget.Week:  keytrailv1.BudgetPeriod_BUDGET_PERIOD_WEEK,
	budget.Month: keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH,
}

var budgetStatuses = map[budget.Status]keytrailv1.BudgetStatus{
	budget.OK:   keytrailv1.BudgetStatus_BUDGET_STATUS_OK,
	budget.Near: keytrailv1.BudgetStatus_BUDGET_STATUS_NEAR,
	budget.Over: keytrailv1.BudgetStatus_BUDGET_STATUS_OVER,
}

var anomalyScopes = map[keytrailv1.AnomalyScope]anomaly.Scope{
	keytrailv1.AnomalyScope_ANOMALY_SCOPE_UNSPECIFIED: anomaly.ScopeBoth,
	keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY:         anomaly.ScopeKey,
	keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY_SERVICE: anomaly.ScopeKeyService,
}

func anomalyScope(s keytrailv1.AnomalyScope) (anomaly.Scope, error) {
	scope, ok := anomalyScopes[s]
	if !ok {
		return 0, &chreader.InvalidError{Field: "scope", Reason: fmt.Sprintf("unknown scope %s", s)}
	}
	return scope, nil
}

// keyStatuses maps each key status both ways: a key known from its requests alone is
// KEY_STATUS_UNSPECIFIED in answers, and KEY_STATUS_UNSPECIFIED as a filter means any status
// (the reader's zero value).
var keyStatuses = map[keystate.Status]keytrailv1.KeyStatus{
	keystate.Unregistered: keytrailv1.KeyStatus_KEY_STATUS_UNSPECIFIED,
	keystate.Active:       keytrailv1.KeyStatus_KEY_STATUS_ACTIVE,
	keystate.Disabled:     keytrailv1.KeyStatus_KEY_STATUS_DISABLED,
	keystate.Expired:      keytrailv1.KeyStatus_KEY_STATUS_EXPIRED,
	keystate.Deleted:      keytrailv1.KeyStatus_KEY_STATUS_DELETED,
}

// keyStatusFilter maps ListKeys' status filter.
func keyStatusFilter(s keytrailv1.KeyStatus) (keystate.Status, error) {
	for domain, proto := range keyStatuses {
		if proto == s {
			return domain, nil
		}
	}
	return 0, &chreader.InvalidError{Field: "status", Reason: fmt.Sprintf("%s is not a key status", s)}
}
