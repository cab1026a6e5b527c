package keystate

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const (
	hour = time.Hour
	day  = 24 * time.Hour
)

const (
	active   = Active
	disabled = Disabled
	expired  = Expired
	deleted  = Deleted
)

type opt func(*Event)

func expires(d time.Duration) opt { return func(e *Event) { e.ExpiresAt = at(d) } }
func scopes(s ...string) opt      { return func(e *Event) { e.Scopes = s } }
func newKey(k string) opt         { return func(e *Event) { e.NewKeyID = k } }
func actor(a string) opt          { return func(e *Event) { e.Actor = a } }
func budget(micros int64) opt {
	return func(e *Event) {
		e.Budget = &Budget{AmountMicros: micros, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}
	}
}

func ev(id, key string, action keytrailv1.Action, d time.Duration, opts ...opt) Event {
	e := Event{ID: id, Time: at(d), Project: "acme", KeyID: key, Action: action, Actor: "alice"}
	for _, o := range opts {
		o(&e)
	}
	return e
}

const (
	created       = keytrailv1.Action_ACTION_CREATED
	rotated       = keytrailv1.Action_ACTION_ROTATED
	disable       = keytrailv1.Action_ACTION_DISABLED
	enable        = keytrailv1.Action_ACTION_ENABLED
	expire        = keytrailv1.Action_ACTION_EXPIRED
	del           = keytrailv1.Action_ACTION_DELETED
	scopesChanged = keytrailv1.Action_ACTION_SCOPES_CHANGED
	budgetChanged = keytrailv1.Action_ACTION_BUDGET_CHANGED
)

func TestAt(t *testing.T) {
	// key_a: created with a 30-day TTL, scopes and a budget; never another event.
	ttl := []Event{ev("e1", "key_a", created, 0, expires(30*day), scopes("chat", "embed"), budget(5_000_000))}
	wantTTL := func(asOf time.Time, status Status, since time.Time) State {
		return State{
			KeyID: "key_a", Project: "acme", Status: status, CreatedAt: t0, CreatedBy: "alice",
			ExpiresAt: at(30 * day), Scopes: []string{"chat", "embed"},
			Budget:      &Budget{AmountMicros: 5_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
			StatusSince: since, LastEventAt: t0, AsOf: asOf,
		}
	}
	// key_old is rotated to key_new, which has no ACTION_CREATED of its own.
	rotation := []Event{
		ev("r1", "key_old", created, 0, actor("bob")),
		ev("r2", "key_old", rotated, 2*hour, newKey("key_new"), actor("carol")),
		ev("r3", "key_old", disable, 5*hour),
	}
	onOff := []Event{
		ev("d1", "key_d", created, 0),
		ev("d2", "key_d", disable, hour, actor("system")),
		ev("d3", "key_d", enable, 2*hour),
	}

	tests := []struct {
		name   string
		key    string
		events []Event
		at     time.Time
		want   State
		found  bool
	}{
		{name: "before creation: not found", key: "key_a", events: ttl, at: at(-time.Millisecond)},
		{name: "at the creation instant", key: "key_a", events: ttl, at: t0, found: true, want: wantTTL(t0, active, t0)},
		{
			name: "TTL: a millisecond before expires_at still active", key: "key_a", events: ttl,
			at: at(30*day - time.Millisecond), found: true, want: wantTTL(at(30*day-time.Millisecond), active, t0),
		},
		{
			name: "TTL: expired at expires_at with no event", key: "key_a", events: ttl,
			at: at(30 * day), found: true, want: wantTTL(at(30*day), expired, at(30*day)),
		},
		{
			name: "TTL: long after, status_since is still expires_at", key: "key_a", events: ttl,
			at: at(90 * day), found: true, want: wantTTL(at(90*day), expired, at(30*day)),
		},
		{
			name: "disabled", key: "key_d", events: onOff, at: at(90 * time.Minute), found: true,
			want: State{KeyID: "key_d", Project: "acme", Status: disabled, CreatedAt: t0, CreatedBy: "alice", StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(90 * time.Minute)},
		},
		{
			name: "disabled then enabled is active again", key: "key_d", events: onOff, at: at(3 * hour), found: true,
			want: State{KeyID: "key_d", Project: "acme", Status: active, CreatedAt: t0, CreatedBy: "alice", StatusSince: at(2 * hour), LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "rotation: old key knows its replacement and keeps its status", key: "key_old", events: rotation, at: at(3 * hour), found: true,
			want: State{KeyID: "key_old", Project: "acme", Status: active, CreatedAt: t0, CreatedBy: "bob", ReplacedByKeyID: "key_new", StatusSince: t0, LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "rotation: old key disabled later", key: "key_old", events: rotation, at: at(6 * hour), found: true,
			want: State{KeyID: "key_old", Project: "acme", Status: disabled, CreatedAt: t0, CreatedBy: "bob", ReplacedByKeyID: "key_new", StatusSince: at(5 * hour), LastEventAt: at(5 * hour), AsOf: at(6 * hour)},
		},
		{
			name: "rotation: new key known only from the rotation is active from it", key: "key_new", events: rotation, at: at(6 * hour), found: true,
			want: State{KeyID: "key_new", Project: "acme", Status: active, CreatedAt: at(2 * hour), CreatedBy: "carol", ReplacesKeyID: "key_old", StatusSince: at(2 * hour), LastEventAt: at(2 * hour), AsOf: at(6 * hour)},
		},
		{name: "rotation: new key before the rotation: not found", key: "key_new", events: rotation, at: at(2*hour - time.Millisecond)},
		{
			name: "rotation: an explicit creation of the new key wins over the rotation", key: "key_new",
			events: append([]Event{ev("n0", "key_new", created, hour, actor("dave"), scopes("chat"))}, rotation...), at: at(3 * hour), found: true,
			want: State{KeyID: "key_new", Project: "acme", Status: active, CreatedAt: at(hour), CreatedBy: "dave", Scopes: []string{"chat"}, ReplacesKeyID: "key_old", StatusSince: at(hour), LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "rotation fields belong to the old key", key: "key_new",
			events: []Event{ev("x1", "key_x", rotated, hour, newKey("key_new"), expires(2*hour), scopes("old"))}, at: at(3 * hour), found: true,
			want: State{KeyID: "key_new", Project: "acme", Status: active, CreatedAt: at(hour), CreatedBy: "alice", ReplacesKeyID: "key_x", StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(3 * hour)},
		},
		{
			name: "deleted is terminal: later events are ignored", key: "key_del",
			events: []Event{
				ev("x1", "key_del", created, 0, scopes("chat")),
				ev("x2", "key_del", del, hour),
				ev("x3", "key_del", enable, 2*hour, expires(10*day)),
				ev("x4", "key_del", scopesChanged, 3*hour, scopes("admin")),
				ev("x5", "key_other", rotated, 4*hour, newKey("key_del")),
			},
			at: at(5 * hour), found: true,
			want: State{KeyID: "key_del", Project: "acme", Status: deleted, CreatedAt: t0, CreatedBy: "alice", Scopes: []string{"chat"}, StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(5 * hour)},
		},
		{
			name: "ACTION_EXPIRED expires; ENABLED without a new expiry stays expired", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0), ev("x2", "key_e", expire, hour), ev("x3", "key_e", enable, 2*hour)},
			at:     at(3 * hour), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: expired, CreatedAt: t0, CreatedBy: "alice", StatusSince: at(hour), LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "ENABLED with a future expiry revives an expired key", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0, expires(hour)), ev("x2", "key_e", enable, 2*hour, expires(10*day))},
			at:     at(3 * hour), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: active, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(10 * day), StatusSince: at(2 * hour), LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "a revived key expires again at its new expiry", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0, expires(hour)), ev("x2", "key_e", enable, 2*hour, expires(10*day))},
			at:     at(11 * day), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: expired, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(10 * day), StatusSince: at(10 * day), LastEventAt: at(2 * hour), AsOf: at(11 * day)},
		},
		{
			name: "a scopes change carrying a later expiry does not revive", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0, expires(hour)), ev("x2", "key_e", scopesChanged, 2*hour, expires(10*day), scopes("chat"))},
			at:     at(3 * hour), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: expired, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(10 * day), Scopes: []string{"chat"}, StatusSince: at(hour), LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "expiry wins over disabled", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0, expires(2*hour)), ev("x2", "key_e", disable, hour)},
			at:     at(3 * hour), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: expired, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(2 * hour), StatusSince: at(2 * hour), LastEventAt: at(hour), AsOf: at(3 * hour)},
		},
		{
			name: "disabled and expired: enabling with a future expiry makes it active", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0, expires(2*hour)), ev("x2", "key_e", disable, hour), ev("x3", "key_e", enable, 4*hour, expires(5*hour))},
			at:     at(4*hour + time.Minute), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: active, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(5 * hour), StatusSince: at(4 * hour), LastEventAt: at(4 * hour), AsOf: at(4*hour + time.Minute)},
		},
		{
			name: "an expiry revealed late takes effect at the event, not before", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0), ev("x2", "key_e", budgetChanged, 2*hour, expires(hour), budget(7))},
			at:     at(3 * hour), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: expired, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(hour),
				Budget: &Budget{AmountMicros: 7, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}, StatusSince: at(2 * hour), LastEventAt: at(2 * hour), AsOf: at(3 * hour)},
		},
		{
			name: "latest expiry, scopes and budget win; an empty scopes change clears scopes", key: "key_s",
			events: []Event{
				ev("x1", "key_s", created, 0, expires(10*day), scopes("a"), budget(1)),
				ev("x2", "key_s", budgetChanged, hour, budget(2)),
				ev("x3", "key_s", scopesChanged, 2*hour, scopes("b", "c"), expires(20*day)),
				ev("x4", "key_s", scopesChanged, 3*hour),
			},
			at: at(day), found: true,
			want: State{KeyID: "key_s", Project: "acme", Status: active, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(20 * day),
				Budget: &Budget{AmountMicros: 2, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY}, StatusSince: t0, LastEventAt: at(3 * hour), AsOf: at(day)},
		},
		{
			name: "known from a first event other than CREATED", key: "key_legacy",
			events: []Event{ev("x1", "key_legacy", disable, hour)}, at: at(2 * hour), found: true,
			want: State{KeyID: "key_legacy", Project: "acme", Status: disabled, StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(2 * hour)},
		},
		{
			name: "same instant: ordered by event id, whatever the input order", key: "key_t",
			events: []Event{ev("b", "key_t", enable, hour), ev("c", "key_t", disable, hour), ev("a", "key_t", created, 0)},
			at:     at(hour), found: true,
			want: State{KeyID: "key_t", Project: "acme", Status: disabled, CreatedAt: t0, CreatedBy: "alice", StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(hour)},
		},
		{
			name: "a stored duplicate of an event (redelivery) changes nothing", key: "key_d",
			events: append(append([]Event{}, onOff...), onOff[1]), at: at(90 * time.Minute), found: true,
			want: State{KeyID: "key_d", Project: "acme", Status: disabled, CreatedAt: t0, CreatedBy: "alice", StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(90 * time.Minute)},
		},
		{
			name: "ACTION_EXPIRED at the TTL instant: status_since is that instant", key: "key_e",
			events: []Event{ev("x1", "key_e", created, 0, expires(hour)), ev("x2", "key_e", expire, hour, actor("system"))},
			at:     at(2 * hour), found: true,
			want: State{KeyID: "key_e", Project: "acme", Status: expired, CreatedAt: t0, CreatedBy: "alice", ExpiresAt: at(hour), StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(2 * hour)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found := At(tt.key, tt.events, tt.at)
			if found != tt.found {
				t.Fatalf("found = %v, want %v (state %+v)", found, tt.found, got)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("state\n got %s\nwant %s", show(got), show(tt.want))
			}
		})
	}
}

func TestAllAtOrdersByKeyAndSkipsUnknownKeys(t *testing.T) {
	events := []Event{
		ev("e4", "key_c", created, 3*hour),
		ev("e2", "key_a", rotated, hour, newKey("key_b")),
		ev("e1", "key_a", created, 0),
		ev("e3", "key_a", del, 2*hour),
	}
	got := AllAt(events, at(2*hour))
	want := []State{
		{KeyID: "key_a", Project: "acme", Status: deleted, CreatedAt: t0, CreatedBy: "alice", ReplacedByKeyID: "key_b", StatusSince: at(2 * hour), LastEventAt: at(2 * hour), AsOf: at(2 * hour)},
		{KeyID: "key_b", Project: "acme", Status: active, CreatedAt: at(hour), CreatedBy: "alice", ReplacesKeyID: "key_a", StatusSince: at(hour), LastEventAt: at(hour), AsOf: at(2 * hour)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", show(got...), show(want...))
	}
}

// A key is (project, key id): the same key id in two projects is two keys, each folded from
// its own project's events (a rotation's new key belongs to the rotation's project).
func TestAllAtKeepsProjectsApart(t *testing.T) {
	inProject := func(project string) opt { return func(e *Event) { e.Project = project } }
	events := []Event{
		ev("a1", "key_x", created, 0),
		ev("b1", "key_x", created, hour, inProject("beta"), actor("bob")),
		ev("b2", "key_x", disable, 2*hour, inProject("beta"), actor("bob")),
		ev("b3", "key_w", rotated, 3*hour, inProject("beta"), actor("bob"), newKey("key_x")),
	}
	got := AllAt(events, at(4*hour))
	want := []State{
		{KeyID: "key_w", Project: "beta", Status: active, ReplacedByKeyID: "key_x", LastEventAt: at(3 * hour), StatusSince: at(3 * hour), AsOf: at(4 * hour)},
		{KeyID: "key_x", Project: "acme", Status: active, CreatedAt: t0, CreatedBy: "alice", StatusSince: t0, LastEventAt: t0, AsOf: at(4 * hour)},
		{KeyID: "key_x", Project: "beta", Status: disabled, CreatedAt: at(hour), CreatedBy: "bob", ReplacesKeyID: "key_w",
			StatusSince: at(2 * hour), LastEventAt: at(3 * hour), AsOf: at(4 * hour)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", show(got...), show(want...))
	}
}

func show(states ...State) string {
	out := ""
	for _, s := range states {
		b := "nil"
		if s.Budget != nil {
			b = fmt.Sprintf("%+v", *s.Budget)
		}
		out += fmt.Sprintf("{%s %s %s created=%s by=%q expires=%s scopes=%q budget=%s replaces=%q replacedBy=%q since=%s last=%s asOf=%s}\n",
			s.KeyID, s.Project, s.Status, ts(s.CreatedAt), s.CreatedBy, ts(s.ExpiresAt), s.Scopes, b, s.ReplacesKeyID, s.ReplacedByKeyID,
			ts(s.StatusSince), ts(s.LastEventAt), ts(s.AsOf))
	}
	return out
}

func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339Nano)
}
