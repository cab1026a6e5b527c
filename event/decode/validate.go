package decode

import (
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// ValidateUsage checks a usage event against the contract. now bounds how far in the future
// an event time may lie (gateway clocks drift, but not by hours).
func ValidateUsage(e *keytrailv1.UsageEvent, now time.Time) error {
	if err := checkRules(e); err != nil {
		return err
	}
	return checkNotAhead("time", e.GetTime(), now)
}

// ValidateLifecycle checks a lifecycle event against the contract.
func ValidateLifecycle(e *keytrailv1.LifecycleEvent, now time.Time) error {
	if err := checkRules(e); err != nil {
		return err
	}
	if err := checkNotAhead("time", e.GetTime(), now); err != nil {
		return err
	}
	// A Timestamp's own range (years 1 to 9999, nanos below a second) is no buf.validate
	// rule; ClickHouse could not store one outside it.
	if e.GetExpiresAt() != nil {
		if err := e.GetExpiresAt().CheckValid(); err != nil {
			return invalid(event.ReasonInvalidField, "expires_at: %v", err)
		}
	}
	return nil
}

// Static rules: the buf.validate annotations of events.proto, evaluated by protovalidate.
// Strings need no UTF-8 check here: protobuf and protojson both refuse to decode a string
// field that is not UTF-8 (Event answers undecodable), and proto.Marshal refuses to encode
// one, so no event that was not UTF-8 can be published or stored.

// eventRules are the static rules, compiled once, on first use, for both event types: by
// protovalidate, and for the fast path (fastrules.go) where every rule allows it.
type eventRules struct {
	validator protovalidate.Validator
	fast      map[protoreflect.FullName]*fastRules
}

// rules come from the descriptors compiled into gen/, so a rule that does not compile fails
// every test of this package; panicking then is better than dead-lettering every event as
// invalid.
var rules = sync.OnceValue(func() eventRules {
	msgs := []proto.Message{&keytrailv1.UsageEvent{}, &keytrailv1.LifecycleEvent{}}
	v, err := protovalidate.New(protovalidate.WithMessages(msgs...))
	if err != nil {
		panic(fmt.Sprintf("decode: compile the buf.validate rules of events.proto: %v", err))
	}
	r := eventRules{validator: v, fast: map[protoreflect.FullName]*fastRules{}}
	for _, m := range msgs {
		if f, ok := compileFast(m.ProtoReflect().Descriptor()); ok {
			r.fast[m.ProtoReflect().Descriptor().FullName()] = f
		}
	}
	return r
})

// checkRules evaluates the static rules and turns the first violation into the event.Invalid the
// ingester dead-letters: the documented reason, and a detail naming the field.
func checkRules(m proto.Message) error {
	r := rules()
	pm := m.ProtoReflect()
	if f := r.fast[pm.Descriptor().FullName()]; f != nil && f.accepts(pm) {
		return nil
	}
	err := r.validator.Validate(m)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) || len(verr.Violations) == 0 {
		// A rule that could not be evaluated on this event: refuse the event rather than
		// store what was not checked.
		return invalid(event.ReasonInvalidField, "the contract's rules could not be evaluated: %v", err)
	}
	return describe(firstViolation(verr.Violations))
}

// firstViolation picks the violation to report. protovalidate lists the message's cross-field
// rules before its fields (in field order); a field's own fault is the more specific
// report, so it comes first, and the cross-field rules only when no field broke a rule.
func firstViolation(vs []*protovalidate.Violation) *protovalidate.Violation {
	for _, v := range vs {
		if len(v.Proto.GetField().GetElements()) > 0 {
			return v
		}
	}
	return vs[0]
}

// Cross-field rules of events.proto (message-level CEL, by rule id) whose reason is not
// invalid_field. Their detail is the rule's own message.
var crossFieldReasons = map[string]event.Reason{
	"new_key_id_required": event.ReasonMissingField,
	"budget_required":     event.ReasonMissingField,
}

// enumNouns name an enum's values in a detail ("action 99 is not a known action").
var enumNouns = map[protoreflect.FullName]string{
	"keytrail.v1.Action":       "action",
	"keytrail.v1.ActorType":    "actor type",
	"keytrail.v1.BudgetPeriod": "period",
}

// rangeNouns name what a bounded number must be, where the bound has a name.
var rangeNouns = map[string]string{
	"status_code": "an HTTP status",
}

// describe maps one violation to the documented reason and a detail that names the field.
func describe(v *protovalidate.Violation) *event.Invalid {
	field := fieldName(v)
	rule := v.Proto.GetRuleId()
	switch rule {
	case "required":
		return invalid(event.ReasonMissingField, "%s is required", field)
	case "string.max_bytes":
		return invalid(event.ReasonInvalidField, "%s is %d bytes (at most %d)", field, len(v.FieldValue.String()), v.RuleValue.Uint())
	case "string.pattern":
		// The patterns refuse control characters in any string, and white space as well in
		// identifiers; say which.
		for _, r := range v.FieldValue.String() {
			if unicode.IsControl(r) {
				return invalid(event.ReasonInvalidField, "%s contains control character %U", field, r)
			}
		}
		return invalid(event.ReasonInvalidField, "%s contains white space", field)
	case "int64.gte":
		return invalid(event.ReasonNegativeCost, "%s %d is negative", field, v.FieldValue.Int())
	case "timestamp.gte":
		t := v.FieldValue.Message().Interface().(*timestamppb.Timestamp).AsTime()
		bound := v.RuleValue.Message().Interface().(*timestamppb.Timestamp).AsTime()
		return invalid(event.ReasonTimeOutOfRange, "%s %s is before %s", field, t.Format(time.RFC3339Nano), bound.Format(time.RFC3339))
	case "enum.defined_only", "enum.not_in":
		enum := v.FieldDescriptor.Enum().FullName()
		reason := event.ReasonInvalidField
		if enum == "keytrail.v1.Action" {
			reason = event.ReasonUnknownAction
		}
		return invalid(reason, "%s %d is not a known %s", field, int32(v.FieldValue.Enum()), enumNouns[enum])
	case "repeated.max_items":
		return invalid(event.ReasonInvalidField, "%s has %d entries (at most %d)", field, v.FieldValue.List().Len(), v.RuleValue.Uint())
	case "map.max_pairs":
		return invalid(event.ReasonInvalidField, "%s has %d entries (at most %d)", field, v.FieldValue.Map().Len(), v.RuleValue.Uint())
	case "uint32.gte_lte":
		if noun, ok := rangeNouns[field]; ok {
			r, err := protovalidate.ResolveFieldRules(v.FieldDescriptor)
			if err == nil {
				return invalid(event.ReasonInvalidField, "%s %d is not %s (%d-%d)", field, v.FieldValue.Uint(), noun, r.GetUint32().GetGte(), r.GetUint32().GetLte())
			}
		}
	}
	if field == "" {
		reason, ok := crossFieldReasons[rule]
		if !ok {
			reason = event.ReasonInvalidField
		}
		return invalid(reason, "%s", v.Proto.GetMessage())
	}
	// A rule without its own wording: protovalidate's message, after the field.
	return invalid(event.ReasonInvalidField, "%s %s", field, v.Proto.GetMessage())
}

// fieldName is the field path as a detail shows it: budget.amount_micros, scopes[3],
// attributes["ticket"], or "attributes key" when a map key broke the rule.
func fieldName(v *protovalidate.Violation) string {
	if v.Proto.GetForKey() {
		elems := v.Proto.GetField().GetElements()
		if len(elems) > 0 {
			return elems[len(elems)-1].GetFieldName() + " key"
		}
	}
	return protovalidate.FieldPathString(v.Proto.GetField())
}

// checkNotAhead is the dynamic half of the time rules (required and not before 2000 are
// annotations): gateway clocks drift, but an event more than event.MaxClockSkew ahead of the
// ingester's clock would sit in the future of every answer.
func checkNotAhead(field string, ts *timestamppb.Timestamp, now time.Time) error {
	if t := ts.AsTime(); t.After(now.Add(event.MaxClockSkew)) {
		return invalid(event.ReasonTimeOutOfRange, "%s %s is more than %s after the ingester's clock", field, t.UTC().Format(time.RFC3339Nano), event.MaxClockSkew)
	}
	return nil
}
