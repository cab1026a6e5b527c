package decode

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

var (
	subjects = event.Subjects{Prefix: "keytrail"}
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

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeAcceptsProtoAndJSON(t *testing.T) {
	ev, err := Event(subjects, "keytrail.usage.acme", "", marshal(t, validUsage()), testNow)
	if err != nil {
		t.Fatalf("proto: %v", err)
	}
	if ev.Kind != event.KindUsage || ev.ID() != "ev-1" || ev.Usage.GetCostMicros() != 1500 {
		t.Errorf("proto decoded %+v", ev)
	}
	json := `{"event_id":"lc-1","time":"2026-11-01T11:59:00.123Z","project":"acme","key_id":"key_1",
		"action":"ACTION_ROTATED","new_key_id":"key_2","actor":"alice","actor_type":"ACTOR_TYPE_USER",
		"budget":{"amount_micros":"5000000","period":"BUDGET_PERIOD_DAY"},"future_field":1}`
	ev, err = Event(subjects, "keytrail.lifecycle.acme", "application/json; charset=utf-8", []byte(json), testNow)
	if err != nil {
		t.Fatalf("json: %v", err)
	}
	if ev.Kind != event.KindLifecycle || ev.Lifecycle.GetNewKeyId() != "key_2" || ev.Lifecycle.GetBudget().GetAmountMicros() != 5_000_000 ||
		ev.Lifecycle.GetTime().AsTime().UnixMilli() != time.Date(2026, 11, 1, 11, 59, 0, 123e6, time.UTC).UnixMilli() {
		t.Errorf("json decoded %v", ev.Lifecycle)
	}
}

func TestDecodeRejects(t *testing.T) {
	usage := func(mut func(*keytrailv1.UsageEvent)) []byte {
		e := validUsage()
		mut(e)
		return marshal(t, e)
	}
	lifecycle := func(mut func(*keytrailv1.LifecycleEvent)) []byte {
		e := validLifecycle()
		mut(e)
		return marshal(t, e)
	}
	tests := []struct {
		name, subject, contentType string
		data                       []byte
		reason                     event.Reason
		detail                     string
	}{
		{"not protobuf", "keytrail.usage.acme", "", []byte("\xff\xff\xff garbage"), event.ReasonUndecodable, ""},
		{"not json", "keytrail.usage.acme", "application/json", []byte("{nope"), event.ReasonUndecodable, ""},
		{"wrong json type", "keytrail.usage.acme", "application/json", []byte(`{"event_id":"e","status_code":"two hundred"}`), event.ReasonUndecodable, ""},
		{"unknown content type", "keytrail.usage.acme", "text/plain", marshal(t, validUsage()), event.ReasonBadContentType, ""},
		{"bad subject kind", "keytrail.billing.acme", "", marshal(t, validUsage()), event.ReasonBadSubject, ""},
		{"oversize", "keytrail.usage.acme", "", make([]byte, event.MaxPayloadBytes+1), event.ReasonOversize, "payload is 65537 bytes (at most 65536)"},
		{"missing event id", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.EventId = "" }), event.ReasonMissingField, "event_id is required"},
		{"missing key id", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.KeyId = "" }), event.ReasonMissingField, "key_id is required"},
		{"missing time", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.Time = nil }), event.ReasonMissingField, "time is required"},
		{"before 2000", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) {
			e.Time = timestamppb.New(time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC))
		}), event.ReasonTimeOutOfRange, "time 1999-12-31T00:00:00Z is before 2000-01-01T00:00:00Z"},
		{"far future", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.Time = timestamppb.New(testNow.Add(2 * time.Hour)) }), event.ReasonTimeOutOfRange, "time 2026-11-01T14:00:00Z is more than 1h0m0s after the ingester's clock"},
		{"negative cost", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.CostMicros = -1 }), event.ReasonNegativeCost, "cost_micros -1 is negative"},
		{"bad status", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.StatusCode = 42 }), event.ReasonInvalidField, "status_code 42 is not an HTTP status (100-599)"},
		{"control char", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.Endpoint = "/v1/\x1b[31m" }), event.ReasonInvalidField, "endpoint contains control character U+001B"},
		{"space in key id", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.KeyId = "key 1" }), event.ReasonInvalidField, "key_id contains white space"},
		{"long service", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.Service = strings.Repeat("s", 257) }), event.ReasonInvalidField, "service is 257 bytes (at most 256)"},
		{"project mismatch", "keytrail.usage.globex", "", marshal(t, validUsage()), event.ReasonProjectMismatch, `project "acme" does not match subject "keytrail.usage.globex"`},
		{"unknown action", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Action = 99; e.NewKeyId = "" }), event.ReasonUnknownAction, "action 99 is not a known action"},
		{"unspecified action", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Action = 0; e.NewKeyId = "" }), event.ReasonUnknownAction, "action 0 is not a known action"},
		{"rotation without new key", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.NewKeyId = "" }), event.ReasonMissingField, "new_key_id is required"},
		{"rotation onto itself", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.NewKeyId = "key_1" }), event.ReasonInvalidField, "new_key_id must differ from key_id"},
		{"missing actor", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Actor = "" }), event.ReasonMissingField, "actor is required"},
		{"negative budget", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Action, e.NewKeyId = keytrailv1.Action_ACTION_BUDGET_CHANGED, ""
			e.Budget = &keytrailv1.Budget{AmountMicros: -5, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
		}), event.ReasonNegativeCost, "budget.amount_micros -5 is negative"},
		{"budget change without budget", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Action, e.NewKeyId = keytrailv1.Action_ACTION_BUDGET_CHANGED, ""
		}), event.ReasonMissingField, "budget is required for ACTION_BUDGET_CHANGED"},
		// Every kind of rule in events.proto, with the detail it has always had.
		{"long event id", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.EventId = strings.Repeat("e", 129) }), event.ReasonInvalidField, "event_id is 129 bytes (at most 128)"},
		{"tab in key id", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.KeyId = "key\t1" }), event.ReasonInvalidField, "key_id contains control character U+0009"},
		{"no-break space in service", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.Service = "billing\u00a0api" }), event.ReasonInvalidField, "service contains white space"},
		{"space in free text", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.Model = "gpt 4o" }), "", ""},
		{"long free text", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.RequestId = strings.Repeat("r", 257) }), event.ReasonInvalidField, "request_id is 257 bytes (at most 256)"},
		{"status 600", "keytrail.usage.acme", "", usage(func(e *keytrailv1.UsageEvent) { e.StatusCode = 600 }), event.ReasonInvalidField, "status_code 600 is not an HTTP status (100-599)"},
		{"new key without rotation", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Action = keytrailv1.Action_ACTION_DISABLED }), event.ReasonInvalidField, "new_key_id is only allowed with ACTION_ROTATED"},
		{"space in new key id", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.NewKeyId = "key 2" }), event.ReasonInvalidField, "new_key_id contains white space"},
		{"unknown actor type", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.ActorType = 9 }), event.ReasonInvalidField, "actor_type 9 is not a known actor type"},
		{"long reason", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Reason = strings.Repeat("r", 1025) }), event.ReasonInvalidField, "reason is 1025 bytes (at most 1024)"},
		{"budget without period", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Budget = &keytrailv1.Budget{AmountMicros: 5}
		}), event.ReasonInvalidField, "budget.period 0 is not a known period"},
		{"too many scopes", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Scopes = make([]string, 65) }), event.ReasonInvalidField, "scopes has 65 entries (at most 64)"},
		{"control character in a scope", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) { e.Scopes = []string{"read", "write\x00"} }), event.ReasonInvalidField, "scopes[1] contains control character U+0000"},
		{"too many attributes", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Attributes = map[string]string{}
			for i := range 65 {
				e.Attributes[fmt.Sprint(i)] = "v"
			}
		}), event.ReasonInvalidField, "attributes has 65 entries (at most 64)"},
		{"long attribute name", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Attributes = map[string]string{strings.Repeat("k", 257): "v"}
		}), event.ReasonInvalidField, "attributes key is 257 bytes (at most 256)"},
		{"control character in an attribute", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Attributes = map[string]string{"ticket": "SEC-1\n"}
		}), event.ReasonInvalidField, `attributes["ticket"] contains control character U+000A`},
		{"too many changes", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Changes = make([]*keytrailv1.FieldChange, 65)
			for i := range e.Changes {
				e.Changes[i] = &keytrailv1.FieldChange{Field: "f"}
			}
		}), event.ReasonInvalidField, "changes has 65 entries (at most 64)"},
		{"long change", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.Changes = []*keytrailv1.FieldChange{{Field: "scopes", Before: strings.Repeat("b", 1025)}}
		}), event.ReasonInvalidField, "changes[0].before is 1025 bytes (at most 1024)"},
		{"expiry out of range", "keytrail.lifecycle.acme", "", lifecycle(func(e *keytrailv1.LifecycleEvent) {
			e.ExpiresAt = &timestamppb.Timestamp{Seconds: testNow.Unix(), Nanos: 2e9}
		}), event.ReasonInvalidField, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Event(subjects, tt.subject, tt.contentType, tt.data, testNow)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("want the event accepted, got %v", err)
				}
				return
			}
			inv, ok := err.(*event.Invalid)
			if !ok {
				t.Fatalf("want *event.Invalid, got %v", err)
			}
			if inv.Reason != tt.reason {
				t.Errorf("reason %q, want %q (%s)", inv.Reason, tt.reason, inv.Detail)
			}
			if tt.detail != "" && inv.Detail != tt.detail {
				t.Errorf("detail %q, want %q", inv.Detail, tt.detail)
			}
		})
	}
}

func TestInvalidUTF8InProtobufIsUndecodable(t *testing.T) {
	// proto.Marshal refuses invalid UTF-8, so build the wire bytes by hand:
	// field 1 (event_id), wire type 2, length 2, bytes 0xff 0xfe.
	data := []byte{0x0a, 0x02, 0xff, 0xfe}
	_, err := Event(subjects, "keytrail.usage.acme", "", data, testNow)
	if inv, ok := err.(*event.Invalid); !ok || inv.Reason != event.ReasonUndecodable {
		t.Fatalf("got %v, want undecodable", err)
	}
}

// TestProjectWithADotRoundTrips: a project name the subject grammar cannot hold as one token
// is published under its SubjectToken, and Event compares the event's project through the
// same mapping.
func TestProjectWithADotRoundTrips(t *testing.T) {
	e := validUsage()
	e.Project = "a.b"
	if _, err := Event(subjects, subjects.Usage(e.Project), "", marshal(t, e), testNow); err != nil {
		t.Errorf("project with a dot must round-trip: %v", err)
	}
}
