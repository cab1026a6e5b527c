//go:build cluster

package clustertest

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// eventSet is the multi-node test's known events, in publish order (by event time): usage of
// four projects' keys by eight services over 28 hours, every key's creation, budgets, a
// disabled key, scope changes spread through the run (so audit chains grow while the faults
// happen), and a double-key roll in acme: key_acme_03 is rotated to key_acme_16 (created by the
// rotation) at +20h, after which five of the services calling it move to the new key and three
// stay on the old one.
type eventSet struct {
	base     time.Time
	rotation time.Time
	events   []any // *keytrailv1.UsageEvent or *keytrailv1.LifecycleEvent
	usage    int
	// lifecycle per project
	lifecycle map[string]int
}

var setProjects = []string{"acme", "globex", "initech", "umbrella"}

const (
	setKeys     = 15
	setServices = 8
	setSpan     = 28 * time.Hour
)

func key(project string, i int) string { return fmt.Sprintf("key_%s_%02d", project, i) }

func newEventSet(usage int) *eventSet {
	// Whole hours, far enough in the past that nothing is "now" and far from any day edge
	// that would make the two days of spend depend on when the test runs.
	base := time.Now().UTC().Add(-setSpan - 2*time.Hour).Truncate(time.Hour)
	s := &eventSet{base: base, rotation: base.Add(20 * time.Hour), lifecycle: map[string]int{}}
	lc := func(at time.Time, project, keyID string, action keytrailv1.Action, mod func(*keytrailv1.LifecycleEvent)) {
		e := &keytrailv1.LifecycleEvent{
			EventId: fmt.Sprintf("lc-%s-%s-%d-%d", project, keyID, action, at.UnixMilli()), Time: timestamppb.New(at),
			Project: project, KeyId: keyID, Action: action, Actor: "ops@" + project, ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER,
			Scopes: []string{"chat"},
		}
		if mod != nil {
			mod(e)
		}
		s.events = append(s.events, e)
		s.lifecycle[project]++
	}
	for _, p := range setProjects {
		for k := range setKeys {
			lc(base.Add(-time.Hour).Add(time.Duration(k)*time.Second), p, key(p, k), keytrailv1.Action_ACTION_CREATED, func(e *keytrailv1.LifecycleEvent) {
				if k == 0 {
					e.Budget = &keytrailv1.Budget{AmountMicros: 2_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
				}
			})
		}
	}
	step := setSpan / time.Duration(usage)
	for i := range usage {
		at := base.Add(time.Duration(i) * step)
		p := setProjects[i%len(setProjects)]
		k := (i / len(setProjects)) % setKeys
		svc := (i / 7) % setServices
		keyID := key(p, k)
		// After the rotation, services 0-4 of the old key call the new one.
		if p == "acme" && k == 3 && !at.Before(s.rotation) && svc < 5 {
			keyID = key(p, 16)
		}
		status := uint32(200)
		switch {
		case i%97 == 0:
			status = 429
		case i%31 == 0:
			status = 500
		}
		s.events = append(s.events, &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("u-%06d", i), Time: timestamppb.New(at), Project: p, KeyId: keyID,
			Service: fmt.Sprintf("svc-%d", svc), GatewayInstance: fmt.Sprintf("gw-%d", i%3), Method: "POST", Endpoint: "/v1/chat/completions",
			Model: []string{"gpt-4o", "claude-sonnet"}[i%2], Provider: "openai", StatusCode: status, LatencyMs: uint32(40 + i%300),
			InputTokens: uint64(i % 700), OutputTokens: uint64(i % 300), CostMicros: int64(i % 1000), ClientIp: fmt.Sprintf("10.1.%d.%d", i%4, i%50),
			RequestId: fmt.Sprintf("req-%d", i),
		})
		s.usage++
		// Lifecycle events all along, so the audit chains grow while the faults happen.
		if i%500 == 250+(i/500)%len(setProjects) { // every project in turn
			lc(at, p, keyID, keytrailv1.Action_ACTION_SCOPES_CHANGED, func(e *keytrailv1.LifecycleEvent) {
				e.Scopes = []string{"chat", fmt.Sprintf("batch-%d", i)}
				e.Changes = []*keytrailv1.FieldChange{{Field: "scopes", Before: "chat", After: fmt.Sprintf("chat,batch-%d", i)}}
			})
		}
		if i == usage/3 {
			lc(at, "globex", key("globex", 5), keytrailv1.Action_ACTION_DISABLED, func(e *keytrailv1.LifecycleEvent) { e.Reason = "leaked" })
		}
		if at.Equal(s.rotation) || (i > 0 && at.After(s.rotation) && base.Add(time.Duration(i-1)*step).Before(s.rotation)) {
			lc(s.rotation, "acme", key("acme", 3), keytrailv1.Action_ACTION_ROTATED, func(e *keytrailv1.LifecycleEvent) {
				e.NewKeyId = key("acme", 16)
				e.Reason = "scheduled roll"
			})
		}
	}
	return s
}

func (s *eventSet) lifecycleTotal() int {
	n := 0
	for _, c := range s.lifecycle {
		n += c
	}
	return n
}

// burst is n more usage events (ids <prefix>NNNNNN) over the same keys, services and span.
func (s *eventSet) burst(n int, prefix string) []*keytrailv1.UsageEvent {
	out := make([]*keytrailv1.UsageEvent, n)
	step := setSpan / time.Duration(n)
	for i := range n {
		p := setProjects[i%len(setProjects)]
		out[i] = &keytrailv1.UsageEvent{
			EventId: fmt.Sprintf("%s%06d", prefix, i), Time: timestamppb.New(s.base.Add(time.Duration(i) * step)), Project: p,
			KeyId: key(p, (i/len(setProjects))%setKeys), Service: fmt.Sprintf("svc-%d", (i/7)%setServices), Method: "POST",
			Endpoint: "/v1/embeddings", Model: "text-embedding", Provider: "openai", StatusCode: 200, LatencyMs: 20,
			InputTokens: 100, CostMicros: 3, ClientIp: "10.2.0.1",
		}
	}
	return out
}
