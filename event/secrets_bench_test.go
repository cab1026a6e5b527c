package event

import "testing"

func BenchmarkRedactUsage(b *testing.B) {
	e := validUsage()
	e.Endpoint, e.Model, e.Provider, e.GatewayInstance = "/v1/chat/completions", "gpt-4o-2024-08-06", "openai", "gw-eu-west-1-7f9c"
	e.RequestId, e.ClientIp, e.Method = "req-3f2b8c1e-9a4d-4e6f-b1c2-7d8e9f0a1b2c", "10.12.34.56", "POST"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if RedactUsage(e) != 0 {
			b.Fatal("redacted")
		}
	}
}
