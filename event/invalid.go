package event

import "time"

// Reason says why an event was rejected. It is a small closed set so it can label metrics;
// the field-level detail travels in Invalid.Detail. The ingester puts it in the dead-letter
// header, so it is part of the contract a gateway author reads.
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
	// ReasonDuplicateEventID is given by the ingester, not by decoding: the event id was
	// already stored with different content.
	ReasonDuplicateEventID Reason = "duplicate_event_id"
)

// Invalid is the error package decode returns for an event that must not be stored.
type Invalid struct {
	Reason Reason
	Detail string
}

func (e *Invalid) Error() string { return string(e.Reason) + ": " + e.Detail }

// Limits that depend on the ingester rather than on the event alone; the event's own bounds
// (lengths, counts, ranges) are annotations in events.proto. MaxPayloadBytes keeps a single
// hostile or buggy gateway from bloating the ingester's memory before anything is decoded.
const (
	MaxPayloadBytes = 64 << 10
	MaxClockSkew    = time.Hour
)
