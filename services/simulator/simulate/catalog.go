package simulate

import "time"

// The catalog below is returned by functions rather than held in package variables so that
// no state is shared between scenarios, not even by accident.

// route is one upstream API a service calls, with the token ranges and list prices that make
// its cost. Prices are in thousandths of a micro-unit per token, so an integer product over
// 1000 gives cost_micros without floating point: $2.50 per million tokens is 2500.
type route struct {
	provider, model, endpoint string
	inLo, inHi, outLo, outHi  uint64
	inPrice, outPrice         uint64
	medianLatency             time.Duration
}

// meanOKCost is the expected cost of a successful request on r, in micro-units.
func (r route) meanOKCost() float64 {
	in := float64(r.inLo+r.inHi) / 2
	out := float64(r.outLo+r.outHi) / 2
	return (in*float64(r.inPrice) + out*float64(r.outPrice)) / 1000
}

func gpt4o() route {
	return route{"openai", "gpt-4o", "/v1/chat/completions", 300, 3000, 50, 800, 2500, 10000, 900 * time.Millisecond}
}

func gpt4oMini() route {
	return route{"openai", "gpt-4o-mini", "/v1/chat/completions", 200, 2000, 50, 600, 150, 600, 500 * time.Millisecond}
}

func embedding() route {
	return route{"openai", "text-embedding-3-small", "/v1/embeddings", 50, 2000, 0, 0, 20, 0, 60 * time.Millisecond}
}

func sonnet() route {
	return route{"anthropic", "claude-sonnet-4", "/v1/messages", 500, 4000, 100, 1000, 3000, 15000, 1400 * time.Millisecond}
}

func haiku() route {
	return route{"anthropic", "claude-3-5-haiku", "/v1/messages", 200, 2000, 50, 500, 800, 4000, 600 * time.Millisecond}
}

// routeMixes are the combinations of routes a service uses; the first route of a mix takes
// most of its traffic.
func routeMixes() [][]route {
	return [][]route{
		{gpt4o()}, {gpt4oMini()}, {embedding()}, {sonnet()}, {haiku()},
		{gpt4o(), embedding()}, {gpt4oMini(), embedding()}, {sonnet(), haiku()},
		{gpt4o(), gpt4oMini()}, {haiku(), embedding()},
	}
}

// serviceNames are a domain and a kind. Cron-like kinds are there because forgotten batch
// jobs are where stale keys live in practice.
func serviceNames() []string {
	domains := []string{
		"billing", "search", "checkout", "fraud", "support", "recommendation", "ledger", "notification",
		"catalog", "pricing", "onboarding", "analytics", "summarizer", "translation", "moderation",
		"inventory", "reporting", "chat", "docs", "email", "invoice", "payments", "shipping", "identity",
		"marketing", "forecast", "sentiment", "routing", "compliance", "feedback", "nightly-report",
		"contract-review", "lead-scoring", "transcription", "knowledge-base",
	}
	kinds := []string{"-api", "-worker", "-service", "-cron", "-batch", "-bot"}
	names := make([]string, 0, len(domains)*len(kinds))
	for _, d := range domains {
		for _, k := range kinds {
			names = append(names, d+k)
		}
	}
	return names
}

type projectSpec struct {
	name     string
	keys     int // keys created at the start: key_<name>_0001 onwards
	services int
}

func projectSpecs() []projectSpec {
	return []projectSpec{
		{"acme", 80, 36}, {"globex", 70, 32}, {"initech", 60, 28}, {"umbrella", 50, 24},
	}
}

func creatorUsers() []string {
	return []string{"alice", "bob", "carol", "dana", "erin", "frank", "grace", "heidi"}
}

func creatorServices() []string { return []string{"terraform", "key-provisioner", "ci-bootstrap"} }

func scopeSets() [][]string {
	return [][]string{{"chat"}, {"chat", "embeddings"}, {"embeddings"}, {"chat", "moderation"}, {"chat", "files", "batch"}}
}
