package keystate

import (
	"fmt"
	"slices"
	"sort"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Event is one lifecycle event, as much of it as the state needs.
type Event struct {
	ID       string
	Time     time.Time
	Project  string
	KeyID    string
	Action   keytrailv1.Action
	NewKeyID string
	Actor    string
	// ExpiresAt is zero when the event carries no expiry.
	ExpiresAt time.Time
	// Budget is nil when the event carries none.
	Budget *Budget
	Scopes []string
}

// Status is where a key stands. Its precedence, when several apply, is Deleted > Expired >
// Disabled > Active.
type Status int

// The statuses. The zero value is a key no lifecycle event describes (known from its
// requests alone); At never returns it for a key it knows.
const (
	Unregistered Status = iota
	Active
	Disabled
	Expired
	Deleted
)

// Valid reports whether s is one of the statuses.
func (s Status) Valid() bool { return s >= Unregistered && s <= Deleted }

// String is "unregistered", "active", "disabled", "expired" or "deleted", as messages say it.
func (s Status) String() string {
	switch s {
	case Unregistered:
		return "unregistered"
	case Active:
		return "active"
	case Disabled:
		return "disabled"
	case Expired:
		return "expired"
	case Deleted:
		return "deleted"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Budget caps a key's spend per period.
type Budget struct {
	AmountMicros int64
	Period       keytrailv1.BudgetPeriod
}

// State is a key as its lifecycle events describe it at one instant. Zero times mean unset.
type State struct {
	KeyID           string
	Project         string
	Status          Status
	CreatedAt       time.Time
	CreatedBy       string
	ExpiresAt       time.Time
	Scopes          []string
	Budget          *Budget
	ReplacesKeyID   string
	ReplacedByKeyID string
	StatusSince     time.Time
	LastEventAt     time.Time
	// AsOf is the instant this state describes.
	AsOf time.Time
}

// less orders events as they are folded: by time, then event id.
func less(a, b Event) bool {
	if !a.Time.Equal(b.Time) {
		return a.Time.Before(b.Time)
	}
	return a.ID < b.ID
}

// At folds the events concerning keyID (its own events and rotations naming it as the new
// key; others are skipped) into its state at the instant at. ok is false when the key is
// not known at that instant.
func At(keyID string, events []Event, at time.Time) (State, bool) {
	sorted := slices.Clone(events)
	sort.SliceStable(sorted, func(i, j int) bool { return less(sorted[i], sorted[j]) })
	return fold(keyID, sorted, at)
}

// AllAt folds the events of many keys and returns the state at the instant at of every key
// known then, ordered by key id, then project. A key is (project, key id): the same key id in
// two projects is two keys, each folded from its own project's events (a rotation belongs
// to the project of its event, for both of its keys).
func AllAt(events []Event, at time.Time) []State {
	sorted := slices.Clone(events)
	sort.SliceStable(sorted, func(i, j int) bool { return less(sorted[i], sorted[j]) })
	type projectKey struct{ project, key string }
	byKey := map[projectKey][]Event{}
	for _, e := range sorted {
		if e.Time.After(at) {
			break
		}
		byKey[projectKey{e.Project, e.KeyID}] = append(byKey[projectKey{e.Project, e.KeyID}], e)
		if e.Action == keytrailv1.Action_ACTION_ROTATED && e.NewKeyID != "" && e.NewKeyID != e.KeyID {
			byKey[projectKey{e.Project, e.NewKeyID}] = append(byKey[projectKey{e.Project, e.NewKeyID}], e)
		}
	}
	out := make([]State, 0, len(byKey))
	for pk, evs := range byKey {
		if s, ok := fold(pk.key, evs, at); ok {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].KeyID != out[j].KeyID {
			return out[i].KeyID < out[j].KeyID
		}
		return out[i].Project < out[j].Project
	})
	return out
}

// folder carries the flags behind the status while events are applied in order.
type folder struct {
	s                          State
	known                      bool
	deleted, expired, disabled bool
	createdExplicitly          bool
	expirySetAt                time.Time // when the current ExpiresAt was set
}

func fold(keyID string, sorted []Event, at time.Time) (State, bool) {
	f := &folder{s: State{KeyID: keyID, AsOf: at}}
	for _, e := range sorted {
		if e.Time.After(at) {
			break
		}
		if f.deleted {
			break // terminal: nothing after a deletion changes the key
		}
		if e.KeyID != keyID && (e.Action != keytrailv1.Action_ACTION_ROTATED || e.NewKeyID != keyID) {
			continue
		}
		// An expiry that passed before this event (or at its very instant) happened first.
		f.expireByTTL(e.Time)
		f.apply(keyID, e)
	}
	if !f.known {
		return State{}, false
	}
	f.expireByTTL(at)
	return f.s, true
}

func (f *folder) status() Status {
	switch {
	case !f.known:
		return Unregistered
	case f.deleted:
		return Deleted
	case f.expired:
		return Expired
	case f.disabled:
		return Disabled
	}
	return Active
}

// change runs a mutation that happens at instant t and records t as status_since when the
// status it leaves differs from the one it found.
func (f *folder) change(t time.Time, mutate func()) {
	before := f.status()
	mutate()
	if after := f.status(); after != before {
		f.s.Status = after
		f.s.StatusSince = t
	}
}

// expireByTTL expires the key if its expiry instant is at or before upTo. The expiry instant
// is expires_at, or the time of the event that set it when that event came later (an
// expiry revealed late cannot take effect before it was known).
func (f *folder) expireByTTL(upTo time.Time) {
	if !f.known || f.deleted || f.expired || f.s.ExpiresAt.IsZero() {
		return
	}
	when := f.s.ExpiresAt
	if f.expirySetAt.After(when) {
		when = f.expirySetAt
	}
	if !when.After(upTo) {
		f.change(when, func() { f.expired = true })
	}
}

func (f *folder) apply(keyID string, e Event) {
	if e.KeyID != keyID {
		// Another key's rotation naming this key as its replacement.
		f.change(e.Time, func() {
			if !f.known {
				f.known = true
				f.s.Project = e.Project
				f.s.CreatedAt, f.s.CreatedBy = e.Time, e.Actor
			}
			f.s.ReplacesKeyID = e.KeyID
			f.s.LastEventAt = e.Time
		})
		return
	}
	f.change(e.Time, func() {
		f.known = true
		f.s.Project = e.Project
		f.s.LastEventAt = e.Time
		if !e.ExpiresAt.IsZero() {
			f.s.ExpiresAt, f.expirySetAt = e.ExpiresAt, e.Time
		}
		if e.Budget != nil {
			b := *e.Budget
			f.s.Budget = &b
		}
		if len(e.Scopes) > 0 {
			f.s.Scopes = slices.Clone(e.Scopes)
		} else if e.Action == keytrailv1.Action_ACTION_SCOPES_CHANGED {
			f.s.Scopes = nil
		}
		switch e.Action {
		case keytrailv1.Action_ACTION_CREATED:
			if !f.createdExplicitly {
				f.createdExplicitly = true
				f.s.CreatedAt, f.s.CreatedBy = e.Time, e.Actor
			}
			f.disabled = false
			f.revive(e)
		case keytrailv1.Action_ACTION_ENABLED:
			f.disabled = false
			f.revive(e)
		case keytrailv1.Action_ACTION_DISABLED:
			f.disabled = true
		case keytrailv1.Action_ACTION_EXPIRED:
			f.expired = true
		case keytrailv1.Action_ACTION_DELETED:
			f.deleted = true
		case keytrailv1.Action_ACTION_ROTATED:
			f.s.ReplacedByKeyID = e.NewKeyID
		}
	})
}

// revive clears an expiry when the enabling event grants a new one in its future.
func (f *folder) revive(e Event) {
	if f.expired && !e.ExpiresAt.IsZero() && e.ExpiresAt.After(e.Time) {
		f.expired = false
	}
}
