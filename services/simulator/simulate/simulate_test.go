package simulate_test

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/services/simulator/simulate"
)

var start = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)

func newScenario(t testing.TB, seed int64, rate float64) *simulate.Scenario {
	t.Helper()
	s, err := simulate.New(simulate.Config{Seed: seed, Start: start, Rate: rate})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// run is the first 20 minutes of the seed-42 scenario at 200 events/s, generated once: every
// feature has played out by then.
type run struct {
	notable   simulate.Notable
	events    []event.Event
	usage     []*keytrailv1.UsageEvent
	lifecycle []*keytrailv1.LifecycleEvent
}

var twentyMinutes = sync.OnceValue(func() run {
	s, err := simulate.New(simulate.Config{Seed: 42, Start: start, Rate: 200})
	if err != nil {
		panic(err)
	}
	r := run{notable: s.Notable(), events: s.Tick(start, start.Add(20*time.Minute))}
	for _, e := range r.events {
		if e.Kind == event.KindUsage {
			r.usage = append(r.usage, e.Usage)
		} else {
			r.lifecycle = append(r.lifecycle, e.Lifecycle)
		}
	}
	return r
})

func at(off time.Duration) time.Time { return start.Add(off) }

// count counts usage events matching keep in [from, to) offsets.
func count(r run, from, to time.Duration, keep func(*keytrailv1.UsageEvent) bool) int {
	n := 0
	for _, u := range r.usage {
		t := u.GetTime().AsTime()
		if !t.Before(at(from)) && t.Before(at(to)) && keep(u) {
			n++
		}
	}
	return n
}

func onKey(key string) func(*keytrailv1.UsageEvent) bool {
	return func(u *keytrailv1.UsageEvent) bool { return u.GetKeyId() == key }
}

func onKeyService(key, service string) func(*keytrailv1.UsageEvent) bool {
	return func(u *keytrailv1.UsageEvent) bool { return u.GetKeyId() == key && u.GetService() == service }
}

func lifecycleOf(r run, key string, action keytrailv1.Action) []*keytrailv1.LifecycleEvent {
	var out []*keytrailv1.LifecycleEvent
	for _, e := range r.lifecycle {
		if e.GetKeyId() == key && e.GetAction() == action {
			out = append(out, e)
		}
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	err := simulate.Config{Rate: -1}.Validate()
	want := "simulate: start time is required\nsimulate: rate -1 must be positive and at most 1e6 events/s"
	if err == nil || err.Error() != want {
		t.Errorf("Validate: %v", err)
	}
	if _, err := simulate.New(simulate.Config{Start: start, Rate: math.NaN()}); err == nil {
		t.Error("NaN rate accepted")
	}
}

func TestSameSeedSameEvents(t *testing.T) {
	a := newScenario(t, 7, 100).Tick(start, at(2*time.Minute))
	b := newScenario(t, 7, 100).Tick(start, at(2*time.Minute))
	if len(a) != len(b) {
		t.Fatalf("%d events, then %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Kind != b[i].Kind || !proto.Equal(a[i].Usage, b[i].Usage) || !proto.Equal(a[i].Lifecycle, b[i].Lifecycle) {
			t.Fatalf("event %d differs:\n%v\n%v", i, a[i], b[i])
		}
	}
	other := newScenario(t, 8, 100).Tick(start, at(2*time.Minute))
	if len(other) == len(a) && proto.Equal(other[500].Usage, a[500].Usage) {
		t.Error("seed 8 generated the same traffic as seed 7")
	}
}

func TestSlicingDoesNotChangeEvents(t *testing.T) {
	s := newScenario(t, 3, 150)
	whole := s.Tick(start, at(90*time.Second))
	var sliced []event.Event
	// Irregular steps, some inside one second, some across several.
	steps := []time.Duration{250 * time.Millisecond, 733 * time.Millisecond, 2 * time.Second, time.Millisecond, 1500 * time.Millisecond}
	for from, i := start, 0; from.Before(at(90 * time.Second)); i++ {
		to := from.Add(steps[i%len(steps)])
		if to.After(at(90 * time.Second)) {
			to = at(90 * time.Second)
		}
		for _, e := range s.Tick(from, to) {
			if et := eventTime(e); et.Before(from) || !et.Before(to) {
				t.Fatalf("event %s at %s outside [%s, %s)", e.ID(), et, from, to)
			}
			sliced = append(sliced, e)
		}
		from = to
	}
	if len(sliced) != len(whole) {
		t.Fatalf("sliced %d events, whole %d", len(sliced), len(whole))
	}
	for i := range whole {
		if !proto.Equal(whole[i].Usage, sliced[i].Usage) || !proto.Equal(whole[i].Lifecycle, sliced[i].Lifecycle) {
			t.Fatalf("event %d differs: %s vs %s", i, whole[i].ID(), sliced[i].ID())
		}
	}
	if got := s.Tick(at(time.Minute), at(time.Minute)); got != nil {
		t.Errorf("empty slice gave %d events", len(got))
	}
	if got := s.Tick(start.Add(-time.Hour), start); got != nil {
		t.Errorf("slice before the start gave %d events", len(got))
	}
}

func TestEventsAreValidOrderedAndUnique(t *testing.T) {
	r := twentyMinutes()
	ids := make(map[string]bool, len(r.events))
	end := at(20 * time.Minute)
	for i, e := range r.events {
		if ids[e.ID()] {
			t.Fatalf("id %s repeated", e.ID())
		}
		ids[e.ID()] = true
		if u, err := uuid.Parse(e.ID()); err != nil || u.Version() != 5 {
			t.Fatalf("id %s is not a name-based (version 5) UUID", e.ID())
		}
		if i > 0 && eventTime(e).Before(eventTime(r.events[i-1])) {
			t.Fatalf("event %d out of order", i)
		}
		var err error
		if e.Kind == event.KindUsage {
			err = decode.ValidateUsage(e.Usage, end)
		} else {
			err = decode.ValidateLifecycle(e.Lifecycle, end)
		}
		if err != nil {
			t.Fatalf("event %s invalid: %v", e.ID(), err)
		}
	}
	// Another start, same seed: no id in common, so a second run is never deduplicated
	// against the first.
	later, err := simulate.New(simulate.Config{Seed: 42, Start: start.Add(time.Hour), Rate: 200})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range later.Tick(start.Add(time.Hour), start.Add(time.Hour+10*time.Second)) {
		if ids[e.ID()] {
			t.Fatalf("id %s reused by a run with another start", e.ID())
		}
	}
}

func TestFleetShape(t *testing.T) {
	r := twentyMinutes()
	keys, services := map[string]bool{}, map[string]map[string]bool{}
	status := map[uint32]int{}
	for _, u := range r.usage {
		keys[u.GetKeyId()] = true
		if services[u.GetProject()] == nil {
			services[u.GetProject()] = map[string]bool{}
		}
		services[u.GetProject()][u.GetService()] = true
		if !strings.HasPrefix(u.GetKeyId(), "key_"+u.GetProject()+"_") {
			t.Fatalf("key %s in project %s", u.GetKeyId(), u.GetProject())
		}
		if u.GetTime().AsTime().Before(at(10*time.Minute)) && !u.GetTime().AsTime().Before(at(6*time.Minute)) {
			continue // the spike skews the status mix on purpose
		}
		status[u.GetStatusCode()]++
	}
	if len(keys) != 262 {
		t.Errorf("%d keys used, want 262 (260 created at the start, the rotation's new key, the expiring key)", len(keys))
	}
	for _, p := range []string{"acme", "globex", "initech", "umbrella"} {
		if n := len(services[p]); n < 24 || n > 50 {
			t.Errorf("project %s has %d services", p, n)
		}
	}
	total := 0
	for _, n := range status {
		total += n
	}
	share := func(code uint32) float64 { return float64(status[code]) / float64(total) }
	if s := share(200); s < 0.92 || s > 0.95 {
		t.Errorf("200 share %.3f", s)
	}
	if s := share(429); s < 0.02 || s > 0.04 {
		t.Errorf("429 share %.3f", s)
	}
	if s := share(500); s < 0.005 || s > 0.015 {
		t.Errorf("500 share %.3f", s)
	}
	// Outside the spike the mean rate is Rate: minutes 11-20 hold about 200 * 540 events.
	if n := count(r, 11*time.Minute, 20*time.Minute, func(*keytrailv1.UsageEvent) bool { return true }); n < 200*540*97/100 || n > 200*540*103/100 {
		t.Errorf("%d events in 9 minutes, want about %d", n, 200*540)
	}
	for _, u := range r.usage {
		if u.GetStatusCode() == 200 && (u.GetCostMicros() <= 0 || u.GetInputTokens() == 0 || u.GetLatencyMs() == 0) {
			t.Fatalf("successful request without cost, tokens or latency: %v", u)
		}
		if u.GetStatusCode() != 200 && u.GetCostMicros() != 0 {
			t.Fatalf("failed request with a cost: %v", u)
		}
	}
}

func TestEveryKeyIsCreatedBeforeItsFirstUse(t *testing.T) {
	r := twentyMinutes()
	created := map[string]time.Time{}
	actorTypes := map[keytrailv1.ActorType]int{}
	for _, e := range r.lifecycle {
		if e.GetAction() == keytrailv1.Action_ACTION_CREATED {
			created[e.GetKeyId()] = e.GetTime().AsTime()
			actorTypes[e.GetActorType()]++
			if len(e.GetAttributes()) == 0 && e.GetReason() == "" {
				t.Errorf("created event of %s has neither attributes nor reason", e.GetKeyId())
			}
		}
	}
	if len(created) != 262 {
		t.Errorf("%d created events, want 262", len(created))
	}
	for _, typ := range []keytrailv1.ActorType{keytrailv1.ActorType_ACTOR_TYPE_USER, keytrailv1.ActorType_ACTOR_TYPE_SERVICE, keytrailv1.ActorType_ACTOR_TYPE_SYSTEM} {
		if actorTypes[typ] < 80 {
			t.Errorf("%d keys created by actor type %s", actorTypes[typ], typ)
		}
	}
	for _, u := range r.usage {
		c, ok := created[u.GetKeyId()]
		if !ok || !u.GetTime().AsTime().After(c) {
			t.Fatalf("usage of %s at %s before its creation (%v)", u.GetKeyId(), u.GetTime().AsTime(), c)
		}
	}
}

func TestRotationInProgress(t *testing.T) {
	r := twentyMinutes()
	n := r.notable
	if n.RotationOldKey != "key_acme_0007" || n.RotationNewKey != "key_acme_0081" || !n.RotatedAt.Equal(at(20*time.Second)) {
		t.Errorf("notable rotation %s -> %s at %s", n.RotationOldKey, n.RotationNewKey, n.RotatedAt)
	}
	rot := lifecycleOf(r, n.RotationOldKey, keytrailv1.Action_ACTION_ROTATED)
	if len(rot) != 1 || rot[0].GetNewKeyId() != n.RotationNewKey || rot[0].GetActorType() != keytrailv1.ActorType_ACTOR_TYPE_USER ||
		!rot[0].GetTime().AsTime().Equal(n.RotatedAt) || rot[0].GetAttributes()["ticket"] != "SEC-2291" {
		t.Fatalf("rotated events %v", rot)
	}
	if c := lifecycleOf(r, n.RotationNewKey, keytrailv1.Action_ACTION_CREATED); len(c) != 1 || !c[0].GetTime().AsTime().Equal(at(10*time.Second)) {
		t.Errorf("created events of the new key %v", c)
	}
	all := slices.Concat(n.RotationMovedServices, n.RotationMixedServices, n.RotationPendingServices)
	if fmt.Sprint(all) != "[checkout-api billing-api invoice-worker search-api ledger-sync-cron support-bot]" {
		t.Errorf("rotation services %v", all)
	}
	// Before the split everything is on the old key.
	if c := count(r, 0, time.Minute, onKey(n.RotationNewKey)); c != 0 {
		t.Errorf("%d calls with the new key before the split", c)
	}
	for _, svc := range all {
		if c := count(r, 0, time.Minute, onKeyService(n.RotationOldKey, svc)); c < 20 {
			t.Errorf("%s: %d calls with the old key in the first minute", svc, c)
		}
	}
	// After the last move: moved only new, mixed both, pending only old.
	for _, svc := range n.RotationMovedServices {
		if old, nw := count(r, 2*time.Minute, 20*time.Minute, onKeyService(n.RotationOldKey, svc)), count(r, 2*time.Minute, 20*time.Minute, onKeyService(n.RotationNewKey, svc)); old != 0 || nw < 500 {
			t.Errorf("moved %s: old %d new %d", svc, old, nw)
		}
	}
	for _, svc := range n.RotationMixedServices {
		old, nw := count(r, 2*time.Minute, 20*time.Minute, onKeyService(n.RotationOldKey, svc)), count(r, 2*time.Minute, 20*time.Minute, onKeyService(n.RotationNewKey, svc))
		if ratio := float64(nw) / float64(old); ratio < 0.85 || ratio > 1.15 {
			t.Errorf("mixed %s: old %d new %d", svc, old, nw)
		}
	}
	for _, svc := range n.RotationPendingServices {
		if old, nw := count(r, 2*time.Minute, 20*time.Minute, onKeyService(n.RotationOldKey, svc)), count(r, 2*time.Minute, 20*time.Minute, onKeyService(n.RotationNewKey, svc)); old < 1000 || nw != 0 {
			t.Errorf("pending %s: old %d new %d", svc, old, nw)
		}
	}
	// The first moved service switched at the split, the second one minute later.
	if c := count(r, time.Minute, 2*time.Minute, onKeyService(n.RotationOldKey, "checkout-api")); c != 0 {
		t.Errorf("checkout-api used the old key %d times after +1m", c)
	}
	if c := count(r, time.Minute, 2*time.Minute, onKeyService(n.RotationOldKey, "billing-api")); c == 0 {
		t.Error("billing-api left the old key before +2m")
	}
}

func TestDisabledKeyCalledByForgottenJob(t *testing.T) {
	r := twentyMinutes()
	n := r.notable
	if n.DisabledKey != "key_initech_0013" || n.ForgottenJobService != "legacy-export-cron" || n.ForgottenJobStatus != 403 {
		t.Errorf("notable %s %s %d", n.DisabledKey, n.ForgottenJobService, n.ForgottenJobStatus)
	}
	d := lifecycleOf(r, n.DisabledKey, keytrailv1.Action_ACTION_DISABLED)
	if len(d) != 1 || !d[0].GetTime().AsTime().Equal(at(time.Minute)) || d[0].GetActor() != "carol" || d[0].GetReason() == "" {
		t.Fatalf("disabled events %v", d)
	}
	after := 0
	for _, u := range r.usage {
		if u.GetKeyId() != n.DisabledKey || u.GetTime().AsTime().Before(n.DisabledAt) {
			continue
		}
		after++
		if u.GetService() != n.ForgottenJobService || u.GetStatusCode() != 403 || u.GetCostMicros() != 0 {
			t.Fatalf("after disabling: %v", u)
		}
		if sec := u.GetTime().AsTime().Sub(start) % time.Minute; sec < 7*time.Second || sec >= 8*time.Second {
			t.Fatalf("cron call at second %s of the minute", sec)
		}
	}
	// 3 calls a minute at second 7, from +1m7s through +19m7s.
	if after != 19*3 {
		t.Errorf("%d calls after disabling, want %d", after, 19*3)
	}
	if c := count(r, 0, time.Minute, onKeyService(n.DisabledKey, "report-api")); c < 20 {
		t.Errorf("report-api made %d calls before the key was disabled", c)
	}
	if c := count(r, 0, time.Minute, onKeyService(n.DisabledKey, n.ForgottenJobService)); c != 3 {
		t.Errorf("cron made %d calls in the first minute, want 3", c)
	}
}

func TestSpike(t *testing.T) {
	r := twentyMinutes()
	n := r.notable
	if n.SpikeKey != "key_globex_0021" || !n.SpikeStart.Equal(at(6*time.Minute)) || !n.SpikeEnd.Equal(at(10*time.Minute)) || n.SpikeFactor != 15 {
		t.Errorf("notable spike %s %s-%s x%v", n.SpikeKey, n.SpikeStart, n.SpikeEnd, n.SpikeFactor)
	}
	before := count(r, 2*time.Minute, 6*time.Minute, onKey(n.SpikeKey))
	during := count(r, 6*time.Minute, 10*time.Minute, onKey(n.SpikeKey))
	after := count(r, 10*time.Minute, 14*time.Minute, onKey(n.SpikeKey))
	if ratio := float64(during) / float64(before); ratio < 12 || ratio > 18 {
		t.Errorf("spike ratio %.1f (%d before, %d during), want about 15", ratio, before, during)
	}
	if ratio := float64(after) / float64(before); ratio < 0.8 || ratio > 1.25 {
		t.Errorf("after the spike %d, before %d", after, before)
	}
}

func TestNewCaller(t *testing.T) {
	r := twentyMinutes()
	n := r.notable
	if n.NewCallerKey != "key_globex_0042" || n.NewCallerService != "fraud-scorer" || !n.NewCallerFrom.Equal(at(4*time.Minute)) {
		t.Errorf("notable new caller %s %s %s", n.NewCallerKey, n.NewCallerService, n.NewCallerFrom)
	}
	if c := count(r, 0, 4*time.Minute, onKeyService(n.NewCallerKey, n.NewCallerService)); c != 0 {
		t.Errorf("%d calls before the new caller's start", c)
	}
	if c := count(r, 4*time.Minute, 5*time.Minute, onKeyService(n.NewCallerKey, n.NewCallerService)); c < 20 {
		t.Errorf("%d calls in the new caller's first minute", c)
	}
	if c := count(r, 0, 4*time.Minute, onKey(n.NewCallerKey)); c < 100 {
		t.Errorf("existing callers made %d calls", c)
	}
}

func TestOverBudget(t *testing.T) {
	r := twentyMinutes()
	n := r.notable
	b := lifecycleOf(r, n.OverBudgetKey, keytrailv1.Action_ACTION_BUDGET_CHANGED)
	if len(b) != 1 || b[0].GetBudget().GetAmountMicros() != n.BudgetMicros || n.BudgetMicros <= 0 ||
		b[0].GetBudget().GetPeriod() != keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY || !b[0].GetTime().AsTime().Equal(at(30*time.Second)) ||
		len(b[0].GetChanges()) != 1 || b[0].GetChanges()[0].GetField() != "budget" {
		t.Fatalf("budget events %v (notable %d)", b, n.BudgetMicros)
	}
	var spend int64
	var crossed time.Time
	for _, u := range r.usage {
		if u.GetKeyId() == n.OverBudgetKey {
			spend += u.GetCostMicros()
			if crossed.IsZero() && spend > n.BudgetMicros {
				crossed = u.GetTime().AsTime()
			}
		}
	}
	if crossed.Before(at(8*time.Minute)) || crossed.After(at(12*time.Minute)) {
		t.Errorf("budget %d crossed at %s, want about +10m", n.BudgetMicros, crossed.Sub(start))
	}
	if spend < 18*n.BudgetMicros/10 {
		t.Errorf("spend %d over 20 minutes, budget %d", spend, n.BudgetMicros)
	}
}

func TestExpiringKeyStillCalled(t *testing.T) {
	r := twentyMinutes()
	n := r.notable
	c := lifecycleOf(r, n.ExpiringKey, keytrailv1.Action_ACTION_CREATED)
	if len(c) != 1 || !c[0].GetExpiresAt().AsTime().Equal(at(5*time.Minute)) || !c[0].GetTime().AsTime().Equal(at(15*time.Second)) {
		t.Fatalf("created events of the expiring key %v", c)
	}
	if e := lifecycleOf(r, n.ExpiringKey, keytrailv1.Action_ACTION_EXPIRED); len(e) != 0 {
		t.Errorf("expired events sent: %v", e)
	}
	ok := count(r, 0, 5*time.Minute, func(u *keytrailv1.UsageEvent) bool {
		return u.GetKeyId() == n.ExpiringKey && u.GetStatusCode() != 401
	})
	if ok < 100 {
		t.Errorf("%d calls before expiry", ok)
	}
	for _, u := range r.usage {
		if u.GetKeyId() == n.ExpiringKey && !u.GetTime().AsTime().Before(n.ExpiresAt) && (u.GetStatusCode() != 401 || u.GetService() != n.ExpiredCaller) {
			t.Fatalf("after expiry: %v", u)
		}
	}
	if after := count(r, 5*time.Minute, 20*time.Minute, onKey(n.ExpiringKey)); after < 500 {
		t.Errorf("%d calls after expiry", after)
	}
}

func TestScopesChanged(t *testing.T) {
	r := twentyMinutes()
	s := lifecycleOf(r, r.notable.ScopesChangedKey, keytrailv1.Action_ACTION_SCOPES_CHANGED)
	if len(s) != 1 || !s[0].GetTime().AsTime().Equal(at(3*time.Minute)) || s[0].GetActor() != "bob" ||
		fmt.Sprint(s[0].GetChanges()[0].GetBefore(), " -> ", s[0].GetChanges()[0].GetAfter()) != "chat -> chat,embeddings" ||
		s[0].GetAttributes()["ticket"] != "SEC-2310" {
		t.Fatalf("scopes_changed events %v", s)
	}
}

func TestNotableIsACopy(t *testing.T) {
	s := newScenario(t, 1, 10)
	n := s.Notable()
	n.RotationMovedServices[0] = "changed"
	if s.Notable().RotationMovedServices[0] != "checkout-api" {
		t.Error("Notable shares its slices with the scenario")
	}
	first := s.Tick(start, at(time.Second))
	first[0].Lifecycle.KeyId = "changed"
	if s.Tick(start, at(time.Second))[0].Lifecycle.GetKeyId() == "changed" {
		t.Error("Tick returns the scenario's own lifecycle events")
	}
}

func eventTime(e event.Event) time.Time {
	if e.Kind == event.KindLifecycle {
		return e.Lifecycle.GetTime().AsTime()
	}
	return e.Usage.GetTime().AsTime()
}

func BenchmarkTick(b *testing.B) {
	s := newScenario(b, 1, 1000)
	b.ReportAllocs()
	events := 0
	for i := range b.N {
		from := at(time.Duration(i) * time.Second)
		events += len(s.Tick(from, from.Add(time.Second)))
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}

func TestHistoryRunsOrdinaryTrafficBeforeTheStory(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	sc, err := simulate.New(simulate.Config{Seed: 7, Start: start, Rate: 200, History: 90 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	n := sc.Notable()
	if !n.SpikeStart.Equal(start.Add(6*time.Minute)) || !n.RotatedAt.Equal(start.Add(20*time.Second)) {
		t.Errorf("the story must still start at Start: spike %v rotation %v", n.SpikeStart, n.RotatedAt)
	}
	created := map[string]time.Time{}
	var usage, beforeStart int
	for from := start.Add(-90 * time.Minute); from.Before(start.Add(5 * time.Minute)); from = from.Add(time.Minute) {
		for _, e := range sc.Tick(from, from.Add(time.Minute)) {
			if e.Kind == event.KindLifecycle {
				if e.Lifecycle.GetAction() == keytrailv1.Action_ACTION_CREATED {
					created[e.Lifecycle.GetKeyId()] = e.Lifecycle.GetTime().AsTime()
				}
				continue
			}
			usage++
			at := e.Usage.GetTime().AsTime()
			if at.Before(start) {
				beforeStart++
			}
			if c, ok := created[e.Usage.GetKeyId()]; !ok || at.Before(c) {
				t.Fatalf("usage of %s at %v before its creation (%v)", e.Usage.GetKeyId(), at, c)
			}
		}
	}
	// 90 of the 95 minutes are history at about 200 events/s.
	if beforeStart < 90*60*200*9/10 || beforeStart > 90*60*200*11/10 {
		t.Errorf("%d history events of %d, want about %d", beforeStart, usage, 90*60*200)
	}
	if c := created["key_acme_0001"]; !c.Before(start.Add(-89 * time.Minute)) {
		t.Errorf("fleet keys must be created at the start of the history, got %v", c)
	}
}
