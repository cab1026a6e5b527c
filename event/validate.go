package event

import (
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Reason says why an event was rejected. It is a small closed set so it can label metrics;
// the field-level detail travels in Invalid.Detail.
type Reason string

const (
	ReasonOversize        Reason = "oversize"
	ReasonBadContentType  Reason = "bad_content_type"
	ReasonUndecodable     Reason = "undecodable"
	ReasonBadSubject      Reason = "bad_subject"
	ReasonMissingField    Reason = "missing_field"
	ReasonInvalidField    Reason = "invalid_field"
	ReasonProjectMismatch Reason = "project_mismatch"
	ReasonTimeOutOfRange  Reason = "time_out_of_range"
	ReasonNegativeCost    Reason = "negative_cost"
	ReasonUnknownAction   Reason = "unknown_action"
	// ReasonDuplicateEventID is given by the ingester, not Decode: the event id was already
	// stored with different content.
	ReasonDuplicateEventID Reason = "duplicate_event_id"
)

// Invalid is the error Decode returns for an event that must not be stored.
type Invalid struct {
	Reason Reason
	Detail string
}

func (e *Invalid) Error() string { return string(e.Reason) + ": " + e.Detail }

func invalid(reason Reason, format string, args ...any) *Invalid {
	return &Invalid{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Limits bound what one event may carry. They keep a single hostile or buggy gateway from
// bloating storage or the ingester's memory.
const (
	MaxPayloadBytes   = 64 << 10
	MaxIDLen          = 128
	MaxNameLen        = 256
	MaxTextLen        = 1024
	MaxListEntries    = 64
	MaxClockSkew      = time.Hour
	earliestEventTime = "2000-01-01T00:00:00Z"
)

var minEventTime, _ = time.Parse(time.RFC3339, earliestEventTime)

// ValidateUsage checks a usage event against the contract. now bounds how far in the future
// an event time may lie (gateway clocks drift, but not by hours).
func ValidateUsage(e *keytrailv1.UsageEvent, now time.Time) error {
	if err := checkID("event_id", e.GetEventId(), MaxIDLen); err != nil {
		return err
	}
	if err := checkTime("time", e.GetTime().AsTime(), e.GetTime() != nil, now); err != nil {
		return err
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"project", e.GetProject(), MaxNameLen},
		{"key_id", e.GetKeyId(), MaxNameLen},
		{"service", e.GetService(), MaxNameLen},
	} {
		if err := checkID(f.name, f.value, f.max); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, value string }{
		{"gateway_instance", e.GetGatewayInstance()},
		{"method", e.GetMethod()},
		{"endpoint", e.GetEndpoint()},
		{"model", e.GetModel()},
		{"provider", e.GetProvider()},
		{"client_ip", e.GetClientIp()},
		{"request_id", e.GetRequestId()},
	} {
		if err := checkText(f.name, f.value, MaxNameLen); err != nil {
			return err
		}
	}
	if c := e.GetStatusCode(); c < 100 || c > 599 {
		return invalid(ReasonInvalidField, "status_code %d is not an HTTP status (100-599)", c)
	}
	if e.GetCostMicros() < 0 {
		return invalid(ReasonNegativeCost, "cost_micros %d is negative", e.GetCostMicros())
	}
	return nil
}

// ValidateLifecycle checks a lifecycle event against the contract.
func ValidateLifecycle(e *keytrailv1.LifecycleEvent, now time.Time) error {
	if err := checkID("event_id", e.GetEventId(), MaxIDLen); err != nil {
		return err
	}
	if err := checkTime("time", e.GetTime().AsTime(), e.GetTime() != nil, now); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{
		{"project", e.GetProject()},
		{"key_id", e.GetKeyId()},
		{"actor", e.GetActor()},
	} {
		if err := checkID(f.name, f.value, MaxNameLen); err != nil {
			return err
		}
	}
	if _, known := keytrailv1.Action_name[int32(e.GetAction())]; !known || e.GetAction() == keytrailv1.Action_ACTION_UNSPECIFIED {
		return invalid(ReasonUnknownAction, "action %d is not a known action", int32(e.GetAction()))
	}
	if _, known := keytrailv1.ActorType_name[int32(e.GetActorType())]; !known {
		return invalid(ReasonInvalidField, "actor_type %d is not a known actor type", int32(e.GetActorType()))
	}
	if err := checkText("reason", e.GetReason(), MaxTextLen); err != nil {
		return err
	}
	switch e.GetAction() {
	case keytrailv1.Action_ACTION_ROTATED:
		if err := checkID("new_key_id", e.GetNewKeyId(), MaxNameLen); err != nil {
			return err
		}
		if e.GetNewKeyId() == e.GetKeyId() {
			return invalid(ReasonInvalidField, "new_key_id must differ from key_id")
		}
	case keytrailv1.Action_ACTION_BUDGET_CHANGED:
		if e.GetBudget() == nil {
			return invalid(ReasonMissingField, "budget is required for ACTION_BUDGET_CHANGED")
		}
	}
	if e.GetNewKeyId() != "" && e.GetAction() != keytrailv1.Action_ACTION_ROTATED {
		return invalid(ReasonInvalidField, "new_key_id is only allowed with ACTION_ROTATED")
	}
	if e.GetNewKeyId() != "" {
		if err := checkID("new_key_id", e.GetNewKeyId(), MaxNameLen); err != nil {
			return err
		}
	}
	if b := e.GetBudget(); b != nil {
		if b.GetAmountMicros() < 0 {
			return invalid(ReasonNegativeCost, "budget.amount_micros %d is negative", b.GetAmountMicros())
		}
		if _, known := keytrailv1.BudgetPeriod_name[int32(b.GetPeriod())]; !known || b.GetPeriod() == keytrailv1.BudgetPeriod_BUDGET_PERIOD_UNSPECIFIED {
			return invalid(ReasonInvalidField, "budget.period %d is not a known period", int32(b.GetPeriod()))
		}
	}
	if e.GetExpiresAt() != nil {
		if err := e.GetExpiresAt().CheckValid(); err != nil {
			return invalid(ReasonInvalidField, "expires_at: %v", err)
		}
	}
	if len(e.GetScopes()) > MaxListEntries {
		return invalid(ReasonInvalidField, "scopes has %d entries (at most %d)", len(e.GetScopes()), MaxListEntries)
	}
	for i, s := range e.GetScopes() {
		if err := checkText(fmt.Sprintf("scopes[%d]", i), s, MaxNameLen); err != nil {
			return err
		}
	}
	if len(e.GetAttributes()) > MaxListEntries {
		return invalid(ReasonInvalidField, "attributes has %d entries (at most %d)", len(e.GetAttributes()), MaxListEntries)
	}
	for k, v := range e.GetAttributes() {
		if err := checkText("attributes key", k, MaxNameLen); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("attributes[%q]", k), v, MaxTextLen); err != nil {
			return err
		}
	}
	if len(e.GetChanges()) > MaxListEntries {
		return invalid(ReasonInvalidField, "changes has %d entries (at most %d)", len(e.GetChanges()), MaxListEntries)
	}
	for i, c := range e.GetChanges() {
		if err := checkText(fmt.Sprintf("changes[%d].field", i), c.GetField(), MaxNameLen); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("changes[%d].before", i), c.GetBefore(), MaxTextLen); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("changes[%d].after", i), c.GetAfter(), MaxTextLen); err != nil {
			return err
		}
	}
	return nil
}

// checkID requires an identifier: present, bounded, printable, without white space, so it
// can be shown in a terminal and used as a filter without surprises.
func checkID(field, v string, maxLen int) error {
	if v == "" {
		return invalid(ReasonMissingField, "%s is required", field)
	}
	if err := checkText(field, v, maxLen); err != nil {
		return err
	}
	for _, r := range v {
		if unicode.IsSpace(r) {
			return invalid(ReasonInvalidField, "%s contains white space", field)
		}
	}
	return nil
}

// checkText bounds a free-text field and rejects invalid UTF-8 and control characters,
// which would corrupt terminal output and log lines downstream.
func checkText(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return invalid(ReasonInvalidField, "%s is %d bytes (at most %d)", field, len(v), maxLen)
	}
	if !utf8.ValidString(v) {
		return invalid(ReasonInvalidField, "%s is not valid UTF-8", field)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return invalid(ReasonInvalidField, "%s contains control character %U", field, r)
		}
	}
	return nil
}

func checkTime(field string, t time.Time, present bool, now time.Time) error {
	if !present {
		return invalid(ReasonMissingField, "%s is required", field)
	}
	if t.Before(minEventTime) {
		return invalid(ReasonTimeOutOfRange, "%s %s is before %s", field, t.UTC().Format(time.RFC3339Nano), earliestEventTime)
	}
	if t.After(now.Add(MaxClockSkew)) {
		return invalid(ReasonTimeOutOfRange, "%s %s is more than %s after the ingester's clock", field, t.UTC().Format(time.RFC3339Nano), MaxClockSkew)
	}
	return nil
}
