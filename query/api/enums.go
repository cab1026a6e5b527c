package api

import (
	"fmt"
	"slices"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/budget"
	"github.com/keytrail/keytrail/query/chreader"
	"github.com/keytrail/keytrail/query/keystate"
	"github.com/keytrail/keytrail/query/rotation"
)

// The API's enums are mapped to the domain's here and nowhere else. Requests arrive checked
// by protovalidate (defined values, no repeats); these mappings still refuse anything else
// with the field named, as InvalidArgument, so a request that reaches a handler another way
// cannot slip an unknown value through.

// fromAPI maps one value of a request's enum through m; a value m does not hold is refused
// with the field named and the value as the caller sent it ("9 is not a granularity").
func fromAPI[P interface {
	comparable
	fmt.Stringer
}, D any](m map[P]D, v P, field, kind string) (D, error) {
	d, ok := m[v]
	if !ok {
		return d, &chreader.InvalidError{Field: field, Reason: fmt.Sprintf("%s is not %s", v, kind)}
	}
	return d, nil
}

// inverse is m read the other way, for an enum mapped both ways.
func inverse[K, V comparable](m map[K]V) map[V]K {
	out := make(map[V]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

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
		d, err := fromAPI(spendDimensions, pd, "group_by", "a dimension")
		if err != nil {
			return nil, err
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
	return fromAPI(spendBuckets, g, "granularity", "a granularity")
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
	return fromAPI(anomalyScopes, s, "scope", "a scope")
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

var keyStatusFilters = inverse(keyStatuses)

// keyStatusFilter maps ListKeys' status filter.
func keyStatusFilter(s keytrailv1.KeyStatus) (keystate.Status, error) {
	return fromAPI(keyStatusFilters, s, "status", "a key status")
}

var serviceMigrations = map[rotation.Migration]keytrailv1.ServiceMigration{
	rotation.Moved:      keytrailv1.ServiceMigration_SERVICE_MIGRATION_MOVED,
	rotation.Mixed:      keytrailv1.ServiceMigration_SERVICE_MIGRATION_MIXED,
	rotation.NotStarted: keytrailv1.ServiceMigration_SERVICE_MIGRATION_NOT_STARTED,
}

var callerStates = map[rotation.CallerState]keytrailv1.CallerState{
	rotation.CallerMoved:    keytrailv1.CallerState_CALLER_STATE_MOVED,
	rotation.CallerPending:  keytrailv1.CallerState_CALLER_STATE_PENDING,
	rotation.CallerOverdue:  keytrailv1.CallerState_CALLER_STATE_OVERDUE,
	rotation.CallerAccepted: keytrailv1.CallerState_CALLER_STATE_ACCEPTED,
	rotation.CallerFailing:  keytrailv1.CallerState_CALLER_STATE_FAILING,
}

var rotationVerdicts = map[rotation.Verdict]keytrailv1.RotationVerdict{
	rotation.SafeToRevoke: keytrailv1.RotationVerdict_ROTATION_VERDICT_SAFE_TO_REVOKE,
	rotation.NotYet:       keytrailv1.RotationVerdict_ROTATION_VERDICT_NOT_YET,
}
