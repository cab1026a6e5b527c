package decode

import (
	"testing"

	"google.golang.org/protobuf/proto"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// The per-event cost of validation: the ingester validates every event it consumes, so this
// is part of its CPU per event (`go test -run '^$' -bench Validate -benchmem ./event/decode`).

// fullUsage is a usage event with every field set, as an LLM gateway sends them.
func fullUsage() *keytrailv1.UsageEvent {
	e := validUsage()
	e.GatewayInstance, e.Method, e.Endpoint = "gw-eu-west-1-7f9c", "POST", "/v1/chat/completions"
	e.Model, e.Provider, e.ClientIp = "gpt-4o-2024-08-06", "openai", "10.12.34.56"
	e.RequestId, e.LatencyMs, e.InputTokens, e.OutputTokens = "req-3f2b8c1e-9a4d-4e6f-b1c2-7d8e9f0a1b2c", 840, 1200, 300
	return e
}

// fullLifecycle is a rotation with scopes, attributes and changes.
func fullLifecycle() *keytrailv1.LifecycleEvent {
	e := validLifecycle()
	e.Reason = "quarterly rotation"
	e.Scopes = []string{"chat:write", "embeddings:read"}
	e.Attributes = map[string]string{"ticket": "SEC-1234", "tool": "keyctl/2.3.1"}
	e.Changes = []*keytrailv1.FieldChange{{Field: "key_id", Before: "key_1", After: "key_2"}}
	return e
}

func BenchmarkValidateUsage(b *testing.B) {
	e := fullUsage()
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateUsage(e, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidateLifecycle(b *testing.B) {
	e := fullLifecycle()
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateLifecycle(e, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeUsage is the whole of what the ingester does to a message before batching
// it: parse the subject, unmarshal, validate. It puts validation's share in proportion.
func BenchmarkDecodeUsage(b *testing.B) {
	data, err := proto.Marshal(fullUsage())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Event(subjects, "keytrail.usage.acme", "", data, testNow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidateUsageRejected is a usage event that breaks a rule (a control character
// in the endpoint): the dead-letter path.
func BenchmarkValidateUsageRejected(b *testing.B) {
	e := fullUsage()
	e.Endpoint = "/v1/\x1b[2J"
	b.ReportAllocs()
	for b.Loop() {
		if err := ValidateUsage(e, testNow); err == nil {
			b.Fatal("accepted")
		}
	}
}
