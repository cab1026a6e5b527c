package decode

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// wireCases are usage events whose proto.Marshal encoding UsageWire must read: every
// field at extreme values, and fields left out.
func wireCases() map[string]*keytrailv1.UsageEvent {
	full := benchUsage()
	extreme := benchUsage()
	extreme.Time = &timestamppb.Timestamp{Seconds: math.MaxInt64, Nanos: -1}
	extreme.StatusCode, extreme.LatencyMs = math.MaxUint32, 1
	extreme.InputTokens, extreme.OutputTokens, extreme.CostMicros = math.MaxUint64, 1, -1
	extreme.KeyId, extreme.Endpoint = "ключ-ü-🔑", string(make([]byte, 300))
	sparse := &keytrailv1.UsageEvent{EventId: "e", RequestId: "r", Time: &timestamppb.Timestamp{}}
	return map[string]*keytrailv1.UsageEvent{
		"full": full, "extreme": extreme, "sparse": sparse, "empty": {},
		"time only nanos": {Time: &timestamppb.Timestamp{Nanos: 5}},
		"negative cost":   {EventId: "x", CostMicros: math.MinInt64},
	}
}

func TestDecodeUsageWireReadsWhatMarshalWrites(t *testing.T) {
	for name, e := range wireCases() {
		t.Run(name, func(t *testing.T) {
			data, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			var f UsageFields
			if !UsageWire(data, &f) {
				t.Fatalf("UsageWire refused proto.Marshal's encoding % x", data)
			}
			if want := FieldsOf(e); !reflect.DeepEqual(f, want) {
				t.Errorf("fields\n got %+v\nwant %+v", f, want)
			}
			// The fields encode back to the same bytes: data is their content hash's input.
			again, _ := proto.MarshalOptions{Deterministic: true}.Marshal(f.Event())
			if !bytes.Equal(again, data) {
				t.Errorf("re-encoded % x, want % x", again, data)
			}
		})
	}
}

func TestDecodeUsageWireRefusesAllButTheCanonicalForm(t *testing.T) {
	canonical, _ := proto.Marshal(&keytrailv1.UsageEvent{EventId: "ev", Time: timestamppb.New(testNow), StatusCode: 200})
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(num, protowire.BytesType), s)
	}
	varint := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(tag(num, protowire.VarintType), v)
	}
	cases := map[string][]byte{
		"fields out of order":       cat(varint(11, 200), str(1, "ev")),
		"a field twice":             cat(str(1, "ev"), str(1, "ev2")),
		"an empty string":           cat(str(1, "ev"), str(3, "")),
		"a zero varint":             cat(str(1, "ev"), varint(11, 0)),
		"a non-minimal varint":      cat(str(1, "ev"), tag(11, protowire.VarintType), []byte{0xc8, 0x81, 0x00}),
		"a non-minimal length":      cat(tag(1, protowire.BytesType), []byte{0x82, 0x00}, []byte("ev")),
		"an unknown field":          cat(str(1, "ev"), varint(99, 1)),
		"a known field, wrong type": cat(varint(1, 5)),
		"invalid UTF-8":             cat(str(1, "e\xffv")),
		"status over 32 bits":       cat(str(1, "ev"), varint(11, 1<<32)),
		"nanos over 32 bits":        cat(str(1, "ev"), protowire.AppendBytes(tag(2, protowire.BytesType), varint(2, 1<<40))),
		"time with unknown field":   cat(str(1, "ev"), protowire.AppendBytes(tag(2, protowire.BytesType), varint(3, 1))),
		"truncated":                 canonical[:len(canonical)-1],
	}
	for name, data := range cases {
		var f UsageFields
		if UsageWire(data, &f) {
			t.Errorf("%s: accepted % x as %+v", name, data, f)
		}
	}
	var f UsageFields
	if !UsageWire(canonical, &f) || f.EventID != "ev" || f.StatusCode != 200 || f.Seconds != testNow.Unix() {
		t.Errorf("the canonical form: %+v", f)
	}
}

// TestDecodeUsageAgreesWithDecode: the ingester's usage path (Usage) and Event reach the
// same verdict, with the same reason and detail, and the same fields, on valid events and on
// every way of being invalid that the other tests of this package use.
func TestDecodeUsageAgreesWithDecode(t *testing.T) {
	type input struct {
		subject, contentType string
		data                 []byte
	}
	var inputs []input
	for _, e := range wireCases() {
		b, _ := proto.Marshal(e)
		inputs = append(inputs, input{"keytrail.usage.proj_07", "", b})
	}
	valid, _ := proto.Marshal(benchUsage())
	j, _ := event.EncodingJSON.Marshal(benchUsage())
	bad := benchUsage()
	bad.CostMicros, bad.Project = -5, "other"
	badData, _ := proto.Marshal(bad)
	inputs = append(inputs,
		input{"keytrail.usage.proj_07", event.ContentTypeProto, valid},
		input{"keytrail.usage.proj_07", event.ContentTypeJSON, j},
		input{"keytrail.usage.other", "", valid},
		input{"keytrail.lifecycle.proj_07", "", valid},
		input{"elsewhere.usage.proj_07", "", valid},
		input{"keytrail.usage.proj_07", "text/plain", valid},
		input{"keytrail.usage.proj_07", "", []byte{0x0a, 0x02, 0xff, 0xfe}},
		input{"keytrail.usage.proj_07", "", make([]byte, event.MaxPayloadBytes+1)},
		input{"keytrail.usage.other", "", badData},
	)
	for i, in := range inputs {
		ev, wantErr := Event(subjects, in.subject, in.contentType, in.data, testNow)
		var f UsageFields
		m, err := Usage(subjects, in.subject, in.contentType, in.data, testNow, &f)
		var a, b *event.Invalid
		switch {
		case wantErr == nil && err == nil:
			if ev.Kind != event.KindUsage || !reflect.DeepEqual(f, FieldsOf(ev.Usage)) {
				t.Errorf("input %d: fields %+v, Event gave %v", i, f, ev.Usage)
			}
			// Only canonical protobuf takes the fast path; anything else comes with its message.
			canonical, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ev.Usage)
			if fast := in.contentType != event.ContentTypeJSON && bytes.Equal(canonical, in.data); (m == nil) != fast || (m != nil && !proto.Equal(m, ev.Usage)) {
				t.Errorf("input %d: message %v, fast path expected %v", i, m, fast)
			}
		case wantErr != nil && err != nil && errors.As(wantErr, &a) && errors.As(err, &b):
			// A lifecycle subject is not a usage subject: Event decodes it, Usage refuses.
			if in.subject != "keytrail.lifecycle.proj_07" && (a.Reason != b.Reason || a.Detail != b.Detail) {
				t.Errorf("input %d: %v, Event: %v", i, err, wantErr)
			}
		case in.subject == "keytrail.lifecycle.proj_07" && err != nil:
		default:
			t.Errorf("input %d: Usage %v, Event %v", i, err, wantErr)
		}
	}
}

// FuzzDecodeUsage: whatever the bytes, the fast path accepts only what proto.Unmarshal reads
// as the same fields and what proto.Marshal writes back byte for byte, and Usage reaches
// Event's verdict. `go test -fuzz FuzzDecodeUsage ./event/decode` explores further.
func FuzzDecodeUsage(f *testing.F) {
	for _, e := range wireCases() {
		b, _ := proto.Marshal(e)
		f.Add("", b)
	}
	j, _ := event.EncodingJSON.Marshal(benchUsage())
	f.Add(event.ContentTypeJSON, j)
	f.Add("", []byte{0x0a, 0x02, 0xff, 0xfe})
	f.Fuzz(func(t *testing.T, contentType string, data []byte) {
		var fields UsageFields
		if UsageWire(data, &fields) {
			m := &keytrailv1.UsageEvent{}
			if err := proto.Unmarshal(data, m); err != nil {
				t.Fatalf("fast path accepted what proto.Unmarshal refuses: %v", err)
			}
			if want := FieldsOf(m); !reflect.DeepEqual(fields, want) {
				t.Fatalf("fields %+v, proto.Unmarshal %+v", fields, want)
			}
			if again, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(m); !bytes.Equal(again, data) {
				t.Fatalf("accepted a non-canonical encoding % x (canonical % x)", data, again)
			}
		}
		ev, wantErr := Event(subjects, "keytrail.usage.proj_07", contentType, data, testNow)
		var got UsageFields
		_, err := Usage(subjects, "keytrail.usage.proj_07", contentType, data, testNow, &got)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("Usage %v, Event %v", err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, FieldsOf(ev.Usage)) {
			t.Fatalf("fields %+v, Event %v", got, ev.Usage)
		}
		if err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("Usage %v, Event %v", err, wantErr)
		}
	})
}

// TestRedactUsageFieldsLikeRedactUsage: the field-wise redaction covers exactly the fields
// event.RedactUsage covers, with the same fingerprints.
func TestRedactUsageFieldsLikeRedactUsage(t *testing.T) {
	const secret = "sk-live-abcdefghijklmnopqrstuvwxyz012345"
	setters := map[string]func(*keytrailv1.UsageEvent){
		"event_id": func(e *keytrailv1.UsageEvent) { e.EventId = secret }, "project": func(e *keytrailv1.UsageEvent) { e.Project = secret },
		"key_id": func(e *keytrailv1.UsageEvent) { e.KeyId = secret }, "service": func(e *keytrailv1.UsageEvent) { e.Service = secret },
		"gateway_instance": func(e *keytrailv1.UsageEvent) { e.GatewayInstance = secret }, "method": func(e *keytrailv1.UsageEvent) { e.Method = secret },
		"endpoint": func(e *keytrailv1.UsageEvent) { e.Endpoint = "/v1?key=" + secret }, "model": func(e *keytrailv1.UsageEvent) { e.Model = secret },
		"provider": func(e *keytrailv1.UsageEvent) { e.Provider = secret }, "client_ip": func(e *keytrailv1.UsageEvent) { e.ClientIp = secret },
		"request_id": func(e *keytrailv1.UsageEvent) { e.RequestId = "Bearer " + secret },
	}
	for name, set := range setters {
		e := benchUsage()
		set(e)
		f := FieldsOf(e)
		nf := f.Redact()
		ne := event.RedactUsage(e)
		if nf != ne || !reflect.DeepEqual(f, FieldsOf(e)) {
			t.Errorf("%s: fields redacted %d to %+v, event.RedactUsage %d to %v", name, nf, f, ne, e)
		}
	}
}
