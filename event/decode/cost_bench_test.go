package decode

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

func benchUsage() *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: "3f2b8c1e-9a4d-4e6f-b1c2-7d8e9f0a1b2c", Time: timestamppb.New(testNow.Add(-time.Minute)),
		Project: "proj_07", KeyId: "key_00427", Service: "svc-123", GatewayInstance: "gw-7-2",
		Method: "POST", Endpoint: "/v1/chat/completions", Model: "gpt-4o-mini", Provider: "openai",
		StatusCode: 200, LatencyMs: 812, InputTokens: 1234, OutputTokens: 456, CostMicros: 5678,
		ClientIp: "10.7.1.171", RequestId: "req-9f3a2b1c4d5e6f70",
	}
}

func BenchmarkUnmarshalUsage(b *testing.B) {
	data, _ := proto.Marshal(benchUsage())
	b.ReportAllocs()
	for b.Loop() {
		m := &keytrailv1.UsageEvent{}
		if err := proto.Unmarshal(data, m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedactBenchUsage(b *testing.B) {
	e := benchUsage()
	b.ReportAllocs()
	for b.Loop() {
		if event.RedactUsage(e) != 0 {
			b.Fatal("redacted")
		}
	}
}

func BenchmarkMarshalDeterministic(b *testing.B) {
	e := benchUsage()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (proto.MarshalOptions{Deterministic: true}).Marshal(e); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeUsageFields(b *testing.B) {
	data, _ := proto.Marshal(benchUsage())
	var f UsageFields
	b.ReportAllocs()
	for b.Loop() {
		if m, err := Usage(subjects, "keytrail.usage.proj_07", event.ContentTypeProto, data, testNow, &f); err != nil || m != nil {
			b.Fatal(m, err)
		}
	}
}

func BenchmarkDecodeUsageWire(b *testing.B) {
	data, _ := proto.Marshal(benchUsage())
	var f UsageFields
	b.ReportAllocs()
	for b.Loop() {
		if !UsageWire(data, &f) {
			b.Fatal("refused")
		}
	}
}

func BenchmarkValidateUsageFields(b *testing.B) {
	f := FieldsOf(benchUsage())
	b.ReportAllocs()
	for b.Loop() {
		if err := f.Validate(testNow); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedactUsageFields(b *testing.B) {
	f := FieldsOf(benchUsage())
	b.ReportAllocs()
	for b.Loop() {
		if f.Redact() != 0 {
			b.Fatal("redacted")
		}
	}
}
