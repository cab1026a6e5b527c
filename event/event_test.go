package event

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

var (
	subjects = Subjects{Prefix: "keytrail"}
	testNow  = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
)

func validUsage() *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: "ev-1", Time: timestamppb.New(testNow.Add(-time.Minute)), Project: "acme",
		KeyId: "key_1", Service: "billing-api", StatusCode: 200, CostMicros: 1500,
	}
}

func validLifecycle() *keytrailv1.LifecycleEvent {
	return &keytrailv1.LifecycleEvent{
		EventId: "lc-1", Time: timestamppb.New(testNow.Add(-time.Minute)), Project: "acme",
		KeyId: "key_1", Action: keytrailv1.Action_ACTION_ROTATED, NewKeyId: "key_2",
		Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER,
	}
}

func TestSubjectsRoundTrip(t *testing.T) {
	if got := subjects.Usage("a.b c"); got != "keytrail.usage.a_b_c" {
		t.Errorf("Usage subject %q", got)
	}
	// The token Parse reads back is the project's SubjectToken: what the ingester compares
	// the event's own project with.
	kind, project, err := subjects.Parse(subjects.Usage("a.b"))
	if err != nil || kind != KindUsage || project != SubjectToken("a.b") {
		t.Errorf("Parse(Usage(%q)) = %v %q %v", "a.b", kind, project, err)
	}
	kind, project, err = subjects.Parse("keytrail.lifecycle.acme")
	if err != nil || kind != KindLifecycle || project != "acme" {
		t.Errorf("Parse = %v %q %v", kind, project, err)
	}
}

func TestEnumNames(t *testing.T) {
	if ActionName(keytrailv1.Action_ACTION_SCOPES_CHANGED) != "scopes_changed" {
		t.Error(ActionName(keytrailv1.Action_ACTION_SCOPES_CHANGED))
	}
	if a, ok := ParseAction("scopes_changed"); !ok || a != keytrailv1.Action_ACTION_SCOPES_CHANGED {
		t.Error(a, ok)
	}
	if _, ok := ParseAction("unspecified"); ok {
		t.Error("unspecified must not parse")
	}
	if ActorTypeName(keytrailv1.ActorType_ACTOR_TYPE_UNSPECIFIED) != "" || BudgetPeriodName(keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH) != "month" {
		t.Error("names")
	}
}
