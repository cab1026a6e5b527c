package bench

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// The fleet is the same in the Go generator (ingest phases) and the SQL loader (query
// phase): 10k keys in 20 projects, 500 services, each key called by 1-4 services, key
// popularity Zipf-like (rank = floor(K * u^3) for uniform u: the hottest key takes ~5% of
// requests, the 1000 hottest 46%, the coldest 0.003%), status mix about 94% 200, 3% 429,
// 1.5% 400, 1% 500, 0.5% 503, five model routes with list-price-like costs.
const (
	fleetKeys     = 10_000
	fleetServices = 500
	fleetProjects = 20
	// zipfExponent shapes key popularity: rank = floor(K * u^zipfExponent).
	zipfExponent = 3
)

// Model routes: index (key + service slot) % 5. Costs are micros per 10 tokens.
var (
	routeModels    = []string{"gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4", "claude-3-5-haiku"}
	routeProviders = []string{"openai", "openai", "openai", "anthropic", "anthropic"}
	routeEndpoints = []string{"/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/messages"}
	routeIn10      = []int64{25, 2, 1, 30, 8}
	routeOut10     = []int64{100, 6, 0, 150, 40}
)

func keyName(k int) string      { return fmt.Sprintf("key_%05d", k) }
func projectName(p int) string  { return fmt.Sprintf("proj_%02d", p) }
func serviceName(s int) string  { return fmt.Sprintf("svc-%03d", s) }
func projectOfKey(k int) int    { return k % fleetProjects }
func servicesOfKey(k int) int   { return 1 + k%4 }
func serviceOf(k, slot int) int { return (k*37 + slot*101) % fleetServices }
func routeOf(k, slot int) int   { return (k + slot) % len(routeModels) }
func clientIPOf(k, slot int) string {
	return "10." + strconv.Itoa(projectOfKey(k)) + "." + strconv.Itoa(slot) + "." + strconv.Itoa(k%256)
}

// zipfRank maps a uniform u in [0, 1) to a key rank.
func zipfRank(u float64) int {
	return min(int(float64(fleetKeys)*math.Pow(u, zipfExponent)), fleetKeys-1)
}

// names are the fleet's strings, built once so that generating an event allocates only the
// event and its ids.
type names struct {
	keys, projects, services []string
	ips                      [][]string // per key, per service slot
}

func newNames() *names {
	n := &names{keys: make([]string, fleetKeys), projects: make([]string, fleetProjects), services: make([]string, fleetServices), ips: make([][]string, fleetKeys)}
	for k := range n.keys {
		n.keys[k] = keyName(k)
		for slot := range servicesOfKey(k) {
			n.ips[k] = append(n.ips[k], clientIPOf(k, slot))
		}
	}
	for p := range n.projects {
		n.projects[p] = projectName(p)
	}
	for s := range n.services {
		n.services[s] = serviceName(s)
	}
	return n
}

// generator produces valid usage events of the fleet, deterministically from its seed
// (the same seed and times give the same events, ids included).
type generator struct {
	names *names
	state uint64
}

func newGenerator(n *names, seed uint64) *generator {
	// The state starts at a mix of the seed, not the seed times splitmix's increment:
	// with that, seed s+1 was seed s one step later, and generators of nearby seeds that
	// draw only ids (two steps each) produced each other's ids.
	g := &generator{names: n, state: seed}
	g.state = g.next()
	return g
}

// next is splitmix64.
func (g *generator) next() uint64 {
	g.state += 0x9E3779B97F4A7C15
	z := g.state
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (g *generator) uniform() float64 { return float64(g.next()>>11) / (1 << 53) }

// uuid is a version 4 UUID of the generator's next 128 bits, like publisher.NewEventID but
// reproducible.
func (g *generator) uuid() string {
	var b uuid.UUID
	a, c := g.next(), g.next()
	for i := range 8 {
		b[i], b[8+i] = byte(a>>(8*i)), byte(c>>(8*i))
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return b.String()
}

// usage is one usage event at the given time.
func (g *generator) usage(at time.Time) *keytrailv1.UsageEvent {
	k := zipfRank(g.uniform())
	r := g.next()
	slot := int(r % uint64(servicesOfKey(k)))
	route := routeOf(k, slot)
	r >>= 8
	status := uint32(200)
	switch s := r % 1000; {
	case s < 940:
	case s < 970:
		status = 429
	case s < 985:
		status = 400
	case s < 995:
		status = 500
	default:
		status = 503
	}
	r >>= 10
	in := 50 + r%3000
	r >>= 12
	out := 20 + r%1000
	if routeModels[route] == "text-embedding-3-small" {
		out = 0
	}
	r >>= 10
	cost := (int64(in)*routeIn10[route] + int64(out)*routeOut10[route]) / 10
	if status >= 400 {
		in, out, cost = 0, 0, 0
	}
	return &keytrailv1.UsageEvent{
		EventId:         g.uuid(),
		Time:            timestamppb.New(at),
		Project:         g.names.projects[projectOfKey(k)],
		KeyId:           g.names.keys[k],
		Service:         g.names.services[serviceOf(k, slot)],
		GatewayInstance: "gw-" + strconv.Itoa(projectOfKey(k)) + "-" + strconv.Itoa(int(r%3)),
		Method:          "POST",
		Endpoint:        routeEndpoints[route],
		Model:           routeModels[route],
		Provider:        routeProviders[route],
		StatusCode:      status,
		LatencyMs:       uint32(80 + g.next()%2500),
		InputTokens:     in,
		OutputTokens:    out,
		CostMicros:      cost,
		ClientIp:        g.names.ips[k][slot],
		RequestId:       "req-" + strconv.FormatUint(g.next(), 16),
	}
}

// backlogTime spreads a backlog's events over the hour before base, deterministically.
func (g *generator) backlogTime(base time.Time) time.Time {
	return base.Add(-time.Duration(g.next()%uint64(time.Hour/time.Millisecond)) * time.Millisecond)
}
