package event

import (
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Event is one decoded, valid event: exactly one of Usage and Lifecycle is set.
type Event struct {
	Kind      Kind
	Usage     *keytrailv1.UsageEvent
	Lifecycle *keytrailv1.LifecycleEvent
}

// ID is the event's unique id.
func (e Event) ID() string {
	if e.Kind == KindLifecycle {
		return e.Lifecycle.GetEventId()
	}
	return e.Usage.GetEventId()
}

// Decode turns one message into a valid Event or an *Invalid error saying why not.
// The subject decides the kind and must name the event's own project, so a gateway cannot
// write into another project's subject space by mislabelling a payload.
func (s Subjects) Decode(subject, contentType string, data []byte, now time.Time) (Event, error) {
	if len(data) > MaxPayloadBytes {
		return Event{}, invalid(ReasonOversize, "payload is %d bytes (at most %d)", len(data), MaxPayloadBytes)
	}
	kind, projectToken, err := s.Parse(subject)
	if err != nil {
		return Event{}, invalid(ReasonBadSubject, "%v", err)
	}
	enc, err := ParseContentType(contentType)
	if err != nil {
		return Event{}, invalid(ReasonBadContentType, "%v", err)
	}
	var ev Event
	var project string
	switch kind {
	case KindUsage:
		m := &keytrailv1.UsageEvent{}
		if err := enc.unmarshal(data, m); err != nil {
			return Event{}, invalid(ReasonUndecodable, "%s usage event: %v", enc.ContentType(), err)
		}
		if err := ValidateUsage(m, now); err != nil {
			return Event{}, err
		}
		ev, project = Event{Kind: kind, Usage: m}, m.GetProject()
	case KindLifecycle:
		m := &keytrailv1.LifecycleEvent{}
		if err := enc.unmarshal(data, m); err != nil {
			return Event{}, invalid(ReasonUndecodable, "%s lifecycle event: %v", enc.ContentType(), err)
		}
		if err := ValidateLifecycle(m, now); err != nil {
			return Event{}, err
		}
		ev, project = Event{Kind: kind, Lifecycle: m}, m.GetProject()
	}
	if SubjectToken(project) != projectToken {
		return Event{}, invalid(ReasonProjectMismatch, "project %q does not match subject %q", project, subject)
	}
	return ev, nil
}

// DecodeUsage is Decode for a usage event, into f, and without allocating when the payload
// is protobuf in canonical form (see DecodeUsageWire): the ingester's hot path. The text
// fields of f are then views into data, and data is exactly the deterministic protobuf
// encoding of f, so that its hash is the event's content hash; msg is nil. Any other payload
// is decoded into msg (unknown fields kept, as Decode keeps them), and f holds its fields.
// The checks and errors are Decode's, in the same order.
func (s Subjects) DecodeUsage(subject, contentType string, data []byte, now time.Time, f *UsageFields) (msg *keytrailv1.UsageEvent, err error) {
	if len(data) > MaxPayloadBytes {
		return nil, invalid(ReasonOversize, "payload is %d bytes (at most %d)", len(data), MaxPayloadBytes)
	}
	kind, projectToken, err := s.Parse(subject)
	if err != nil {
		return nil, invalid(ReasonBadSubject, "%v", err)
	}
	if kind != KindUsage {
		return nil, invalid(ReasonBadSubject, "subject %q does not carry usage events", subject)
	}
	enc, err := ParseContentType(contentType)
	if err != nil {
		return nil, invalid(ReasonBadContentType, "%v", err)
	}
	if enc != EncodingProto || !DecodeUsageWire(data, f) {
		msg = &keytrailv1.UsageEvent{}
		if err := enc.unmarshal(data, msg); err != nil {
			return nil, invalid(ReasonUndecodable, "%s usage event: %v", enc.ContentType(), err)
		}
		*f = UsageFieldsOf(msg)
	}
	if err := f.Validate(now); err != nil {
		return nil, err
	}
	if SubjectToken(f.Project) != projectToken {
		return nil, invalid(ReasonProjectMismatch, "project %q does not match subject %q", f.Project, subject)
	}
	return msg, nil
}
