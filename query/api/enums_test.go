package api

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/anomaly"
	"github.com/keytrail/keytrail/query/budget"
	"github.com/keytrail/keytrail/query/chreader"
	"github.com/keytrail/keytrail/query/keystate"
	"github.com/keytrail/keytrail/query/rotation"
)

func TestSpendEnumMapping(t *testing.T) {
	key, svc, model, project := keytrailv1.SpendDimension_SPEND_DIMENSION_KEY, keytrailv1.SpendDimension_SPEND_DIMENSION_SERVICE,
		keytrailv1.SpendDimension_SPEND_DIMENSION_MODEL, keytrailv1.SpendDimension_SPEND_DIMENSION_PROJECT
	t.Run("every dimension and granularity", func(t *testing.T) {
		got, err := spendGroupBy([]keytrailv1.SpendDimension{model, project})
		if err != nil || !reflect.DeepEqual(got, []chreader.Dimension{chreader.DimensionModel, chreader.DimensionProject}) {
			t.Errorf("model, project: %v, %v", got, err)
		}
		got, err = spendGroupBy([]keytrailv1.SpendDimension{key, svc})
		if err != nil || !reflect.DeepEqual(got, []chreader.Dimension{chreader.DimensionKey, chreader.DimensionService}) {
			t.Errorf("key, service: %v, %v", got, err)
		}
		if got, err := spendGroupBy(nil); err != nil || got != nil {
			t.Errorf("none: %v, %v; want none (the reader's default)", got, err)
		}
		for g, want := range map[keytrailv1.Granularity]budget.Period{
			keytrailv1.Granularity_GRANULARITY_UNSPECIFIED: budget.Day, keytrailv1.Granularity_GRANULARITY_HOUR: budget.Hour,
			keytrailv1.Granularity_GRANULARITY_DAY: budget.Day, keytrailv1.Granularity_GRANULARITY_MONTH: budget.Month,
		} {
			if got, err := spendGranularity(g); err != nil || got != want {
				t.Errorf("%s: %s, %v; want %s", g, got, err, want)
			}
		}
	})
	// The messages name the values as the caller sent them.
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"three dimensions", second(spendGroupBy([]keytrailv1.SpendDimension{key, svc, model})), "group_by: at most 2 dimensions"},
		{"unspecified dimension", second(spendGroupBy([]keytrailv1.SpendDimension{keytrailv1.SpendDimension_SPEND_DIMENSION_UNSPECIFIED})), "group_by: SPEND_DIMENSION_UNSPECIFIED is not a dimension"},
		{"unknown dimension", second(spendGroupBy([]keytrailv1.SpendDimension{42})), "group_by: 42 is not a dimension"},
		{"repeated dimension", second(spendGroupBy([]keytrailv1.SpendDimension{key, key})), "group_by: SPEND_DIMENSION_KEY is repeated"},
		{"unknown granularity", second(spendGranularity(9)), "granularity: 9 is not a granularity"},
		{"unknown scope", second(anomalyScope(9)), "scope: 9 is not a scope"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var invalid *chreader.InvalidError
			if !errors.As(tt.err, &invalid) || tt.err.Error() != tt.want {
				t.Errorf("error %v, want InvalidError %q", tt.err, tt.want)
			}
		})
	}
}

func TestAnomalyScopeMapping(t *testing.T) {
	for s, want := range map[keytrailv1.AnomalyScope]anomaly.Scope{
		keytrailv1.AnomalyScope_ANOMALY_SCOPE_UNSPECIFIED: anomaly.ScopeBoth,
		keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY:         anomaly.ScopeKey,
		keytrailv1.AnomalyScope_ANOMALY_SCOPE_KEY_SERVICE: anomaly.ScopeKeyService,
	} {
		if got, err := anomalyScope(s); err != nil || got != want {
			t.Errorf("%s: %s, %v; want %s", s, got, err, want)
		}
	}
}

func TestKeyStatusMapping(t *testing.T) {
	want := map[keystate.Status]keytrailv1.KeyStatus{
		keystate.Unregistered: keytrailv1.KeyStatus_KEY_STATUS_UNSPECIFIED,
		keystate.Active:       keytrailv1.KeyStatus_KEY_STATUS_ACTIVE,
		keystate.Disabled:     keytrailv1.KeyStatus_KEY_STATUS_DISABLED,
		keystate.Expired:      keytrailv1.KeyStatus_KEY_STATUS_EXPIRED,
		keystate.Deleted:      keytrailv1.KeyStatus_KEY_STATUS_DELETED,
	}
	// Every domain status has its API value, and every API value (each defined in the proto)
	// reads back as the same status as a filter.
	for s := keystate.Unregistered; s.Valid(); s++ {
		proto, ok := keyStatuses[s]
		if !ok || proto != want[s] {
			t.Errorf("%s answers as %s, want %s", s, proto, want[s])
		}
		if back, err := keyStatusFilter(proto); err != nil || back != s {
			t.Errorf("filter %s: %s, %v; want %s", proto, back, err, s)
		}
	}
	if len(keyStatuses) != len(keytrailv1.KeyStatus_name) {
		t.Errorf("%d statuses mapped, the API defines %d", len(keyStatuses), len(keytrailv1.KeyStatus_name))
	}
	var invalid *chreader.InvalidError
	if _, err := keyStatusFilter(99); !errors.As(err, &invalid) || err.Error() != "status: 99 is not a key status" {
		t.Errorf("undefined status: %v, want InvalidError naming status", err)
	}
}

// Every rotation answer value has its own defined API value, never UNSPECIFIED, and every
// API value but UNSPECIFIED has a domain value: a value added on one side shows here.
func TestRotationEnumMapping(t *testing.T) {
	checkAnswerEnum(t, "migration", serviceMigrations, keytrailv1.ServiceMigration_name)
	checkAnswerEnum(t, "caller state", callerStates, keytrailv1.CallerState_name)
	checkAnswerEnum(t, "verdict", rotationVerdicts, keytrailv1.RotationVerdict_name)
	for _, s := range []rotation.CallerState{rotation.CallerMoved, rotation.CallerPending, rotation.CallerOverdue, rotation.CallerAccepted, rotation.CallerFailing} {
		if want := "CALLER_STATE_" + strings.ToUpper(s.String()); callerStates[s].String() != want {
			t.Errorf("%s answers as %s, want %s", s, callerStates[s], want)
		}
	}
	for _, m := range []rotation.Migration{rotation.Moved, rotation.Mixed, rotation.NotStarted} {
		if want := "SERVICE_MIGRATION_" + strings.ToUpper(strings.ReplaceAll(m.String(), " ", "_")); serviceMigrations[m].String() != want {
			t.Errorf("%s answers as %s, want %s", m, serviceMigrations[m], want)
		}
	}
	for _, v := range []rotation.Verdict{rotation.SafeToRevoke, rotation.NotYet} {
		if want := "ROTATION_VERDICT_" + v.String(); rotationVerdicts[v].String() != want {
			t.Errorf("%s answers as %s, want %s", v, rotationVerdicts[v], want)
		}
	}
}

func checkAnswerEnum[D comparable, P ~int32](t *testing.T, name string, m map[D]P, defined map[int32]string) {
	t.Helper()
	seen := map[P]bool{}
	for d, v := range m {
		if _, ok := defined[int32(v)]; !ok || v == 0 || seen[v] {
			t.Errorf("%s: %v answers as %d, undefined, UNSPECIFIED or another value's", name, d, v)
		}
		seen[v] = true
	}
	if len(seen) != len(defined)-1 {
		t.Errorf("%s: %d values mapped, the API defines %d besides UNSPECIFIED", name, len(seen), len(defined)-1)
	}
}

func second[T any](_ T, err error) error { return err }
