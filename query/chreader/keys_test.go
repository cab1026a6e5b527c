package chreader

import (
	"reflect"
	"testing"
	"time"
)

func TestKeyLifecycleSQL(t *testing.T) {
	got := KeyLifecycle("key_a", mustTime(t, "2026-11-01T10:00:00.2509Z"))
	wantSQL := `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes
FROM lifecycle_events
WHERE (key_id = ? OR new_key_id = ?) AND event_time_ms <= ?
ORDER BY event_time_ms, event_id`
	// The instant is floored to the millisecond: an event stored at .250 is at or before .2509.
	wantArgs := []any{"key_a", "key_a", int64(1793527200250)}
	assertKeysQuery(t, got, wantSQL, wantArgs)

	// Within the caller's projects: a key is (project, key_id).
	got = KeyLifecycleIn("key_a", "acme", []string{"acme", "beta"}, mustTime(t, "2026-11-01T10:00:00Z"))
	assertKeysQuery(t, got, `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes
FROM lifecycle_events
WHERE (key_id = ? OR new_key_id = ?) AND event_time_ms <= ? AND project = ? AND has(?, project)
ORDER BY event_time_ms, event_id`, []any{"key_a", "key_a", int64(1793527200000), "acme", []string{"acme", "beta"}})
}

func TestProjectLifecycleSQL(t *testing.T) {
	at := mustTime(t, "2026-11-01T10:00:00Z")
	t.Run("all projects, first page", func(t *testing.T) {
		assertKeysQuery(t, ProjectLifecycle("", nil, "", at), `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes
FROM lifecycle_events
WHERE event_time_ms <= ?
ORDER BY event_time_ms, event_id`, []any{int64(1793527200000)})
	})
	// The cursor is a key (project, key_id): its key id is read again, for the same key id
	// in a later project.
	t.Run("one project, after a cursor", func(t *testing.T) {
		assertKeysQuery(t, ProjectLifecycle("acme", nil, "key_m", at), `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes
FROM lifecycle_events
WHERE event_time_ms <= ?
  AND project = ?
  AND (key_id >= ? OR new_key_id >= ?)
ORDER BY event_time_ms, event_id`, []any{int64(1793527200000), "acme", "key_m", "key_m"})
	})
	t.Run("the caller's projects", func(t *testing.T) {
		assertKeysQuery(t, ProjectLifecycle("", []string{"a", "b"}, "", at), `SELECT event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes
FROM lifecycle_events
WHERE event_time_ms <= ?
  AND has(?, project)
ORDER BY event_time_ms, event_id`, []any{int64(1793527200000), []string{"a", "b"}})
	})
}

func TestKeyLastUsedNowSQL(t *testing.T) {
	t.Run("one key", func(t *testing.T) {
		assertKeysQuery(t, KeyLastUsedNow(KeyUseFilter{KeyID: "key_a"}), `SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_used_ms
FROM key_service_totals
WHERE key_id = ?
GROUP BY key_id, project, service
ORDER BY key_id, project, service`, []any{"key_a"})
	})
	t.Run("project after a cursor", func(t *testing.T) {
		assertKeysQuery(t, KeyLastUsedNow(KeyUseFilter{Project: "acme", AfterKey: "key_m"}), `SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_used_ms
FROM key_service_totals
WHERE project = ? AND key_id >= ?
GROUP BY key_id, project, service
ORDER BY key_id, project, service`, []any{"acme", "key_m"})
	})
	t.Run("one key in the caller's projects", func(t *testing.T) {
		assertKeysQuery(t, KeyLastUsedNow(KeyUseFilter{KeyID: "key_a", Projects: []string{"a", "b"}}), `SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_used_ms
FROM key_service_totals
WHERE key_id = ? AND has(?, project)
GROUP BY key_id, project, service
ORDER BY key_id, project, service`, []any{"key_a", []string{"a", "b"}})
	})
	t.Run("everything", func(t *testing.T) {
		assertKeysQuery(t, KeyLastUsedNow(KeyUseFilter{}), `SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_used_ms
FROM key_service_totals
GROUP BY key_id, project, service
ORDER BY key_id, project, service`, nil)
	})
}

func TestKeyLastUsedAtSQL(t *testing.T) {
	t.Run("mid-minute instant: whole minutes from the rollup, the rest from raw rows up to and including at", func(t *testing.T) {
		got := KeyLastUsedAt(KeyUseFilter{KeyID: "key_a"}, mustTime(t, "2026-11-01T10:00:30.25Z"))
		wantSQL := `SELECT key_id, service, project, max(last_ms) AS last_used_ms
FROM
(
    SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_ms
    FROM usage_key_minute
    WHERE minute >= toDateTime(?) AND minute < toDateTime(?) AND key_id = ?
    GROUP BY key_id, project, service
    UNION ALL
    SELECT key_id, service, project, max(event_time_ms) AS last_ms
    FROM usage_events
    WHERE ((event_time >= toDateTime(?) AND event_time <= toDateTime(?) AND event_time_ms >= ? AND event_time_ms < ?)) AND key_id = ?
    GROUP BY key_id, project, service
)
GROUP BY key_id, project, service
ORDER BY key_id, project, service`
		wantArgs := []any{
			int64(0), int64(1793527200), "key_a",
			int64(1793527200), int64(1793527230), int64(1793527200000), int64(1793527230251), "key_a",
		}
		assertKeysQuery(t, got, wantSQL, wantArgs)
	})
	t.Run("instant on the last millisecond of a minute reads only the rollup", func(t *testing.T) {
		got := KeyLastUsedAt(KeyUseFilter{Project: "acme", AfterKey: "key_m"}, mustTime(t, "2026-11-01T10:00:59.999Z"))
		wantSQL := `SELECT key_id, service, project, max(last_ms) AS last_used_ms
FROM
(
    SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_ms
    FROM usage_key_minute
    WHERE minute >= toDateTime(?) AND minute < toDateTime(?) AND project = ? AND key_id >= ?
    GROUP BY key_id, project, service
)
GROUP BY key_id, project, service
ORDER BY key_id, project, service`
		assertKeysQuery(t, got, wantSQL, []any{int64(0), int64(1793527260), "acme", "key_m"})
	})
}

func TestKeyServiceSpansSQL(t *testing.T) {
	assertKeysQuery(t, KeyServiceSpans(KeyUseFilter{KeyID: "key_a", Projects: []string{"a", "b"}}), `SELECT project, service, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms
FROM key_service_totals
WHERE key_id = ? AND has(?, project)
GROUP BY project, service
ORDER BY project, service`, []any{"key_a", []string{"a", "b"}})
}

func TestResolveKeyAt(t *testing.T) {
	now := mustTime(t, "2026-11-20T12:00:00Z")
	for _, tc := range []struct {
		in, want, err string
	}{
		{"", "2026-11-20T12:00:00Z", ""},
		{"2026-11-01T00:00:00+01:00", "2026-10-31T23:00:00Z", ""},
		{"2026-11-20T12:01:00Z", "2026-11-20T12:01:00Z", ""},
		{"2026-11-20T12:01:00.001Z", "", "at: must not be in the future"},
		{"1999-12-31T23:59:59Z", "", "at: must not be before 2000-01-01T00:00:00Z (no event is older)"},
	} {
		var in time.Time
		if tc.in != "" {
			in = mustTime(t, tc.in)
		}
		got, err := resolveKeyAt(in, now)
		if (err == nil) != (tc.err == "") || (err != nil && err.Error() != tc.err) {
			t.Errorf("resolveKeyAt(%s) error %v, want %q", tc.in, err, tc.err)
			continue
		}
		if tc.want != "" && (got.Location() != time.UTC || !got.Equal(mustTime(t, tc.want))) {
			t.Errorf("resolveKeyAt(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func assertKeysQuery(t *testing.T, got Query, wantSQL string, wantArgs []any) {
	t.Helper()
	if got.SQL != wantSQL {
		t.Errorf("SQL:\n%s\nwant:\n%s", got.SQL, wantSQL)
	}
	if !reflect.DeepEqual(got.Args, wantArgs) {
		t.Errorf("args %#v\nwant %#v", got.Args, wantArgs)
	}
}
