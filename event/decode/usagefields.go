package decode

import (
	"math"
	"sync"
	"time"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// UsageFields are a usage event's fields: what the ingester validates, redacts, hashes and
// stores, whether they came from a decoded message (FieldsOf) or straight from the
// protobuf bytes (UsageWire, which allocates nothing).
type UsageFields struct {
	EventID, Project, KeyID, Service, GatewayInstance, Method, Endpoint, Model, Provider, ClientIP, RequestID string
	// HasTime is false when the event has no time (invalid); Seconds and Nanos are the
	// google.protobuf.Timestamp.
	HasTime                   bool
	Seconds                   int64
	Nanos                     int32
	StatusCode, LatencyMs     uint32
	InputTokens, OutputTokens uint64
	CostMicros                int64
}

// FieldsOf reads a usage event's fields.
func FieldsOf(e *keytrailv1.UsageEvent) UsageFields {
	f := UsageFields{
		EventID: e.GetEventId(), Project: e.GetProject(), KeyID: e.GetKeyId(), Service: e.GetService(),
		GatewayInstance: e.GetGatewayInstance(), Method: e.GetMethod(), Endpoint: e.GetEndpoint(),
		Model: e.GetModel(), Provider: e.GetProvider(), ClientIP: e.GetClientIp(), RequestID: e.GetRequestId(),
		StatusCode: e.GetStatusCode(), LatencyMs: e.GetLatencyMs(), InputTokens: e.GetInputTokens(),
		OutputTokens: e.GetOutputTokens(), CostMicros: e.GetCostMicros(),
	}
	if t := e.GetTime(); t != nil {
		f.HasTime, f.Seconds, f.Nanos = true, t.GetSeconds(), t.GetNanos()
	}
	return f
}

// Event is a usage event message with these fields.
func (f *UsageFields) Event() *keytrailv1.UsageEvent {
	e := &keytrailv1.UsageEvent{
		EventId: f.EventID, Project: f.Project, KeyId: f.KeyID, Service: f.Service,
		GatewayInstance: f.GatewayInstance, Method: f.Method, Endpoint: f.Endpoint, Model: f.Model,
		Provider: f.Provider, ClientIp: f.ClientIP, RequestId: f.RequestID, StatusCode: f.StatusCode,
		LatencyMs: f.LatencyMs, InputTokens: f.InputTokens, OutputTokens: f.OutputTokens, CostMicros: f.CostMicros,
	}
	if f.HasTime {
		e.Time = &timestamppb.Timestamp{Seconds: f.Seconds, Nanos: f.Nanos}
	}
	return e
}

// Time is the event time (the zero Unix time when the event has none).
func (f *UsageFields) Time() time.Time { return time.Unix(f.Seconds, int64(f.Nanos)).UTC() }

// Validate checks the fields against the contract: ValidateUsage of a message holding them
// (its text as views, the message reused), so the rules are events.proto's, with their fast
// path, and nothing is allocated for a valid event.
func (f *UsageFields) Validate(now time.Time) error {
	m := usageScratch.Get().(*usageMessage)
	defer usageScratch.Put(m)
	e := &m.event
	*e = keytrailv1.UsageEvent{
		EventId: f.EventID, Project: f.Project, KeyId: f.KeyID, Service: f.Service,
		GatewayInstance: f.GatewayInstance, Method: f.Method, Endpoint: f.Endpoint, Model: f.Model,
		Provider: f.Provider, ClientIp: f.ClientIP, RequestId: f.RequestID, StatusCode: f.StatusCode,
		LatencyMs: f.LatencyMs, InputTokens: f.InputTokens, OutputTokens: f.OutputTokens, CostMicros: f.CostMicros,
	}
	if f.HasTime {
		m.time = timestamppb.Timestamp{Seconds: f.Seconds, Nanos: f.Nanos}
		e.Time = &m.time
	}
	err := ValidateUsage(e, now)
	// The pool must not keep f's views (nor the payload behind them) alive.
	*e = keytrailv1.UsageEvent{}
	return err
}

// usageMessage is Validate's scratch message and its time.
type usageMessage struct {
	event keytrailv1.UsageEvent
	time  timestamppb.Timestamp
}

var usageScratch = sync.Pool{New: func() any { return new(usageMessage) }}

// Redact replaces secret-shaped text fields with their fingerprints and returns how many it
// replaced; see event.RedactUsage, whose fields and fingerprints these are.
func (f *UsageFields) Redact() int {
	n := 0
	for _, p := range [...]*string{&f.EventID, &f.Project, &f.KeyID, &f.Service, &f.GatewayInstance, &f.Method, &f.Endpoint, &f.Model, &f.Provider, &f.ClientIP, &f.RequestID} {
		if event.LooksLikeSecret(*p) {
			*p = event.Fingerprint(*p)
			n++
		}
	}
	return n
}

// UsageWire reads a protobuf-encoded UsageEvent into f without allocating: the text
// fields are views into data, so data must not change while they are in use (the ingester
// copies them into its insert block before it lets go of the message).
//
// It reads only the canonical encoding, the one proto.Marshal produces: every field at most
// once, in field-number order, none of them at its zero value, minimal varints, no unknown
// fields, valid UTF-8. So data is exactly the deterministic encoding of the fields it
// returns, and its hash is the event's content hash. Anything else (and every invalid event
// that is not merely out of the contract's ranges) returns false, and the caller decodes the
// payload the ordinary way, which gives the same fields or the exact error: this decoder is
// a fast path, never a second definition of what a valid payload is.
func UsageWire(data []byte, f *UsageFields) bool {
	*f = UsageFields{}
	last := protowire.Number(0)
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 || num <= last || n != protowire.SizeTag(num) {
			return false
		}
		last = num
		data = data[n:]
		switch {
		case num == 2 && typ == protowire.BytesType:
			b, n := protowire.ConsumeBytes(data)
			if n < 0 || n != protowire.SizeBytes(len(b)) || !decodeTimestamp(b, f) {
				return false
			}
			f.HasTime = true
			data = data[n:]
		case (num <= 10 || num == 16 || num == 17) && typ == protowire.BytesType:
			b, n := protowire.ConsumeBytes(data)
			if n < 0 || len(b) == 0 || n != protowire.SizeBytes(len(b)) || !utf8.Valid(b) {
				return false
			}
			*usageText(f, num) = unsafe.String(&b[0], len(b))
			data = data[n:]
		case num >= 11 && num <= 15 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 || v == 0 || n != protowire.SizeVarint(v) {
				return false
			}
			switch num {
			case 11, 12:
				if v > math.MaxUint32 {
					return false
				}
				if num == 11 {
					f.StatusCode = uint32(v)
				} else {
					f.LatencyMs = uint32(v)
				}
			case 13:
				f.InputTokens = v
			case 14:
				f.OutputTokens = v
			case 15:
				f.CostMicros = int64(v)
			}
			data = data[n:]
		default:
			return false
		}
	}
	return true
}

// usageText is the text field of a field number (1, 3-10, 16, 17).
func usageText(f *UsageFields, num protowire.Number) *string {
	switch num {
	case 1:
		return &f.EventID
	case 3:
		return &f.Project
	case 4:
		return &f.KeyID
	case 5:
		return &f.Service
	case 6:
		return &f.GatewayInstance
	case 7:
		return &f.Method
	case 8:
		return &f.Endpoint
	case 9:
		return &f.Model
	case 10:
		return &f.Provider
	case 16:
		return &f.ClientIP
	default:
		return &f.RequestID
	}
}

// decodeTimestamp reads a canonical google.protobuf.Timestamp (seconds = 1, nanos = 2).
func decodeTimestamp(b []byte, f *UsageFields) bool {
	last := protowire.Number(0)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n != 1 || num <= last || typ != protowire.VarintType || num > 2 {
			return false
		}
		last = num
		b = b[n:]
		v, n := protowire.ConsumeVarint(b)
		if n < 0 || v == 0 || n != protowire.SizeVarint(v) {
			return false
		}
		b = b[n:]
		if num == 1 {
			f.Seconds = int64(v)
			continue
		}
		// int32 is sign-extended to 64 bits on the wire; anything else is not canonical.
		if int64(v) != int64(int32(v)) {
			return false
		}
		f.Nanos = int32(v)
	}
	return true
}
