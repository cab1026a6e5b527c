package decode

import (
	"fmt"
	"time"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Event turns one message, received on subject under the subjects s names, into a valid
// event or an *event.Invalid error saying why not. The subject decides the kind and must
// name the event's own project, so a gateway cannot write into another project's subject
// space by mislabelling a payload.
func Event(s event.Subjects, subject, contentType string, data []byte, now time.Time) (event.Event, error) {
	if len(data) > event.MaxPayloadBytes {
		return event.Event{}, invalid(event.ReasonOversize, "payload is %d bytes (at most %d)", len(data), event.MaxPayloadBytes)
	}
	kind, projectToken, err := s.Parse(subject)
	if err != nil {
		return event.Event{}, invalid(event.ReasonBadSubject, "%v", err)
	}
	enc, err := event.ParseContentType(contentType)
	if err != nil {
		return event.Event{}, invalid(event.ReasonBadContentType, "%v", err)
	}
	var ev event.Event
	var project string
	switch kind {
	case event.KindUsage:
		m := &keytrailv1.UsageEvent{}
		if err := enc.Unmarshal(data, m); err != nil {
			return event.Event{}, invalid(event.ReasonUndecodable, "%s usage event: %v", enc.ContentType(), err)
		}
		if err := ValidateUsage(m, now); err != nil {
			return event.Event{}, err
		}
		ev, project = event.Event{Kind: kind, Usage: m}, m.GetProject()
	case event.KindLifecycle:
		m := &keytrailv1.LifecycleEvent{}
		if err := enc.Unmarshal(data, m); err != nil {
			return event.Event{}, invalid(event.ReasonUndecodable, "%s lifecycle event: %v", enc.ContentType(), err)
		}
		if err := ValidateLifecycle(m, now); err != nil {
			return event.Event{}, err
		}
		ev, project = event.Event{Kind: kind, Lifecycle: m}, m.GetProject()
	}
	if event.SubjectToken(project) != projectToken {
		return event.Event{}, invalid(event.ReasonProjectMismatch, "project %q does not match subject %q", project, subject)
	}
	return ev, nil
}

// Usage is Event for a usage event, into f, and without allocating when the payload is
// protobuf in canonical form (see UsageWire): the ingester's hot path. The text fields of f
// are then views into data, and data is exactly the deterministic protobuf encoding of f, so
// that its hash is the event's content hash; msg is nil. Any other payload is decoded into
// msg (unknown fields kept, as Event keeps them), and f holds its fields. The checks and
// errors are Event's, in the same order.
func Usage(s event.Subjects, subject, contentType string, data []byte, now time.Time, f *UsageFields) (msg *keytrailv1.UsageEvent, err error) {
	if len(data) > event.MaxPayloadBytes {
		return nil, invalid(event.ReasonOversize, "payload is %d bytes (at most %d)", len(data), event.MaxPayloadBytes)
	}
	kind, projectToken, err := s.Parse(subject)
	if err != nil {
		return nil, invalid(event.ReasonBadSubject, "%v", err)
	}
	if kind != event.KindUsage {
		return nil, invalid(event.ReasonBadSubject, "subject %q does not carry usage events", subject)
	}
	enc, err := event.ParseContentType(contentType)
	if err != nil {
		return nil, invalid(event.ReasonBadContentType, "%v", err)
	}
	if enc != event.EncodingProto || !UsageWire(data, f) {
		msg = &keytrailv1.UsageEvent{}
		if err := enc.Unmarshal(data, msg); err != nil {
			return nil, invalid(event.ReasonUndecodable, "%s usage event: %v", enc.ContentType(), err)
		}
		*f = FieldsOf(msg)
	}
	if err := f.Validate(now); err != nil {
		return nil, err
	}
	if event.SubjectToken(f.Project) != projectToken {
		return nil, invalid(event.ReasonProjectMismatch, "project %q does not match subject %q", f.Project, subject)
	}
	return msg, nil
}

func invalid(reason event.Reason, format string, args ...any) *event.Invalid {
	return &event.Invalid{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}
