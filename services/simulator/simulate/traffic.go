package simulate

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Status mix of requests the gateway lets through. Under a spike the upstream throttles, so
// 429s take a larger share.
const (
	share429      = 0.03
	share429Spike = 0.20
	share500      = 0.01
	share400      = 0.015
	share503      = 0.005
	okShare       = 1 - share429 - share500 - share400 - share503
)

// Tick returns the events whose time lies in [from, to), ordered by time (lifecycle events
// first on a tie, then by id). Usage is generated per second of scenario time from a random
// source seeded by the scenario and that second, and each event from its own source, so the
// result does not depend on how time is cut into slices: the simulator can tick at any pace
// and a test can ask for any window.
func (s *Scenario) Tick(from, to time.Time) []event.Event {
	start := s.cfg.Start.Add(-s.cfg.History)
	if from.Before(start) {
		from = start
	}
	if !to.After(from) {
		return nil
	}
	var out []event.Event
	i, _ := slices.BinarySearchFunc(s.lifecycle, from, func(e event.Event, t time.Time) int {
		return e.Lifecycle.GetTime().AsTime().Compare(t)
	})
	for ; i < len(s.lifecycle) && s.lifecycle[i].Lifecycle.GetTime().AsTime().Before(to); i++ {
		// A copy, so a caller that edits an event cannot change the scenario's history.
		lc := proto.Clone(s.lifecycle[i].Lifecycle).(*keytrailv1.LifecycleEvent)
		out = append(out, event.Event{Kind: event.KindLifecycle, Lifecycle: lc})
	}
	first := floorSeconds(from.Sub(s.cfg.Start))
	last := floorSeconds(to.Sub(s.cfg.Start) - 1)
	for sec := first; sec <= last; sec++ {
		out = s.second(out, sec, from, to)
	}
	slices.SortStableFunc(out, func(a, b event.Event) int {
		if c := eventTime(a).Compare(eventTime(b)); c != 0 {
			return c
		}
		if a.Kind != b.Kind {
			return cmp.Compare(b.Kind, a.Kind) // lifecycle (2) before usage (1)
		}
		return cmp.Compare(a.ID(), b.ID())
	})
	return out
}

func eventTime(e event.Event) time.Time {
	if e.Kind == event.KindLifecycle {
		return e.Lifecycle.GetTime().AsTime()
	}
	return e.Usage.GetTime().AsTime()
}

// second appends the usage events of scenario second sec that fall in [from, to).
//
// Step 1 draws, from the second's own source, how many requests arrive and, for each, its
// millisecond and its stream; step 2 builds only the events inside the slice, each from a
// source of its own, so skipping one does not shift the draws of the others.
func (s *Scenario) second(out []event.Event, sec int64, from, to time.Time) []event.Event {
	base := s.cfg.Start.Add(time.Duration(sec) * time.Second)
	off := time.Duration(sec) * time.Second
	cum := make([]float64, len(s.streams))
	total := 0.0
	for i := range s.streams {
		total += s.streams[i].rate * s.streams[i].factor(off)
		cum[i] = total
	}
	rng := rand.New(rand.NewPCG(s.seed, mix(s.seed^uint64(sec))))
	n := poisson(rng, total)
	for i := range n {
		at := base.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
		u := rng.Float64() * total
		k := sort.Search(len(cum), func(j int) bool { return cum[j] > u })
		if at.Before(from) || !at.Before(to) || k == len(cum) {
			continue
		}
		out = append(out, s.usage(&s.streams[k], sec, i, at))
	}
	// The forgotten cron job fires on its schedule whatever the rate.
	if off >= cronAt && (off-cronAt)%cronPeriod == 0 {
		for c := range s.crons {
			for j := range cronCalls {
				at := base.Add(time.Duration(j) * 200 * time.Millisecond)
				if !at.Before(from) && at.Before(to) {
					out = append(out, s.usage(&s.crons[c], sec, n+c*cronCalls+j, at))
				}
			}
		}
	}
	return out
}

// usage builds request i of second sec on stream st.
func (s *Scenario) usage(st *stream, sec int64, i int, at time.Time) event.Event {
	rng := rand.New(rand.NewPCG(mix(s.seed^uint64(sec)), mix(uint64(i))))
	off := at.Sub(s.cfg.Start)
	r := st.routes[0]
	if len(st.routes) > 1 && rng.IntN(4) == 0 {
		r = st.routes[1+rng.IntN(len(st.routes)-1)]
	}
	e := &keytrailv1.UsageEvent{
		EventId:         s.eventID(fmt.Sprintf("%d-%d", sec, i)),
		Time:            timestamppb.New(at),
		Project:         st.project,
		KeyId:           st.key,
		Service:         st.service,
		GatewayInstance: st.instances[rng.IntN(len(st.instances))],
		Method:          "POST",
		Endpoint:        r.endpoint,
		Model:           r.model,
		Provider:        r.provider,
		ClientIp:        st.clientIP,
		RequestId:       fmt.Sprintf("req_%016x", rng.Uint64()),
	}
	e.StatusCode = status(rng, st, off)
	switch e.StatusCode {
	case 200:
		e.InputTokens = r.inLo + rng.Uint64N(r.inHi-r.inLo+1)
		e.OutputTokens = r.outLo + rng.Uint64N(r.outHi-r.outLo+1)
		e.CostMicros = int64((e.InputTokens*r.inPrice + e.OutputTokens*r.outPrice) / 1000)
		e.LatencyMs = latency(rng, r.medianLatency)
	case 500, 503:
		e.LatencyMs = latency(rng, r.medianLatency)
	default: // refused by the gateway or throttled: answered without the model's work
		e.LatencyMs = latency(rng, 12*time.Millisecond)
	}
	return event.Event{Kind: event.KindUsage, Usage: e}
}

func status(rng *rand.Rand, st *stream, off time.Duration) uint32 {
	switch {
	case st.disabledAt > 0 && off >= st.disabledAt:
		return statusDisabled
	case st.expiresAt > 0 && off >= st.expiresAt:
		return statusExpired
	}
	p429 := share429
	if st.factor(off) > 1 {
		p429 = share429Spike
	}
	switch u := rng.Float64(); {
	case u < p429:
		return 429
	case u < p429+share500:
		return 500
	case u < p429+share500+share400:
		return 400
	case u < p429+share500+share400+share503:
		return 503
	}
	return 200
}

// latency is log-normal around median: most requests near it, a long slow tail.
func latency(rng *rand.Rand, median time.Duration) uint32 {
	ms := float64(median.Milliseconds()) * math.Exp(0.5*rng.NormFloat64())
	return uint32(min(max(ms, 1), 60_000))
}

// poisson draws the number of arrivals in one second at mean lambda: exact for small means,
// the normal approximation above 30 where the exact method gets slow.
func poisson(rng *rand.Rand, lambda float64) int {
	if lambda <= 0 {
		return 0
	}
	if lambda < 30 {
		limit, p, k := math.Exp(-lambda), rng.Float64(), 0
		for p > limit {
			p *= rng.Float64()
			k++
		}
		return k
	}
	return max(0, int(math.Round(lambda+math.Sqrt(lambda)*rng.NormFloat64())))
}

// floorSeconds is d in whole seconds, rounded down (history seconds are negative).
func floorSeconds(d time.Duration) int64 {
	sec := int64(d / time.Second)
	if d < 0 && d%time.Second != 0 {
		sec--
	}
	return sec
}
