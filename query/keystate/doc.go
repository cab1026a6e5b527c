// Package keystate derives an API key's state at any instant from its lifecycle events
// (event sourcing). It does no I/O: the query package reads the events from ClickHouse and
// hands them here, so the rules below are tested on crafted event lists alone.
//
// Guarantee: the state at an instant depends only on the events at or before it, folded in
// the order (time, event id). The same events and the same instant always give the same
// state, whatever order the events arrive in, and an event after the instant never changes
// it, so "state at T" answered today is the answer given at T (given the same stored events).
// Folding is idempotent per event: a row stored twice (a redelivery) changes nothing.
//
// Rules:
//
//   - A key is known from its first event: any event on it (not only ACTION_CREATED), or an
//     ACTION_ROTATED of another key naming it as new_key_id. Before that it does not exist
//     (At reports ok == false). A key known only from a rotation is ACTIVE from the rotation
//     time, and its created_at/created_by are the rotation's time and actor until an
//     ACTION_CREATED for it says otherwise (the explicit event wins).
//   - Fields of an event describe its key_id. For ACTION_ROTATED that is the old key: its
//     expires_at, scopes and budget apply to the old key; the new key only gains
//     replaces_key_id. The old key gains replaced_by_key_id and keeps its status (a
//     double-key roll keeps both keys working until the old one is disabled or deleted).
//   - expires_at, budget: from the latest event that carries one. Scopes: from the latest
//     event that carries any, or from the latest ACTION_SCOPES_CHANGED even when it carries
//     none (the scopes were removed).
//   - Status (this package's own; the API maps it to its KeyStatus enum) has a precedence:
//     DELETED > EXPIRED > DISABLED > ACTIVE. Three flags feed it: deleted, expired, disabled.
//   - ACTION_DISABLED sets disabled; ACTION_ENABLED and ACTION_CREATED clear it
//     (disabled -> enabled returns to ACTIVE).
//   - Expiry: the key expires at expires_at whether or not an ACTION_EXPIRED event arrives
//     (instant >= expires_at means expired), and on ACTION_EXPIRED. An expires_at set by an
//     event to an instant already past expires the key at that event's time, never before
//     the event that revealed it.
//   - EXPIRED wins over DISABLED: once past expires_at a disabled key reports EXPIRED,
//     because enabling it alone would not make it usable again.
//   - Only ACTION_ENABLED or ACTION_CREATED carrying an expires_at later than the event's
//     own time revives an expired key. ENABLED without a new expiry leaves it EXPIRED; any
//     other event carrying a later expires_at updates expires_at but not the status (a
//     scopes or budget change is not a decision to revive the key).
//   - ACTION_DELETED is terminal: the state is frozen at the deletion, later events
//     (including rotations naming the key) are ignored.
//   - status_since is the instant the status last changed: the event's time, or expires_at
//     for an expiry by TTL. last_event_at is the last event the state reflects.
package keystate
