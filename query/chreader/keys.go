package chreader

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/query/keystate"
)

// Key state: the lifecycle events are read here and folded by package keystate; the use of
// the key (last request, per service) is joined from the usage rollups.

// earliestKeyAt is the oldest instant a key state can be asked for: no stored event is older
// (decode.ValidateUsage / ValidateLifecycle reject them), and it keeps every range start
// (the Unix epoch) before it.
var earliestKeyAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// MaxKeyAtAhead is how far past the server's clock `at` may lie. A state in the future would be
// a prediction that ignores events not yet sent (and could change after being answered), so
// it is refused; the allowance only absorbs callers whose clock runs slightly ahead.
const MaxKeyAtAhead = time.Minute

// resolveKeyAt applies the default (now) and bounds of an `at` parameter.
func resolveKeyAt(at, now time.Time) (time.Time, error) {
	if at.IsZero() {
		return now.UTC(), nil
	}
	if at.Before(earliestKeyAt) {
		return time.Time{}, &InvalidError{Field: "at", Reason: "must not be before " + earliestKeyAt.Format(time.RFC3339) + " (no event is older)"}
	}
	if at.After(now.Add(MaxKeyAtAhead)) {
		return time.Time{}, &InvalidError{Field: "at", Reason: "must not be in the future"}
	}
	return at.UTC(), nil
}

const lifecycleStateColumns = "event_id, event_time_ms, project, key_id, action, new_key_id, actor, expires_at, budget_amount_micros, budget_period, scopes"

// KeyLifecycle is every lifecycle event concerning one key id at or before at, in every
// project: its own events and rotations of other keys naming it as new_key_id, in folding
// order. The lifecycle table holds one row per key action, so reading a key's whole history
// is cheap.
func KeyLifecycle(keyID string, at time.Time) Query { return KeyLifecycleIn(keyID, "", nil, at) }

// KeyLifecycleIn is KeyLifecycle within a project (when project is set) and a set of projects
// (when projects is not nil): the events of the keys (project, keyID) the caller may read.
func KeyLifecycleIn(keyID, project string, projects []string, at time.Time) Query {
	where := "(key_id = ? OR new_key_id = ?) AND event_time_ms <= ?"
	args := []any{keyID, keyID, at.UnixMilli()}
	filters, filterArgs := projectKeyFilters(project, projects, "")
	for _, f := range filters {
		where += " AND " + f
	}
	return Query{
		SQL:  "SELECT " + lifecycleStateColumns + "\nFROM lifecycle_events\nWHERE " + where + "\nORDER BY event_time_ms, event_id",
		Args: append(args, filterArgs...),
	}
}

// ProjectLifecycle is every lifecycle event of a project (when project is set) and a set of
// projects (when projects is not nil) at or before at that concerns a key id from afterKey
// on, in folding order. A rotation concerns both its keys, hence the new_key_id condition:
// without it a key after the cursor would lose the rotation that introduced it. The cursor
// is a key (project, key_id), so the cursor's own key id is read too: the same key id in a
// later project still belongs on the next page.
func ProjectLifecycle(project string, projects []string, afterKey string, at time.Time) Query {
	where := []string{"event_time_ms <= ?"}
	args := []any{at.UnixMilli()}
	filters, filterArgs := projectKeyFilters(project, projects, "")
	where = append(where, filters...)
	args = append(args, filterArgs...)
	if afterKey != "" {
		where = append(where, "(key_id >= ? OR new_key_id >= ?)")
		args = append(args, afterKey, afterKey)
	}
	return Query{
		SQL:  "SELECT " + lifecycleStateColumns + "\nFROM lifecycle_events\nWHERE " + strings.Join(where, "\n  AND ") + "\nORDER BY event_time_ms, event_id",
		Args: args,
	}
}

// KeyUseFilter narrows a last-used query; empty fields match everything.
type KeyUseFilter struct {
	Project string
	// Projects, when not nil, keeps only these projects.
	Projects []string
	KeyID    string
	// AfterKey keeps only key ids from it on (the page cursor's key id; its project is
	// compared by the caller).
	AfterKey string
}

func (f KeyUseFilter) conditions() ([]string, []any) {
	var where []string
	var args []any
	if f.KeyID != "" {
		where = append(where, "key_id = ?")
		args = append(args, f.KeyID)
	}
	filters, filterArgs := projectKeyFilters(f.Project, f.Projects, "")
	where = append(where, filters...)
	args = append(args, filterArgs...)
	if f.AfterKey != "" {
		where = append(where, "key_id >= ?")
		args = append(args, f.AfterKey)
	}
	return where, args
}

// KeyLastUsedNow is the last request of each key x service over all history, from the all-time
// rollup key_service_totals (one row per pair after merges, so this never scans history).
// It includes every stored request, also one stamped a little ahead of the server's clock
// (ingestion accepts up to an hour of skew).
func KeyLastUsedNow(f KeyUseFilter) Query {
	where, args := f.conditions()
	sql := "SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_used_ms\nFROM key_service_totals"
	if len(where) > 0 {
		sql += "\nWHERE " + strings.Join(where, " AND ")
	}
	sql += "\nGROUP BY key_id, project, service\nORDER BY key_id, project, service"
	return Query{SQL: sql, Args: args}
}

// KeyLastUsedAt is the last request at or before at of each key x service. Exact to the
// millisecond, the same way every range query is: the range [epoch, at + 1 ms) is split
// into whole minutes, read from usage_key_minute, and the partial minute ending at at,
// read from the raw usage_events (see splitRange). Cost: with a key_id filter it reads that
// key's slice of the rollup (the sorting key starts with key_id); with only a project it
// reads the rollup's rows for every minute with traffic before at, which is the price of an
// arbitrary past instant.
func KeyLastUsedAt(f KeyUseFilter, at time.Time) Query {
	return KeyLastUsedIn(f, nil, Range{Start: time.Unix(0, 0).UTC(), End: time.UnixMilli(at.UnixMilli() + 1).UTC()})
}

// KeyLastUsedIn is the last request in r of each key x service, of the given services only
// when services is not nil; exact to the millisecond (whole minutes from usage_key_minute,
// partial minutes from usage_events).
func KeyLastUsedIn(f KeyUseFilter, services []string, r Range) Query {
	s := splitRange(r)
	where, whereArgs := f.conditions()
	if services != nil {
		where = append(where, "has(?, service)")
		whereArgs = append(whereArgs, services)
	}
	and := ""
	if len(where) > 0 {
		and = " AND " + strings.Join(where, " AND ")
	}
	var parts []string
	var args []any
	if s.hasRollup() {
		parts = append(parts, `    SELECT key_id, service, project, maxMerge(last_seen_ms) AS last_ms
    FROM usage_key_minute
    WHERE minute >= toDateTime(?) AND minute < toDateTime(?)`+and+`
    GROUP BY key_id, project, service`)
		args = append(args, s.RollupFrom.Unix(), s.RollupTo.Unix())
		args = append(args, whereArgs...)
	}
	if len(s.Edges) > 0 {
		cond, condArgs := s.edgeCondition()
		parts = append(parts, `    SELECT key_id, service, project, max(event_time_ms) AS last_ms
    FROM usage_events
    WHERE `+cond+and+`
    GROUP BY key_id, project, service`)
		args = append(args, condArgs...)
		args = append(args, whereArgs...)
	}
	sql := `SELECT key_id, service, project, max(last_ms) AS last_used_ms
FROM
(
` + strings.Join(parts, "\n    UNION ALL\n") + `
)
GROUP BY key_id, project, service
ORDER BY key_id, project, service`
	return Query{SQL: sql, Args: args}
}

// KeyServiceSpans is, per project and service, the first and last request with a key id over
// all history, from key_service_totals (one row per pair after merges), within the filter's
// projects.
func KeyServiceSpans(f KeyUseFilter) Query {
	where := []string{"key_id = ?"}
	args := []any{f.KeyID}
	filters, filterArgs := projectKeyFilters(f.Project, f.Projects, "")
	return Query{
		SQL: `SELECT project, service, minMerge(first_seen_ms) AS first_ms, maxMerge(last_seen_ms) AS last_ms
FROM key_service_totals
WHERE ` + strings.Join(append(where, filters...), " AND ") + `
GROUP BY project, service
ORDER BY project, service`,
		Args: append(args, filterArgs...),
	}
}

// lastUseSearch are the windows searched back from an instant for a service's last request
// before it, newest first; 0 is "back to the beginning". A busy service is found in the
// first hour, so a key's state at an instant reads an hour of its rollup instead of its whole
// history before that instant (at 100M events a month, the hottest key has ~10^5 rollup rows
// in 20 days).
var lastUseSearch = []time.Duration{time.Hour, 24 * time.Hour, 31 * 24 * time.Hour, 0}

// Key is a key's lifecycle state at an instant joined with its use up to that instant.
type Key struct {
	keystate.State
	// LastUsedAt is the key's last request at or before AsOf; zero when it had none.
	LastUsedAt time.Time
	// Services is the last request of each service that used the key, by service name.
	Services []ServiceUse
}

// ServiceUse is the last request of one service with a key.
type ServiceUse struct {
	Service    string
	LastUsedAt time.Time
}

// KeyNotFoundError reports a key unknown at the instant asked about (no lifecycle event and
// no request at or before it); the API maps it to NotFound.
type KeyNotFoundError struct {
	KeyID string
	At    time.Time
}

func (e *KeyNotFoundError) Error() string {
	return fmt.Sprintf("key %q is not known at %s", e.KeyID, e.At.Format(time.RFC3339Nano))
}

// KeyRequest is the input of Key.
type KeyRequest struct {
	KeyID string
	// Project, when set, is the key's project. Without it the key id is looked up in every
	// project of Projects (every project when nil), and found in more than one it is
	// ambiguous (an *InvalidError on project naming them).
	Project string
	// Projects, when not nil, are the projects the caller may read: a key elsewhere is not
	// known to it.
	Projects []string
	// At is the instant to describe; zero means now.
	At time.Time
}

// projectKey is a key: a key id is unique within its project only.
type projectKey struct {
	project, key string
}

// Key is the state of one key at an instant. A key with requests but no lifecycle event (as
// of the instant) is returned with status keystate.Unregistered: a key used but never
// registered by a gateway is worth seeing, not hiding. A key with neither is a
// *KeyNotFoundError.
//
// Every read is limited to the request's projects in SQL, so a key id that also exists in a
// project the caller may not read is, for this caller, simply the key of its own project;
// the error for an ambiguous key id names only projects the caller may read.
func (rd *Reader) Key(ctx context.Context, req KeyRequest) (Key, error) {
	if req.KeyID == "" {
		return Key{}, &InvalidError{Field: "key_id", Reason: "is required"}
	}
	at, err := resolveKeyAt(req.At, rd.now())
	if err != nil {
		return Key{}, err
	}
	if req.Projects != nil && len(req.Projects) == 0 {
		return Key{}, &KeyNotFoundError{KeyID: req.KeyID, At: at}
	}
	events, err := rd.keyLifecycleEvents(ctx, KeyLifecycleIn(req.KeyID, req.Project, req.Projects, at))
	if err != nil {
		return Key{}, err
	}
	uses, err := rd.keyLastUsed(ctx, KeyUseFilter{KeyID: req.KeyID, Project: req.Project, Projects: req.Projects}, at, req.At.IsZero())
	if err != nil {
		return Key{}, err
	}
	byProject := map[string][]keystate.Event{}
	for _, e := range events {
		byProject[e.Project] = append(byProject[e.Project], e)
	}
	found := map[string]Key{}
	for project, evs := range byProject {
		if state, known := keystate.At(req.KeyID, evs, at); known {
			found[project] = joinUse(state, uses[projectKey{project, req.KeyID}])
		}
	}
	for pk, use := range uses {
		if _, ok := found[pk.project]; !ok && pk.key == req.KeyID {
			found[pk.project] = joinUse(keystate.State{KeyID: req.KeyID, Project: pk.project, AsOf: at}, use)
		}
	}
	switch len(found) {
	case 0:
		return Key{}, &KeyNotFoundError{KeyID: req.KeyID, At: at}
	case 1:
		for _, k := range found {
			return k, nil
		}
	}
	projects := slices.Sorted(maps.Keys(found))
	return Key{}, ambiguousKey(req.KeyID, projects)
}

// KeysRequest is the input of Keys. Zero times mean "no filter", except At (zero is now).
type KeysRequest struct {
	Project string
	// Projects, when not nil, keeps only keys of these projects (the caller's read
	// permissions). Applied in SQL with the other filters, so pages stay full.
	Projects []string
	// Status keeps keys with this status; the zero value (keystate.Unregistered) means any.
	Status        keystate.Status
	ExpiresBefore time.Time
	UnusedSince   time.Time
	UsedSince     time.Time
	At            time.Time
	PageSize      int32
	PageToken     string
}

// KeysPage is one page of keys, ordered by key id, then project.
type KeysPage struct {
	Keys          []Key
	NextPageToken string
}

// Keys lists key states at an instant, filtered, ordered by key id then project (a key is
// (project, key_id): the same key id in two projects is two keys) and keyset-paginated.
//
// The states are folded in Go from every lifecycle event of the projects asked for (all
// projects when none is given) for keys from the page cursor on; the filters (status, expiry,
// use) are applied after folding because status depends on time (a TTL passes without an
// event) and cannot be expressed in SQL over the raw rows on 18.16 (no window functions). The
// lifecycle table has one row per key action, so this is fine up to about 10^5 keys (~10^6
// events, tens of MB for one call); beyond that, narrow by project.
//
// Keys with requests but no lifecycle event are included with status
// keystate.Unregistered when no status filter is given: the inventory then shows keys in
// use that no gateway ever registered.
//
// Use is joined from key_service_totals when At is unset (as of now), else from the minute
// rollup plus the raw partial minute (exact as of At, see KeyLastUsedAt). When At is unset the
// first page pins "now" in the page token, so every page describes the same instant.
func (rd *Reader) Keys(ctx context.Context, req KeysRequest) (KeysPage, error) {
	if !req.Status.Valid() {
		return KeysPage{}, &InvalidError{Field: "status", Reason: "is not a key status"}
	}
	at, err := resolveKeyAt(req.At, rd.now())
	if err != nil {
		return KeysPage{}, err
	}
	limit, err := PageSize(req.PageSize)
	if err != nil {
		return KeysPage{}, err
	}
	filters := []string{"keys", req.Project, projectsStamp(req.Projects), req.Status.String(), keyFilterStamp(req.ExpiresBefore), keyFilterStamp(req.UnusedSince), keyFilterStamp(req.UsedSince), keyFilterStamp(req.At)}
	cursor, err := decodePageToken(req.PageToken, 3, filters...)
	if err != nil {
		return KeysPage{}, err
	}
	var after projectKey
	if cursor != nil {
		after = projectKey{key: cursor[0], project: cursor[1]}
		pinned, perr := time.Parse(time.RFC3339Nano, cursor[2])
		if perr == nil {
			pinned, perr = resolveKeyAt(pinned, rd.now())
		}
		if perr != nil {
			return KeysPage{}, &InvalidError{Field: "page_token", Reason: "is not a token this query issued"}
		}
		at = pinned // equal to req.At when it was given: the fingerprint covers it
	}
	if req.Projects != nil && len(req.Projects) == 0 {
		return KeysPage{}, nil
	}
	isAfter := func(pk projectKey) bool {
		return cursor == nil || pk.key > after.key || (pk.key == after.key && pk.project > after.project)
	}

	events, err := rd.keyLifecycleEvents(ctx, ProjectLifecycle(req.Project, req.Projects, after.key, at))
	if err != nil {
		return KeysPage{}, err
	}
	uses, err := rd.keyLastUsed(ctx, KeyUseFilter{Project: req.Project, Projects: req.Projects, AfterKey: after.key}, at, req.At.IsZero())
	if err != nil {
		return KeysPage{}, err
	}
	keys := make(map[projectKey]Key, len(uses))
	for _, s := range keystate.AllAt(events, at) {
		if pk := (projectKey{s.Project, s.KeyID}); isAfter(pk) {
			keys[pk] = joinUse(s, uses[pk])
		}
	}
	for pk, use := range uses {
		if _, ok := keys[pk]; !ok && isAfter(pk) {
			keys[pk] = joinUse(keystate.State{KeyID: pk.key, Project: pk.project, AsOf: at}, use)
		}
	}
	ids := make([]projectKey, 0, len(keys))
	for pk, k := range keys {
		if req.matches(k) {
			ids = append(ids, pk)
		}
	}
	slices.SortFunc(ids, func(a, b projectKey) int {
		return cmp.Or(strings.Compare(a.key, b.key), strings.Compare(a.project, b.project))
	})
	var page KeysPage
	for _, pk := range ids {
		if len(page.Keys) == limit {
			last := page.Keys[limit-1]
			page.NextPageToken = encodePageToken([]string{last.KeyID, last.Project, at.Format(time.RFC3339Nano)}, filters...)
			break
		}
		page.Keys = append(page.Keys, keys[pk])
	}
	return page, nil
}

func (req KeysRequest) matches(k Key) bool {
	if req.Status != keystate.Unregistered && k.Status != req.Status {
		return false
	}
	if !req.ExpiresBefore.IsZero() && (k.ExpiresAt.IsZero() || !k.ExpiresAt.Before(req.ExpiresBefore)) {
		return false
	}
	if !req.UnusedSince.IsZero() && !k.LastUsedAt.IsZero() && !k.LastUsedAt.Before(req.UnusedSince) {
		return false
	}
	if !req.UsedSince.IsZero() && (k.LastUsedAt.IsZero() || k.LastUsedAt.Before(req.UsedSince)) {
		return false
	}
	return true
}

func keyFilterStamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// keyUse is the use of one key, as read from a last-used query.
type keyUse struct {
	last     time.Time
	services []ServiceUse
}

func joinUse(s keystate.State, use keyUse) Key {
	return Key{State: s, LastUsedAt: use.last, Services: use.services}
}

// keyLifecycleEvents runs a lifecycle query and converts its rows for folding.
func (rd *Reader) keyLifecycleEvents(ctx context.Context, q Query) ([]keystate.Event, error) {
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("query key lifecycle: %w", err)
	}
	defer rows.Close()
	var events []keystate.Event
	for rows.Next() {
		var (
			id, project, key, action, newKey, actor, period string
			timeMs                                          int64
			expires                                         *time.Time
			budget                                          *int64
			scopes                                          []string
		)
		if err := rows.Scan(&id, &timeMs, &project, &key, &action, &newKey, &actor, &expires, &budget, &period, &scopes); err != nil {
			return nil, fmt.Errorf("scan key lifecycle: %w", err)
		}
		// An action this build does not know stays ACTION_UNSPECIFIED: it still makes the key
		// known and carries its fields, but changes no status.
		a, _ := event.ParseAction(action)
		e := keystate.Event{
			ID: id, Time: time.UnixMilli(timeMs).UTC(), Project: project, KeyID: key,
			Action: a, NewKeyID: newKey, Actor: actor, Scopes: scopes,
		}
		if expires != nil {
			e.ExpiresAt = expires.UTC()
		}
		if budget != nil {
			e.Budget = &keystate.Budget{AmountMicros: *budget, Period: event.ParseBudgetPeriod(period)}
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read key lifecycle: %w", err)
	}
	return events, nil
}

// keyLastUsed reads the last request per key x service: from the all-time rollup when the
// caller asked about now, exactly as of at otherwise.
func (rd *Reader) keyLastUsed(ctx context.Context, f KeyUseFilter, at time.Time, now bool) (map[projectKey]keyUse, error) {
	uses := map[projectKey]keyUse{}
	add := func(key, service, project string, lastMs int64) { addLastUse(uses, key, service, project, lastMs) }
	if now {
		return uses, rd.readLastUsed(ctx, KeyLastUsedNow(f), add)
	}
	if f.KeyID != "" && f.AfterKey == "" {
		return uses, rd.oneKeyLastUsedAt(ctx, f, at, uses)
	}
	return uses, rd.readLastUsed(ctx, KeyLastUsedAt(f, at), add)
}

// oneKeyLastUsedAt is KeyLastUsedAt for one key id (in the filter's projects), without
// reading its whole history. The all-time spans settle most services at once: one last used
// at or before at is the answer, one first used after at has none. The others were used both
// before and after at; their last request before at is searched back from at in growing
// windows (lastUseSearch), each (project, service) until a window holds one of its requests:
// the newest window with a request holds the last.
func (rd *Reader) oneKeyLastUsedAt(ctx context.Context, f KeyUseFilter, at time.Time, uses map[projectKey]keyUse) error {
	atMs := at.UnixMilli()
	q := KeyServiceSpans(f)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return fmt.Errorf("query service spans: %w", err)
	}
	type projectService struct{ project, service string }
	open := map[projectService]bool{}
	for rows.Next() {
		var (
			project, service string
			firstMs, lastMs  int64
		)
		if err := rows.Scan(&project, &service, &firstMs, &lastMs); err != nil {
			rows.Close()
			return fmt.Errorf("scan service spans: %w", err)
		}
		switch {
		case lastMs <= atMs:
			addLastUse(uses, f.KeyID, service, project, lastMs)
		case firstMs <= atMs:
			open[projectService{project, service}] = true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read service spans: %w", err)
	}
	// Windows end before cut = at + 1 ms: a request at the instant itself counts.
	cut := time.UnixMilli(atMs + 1).UTC()
	end := cut
	for _, back := range lastUseSearch {
		if len(open) == 0 {
			break
		}
		start := time.Unix(0, 0).UTC()
		if back > 0 {
			start = cut.Add(-back)
		}
		if !start.Before(end) {
			continue
		}
		var services []string
		for ps := range open {
			services = append(services, ps.service)
		}
		slices.Sort(services)
		services = slices.Compact(services)
		// A window can hold services settled already, or open in another project only:
		// only the open (project, service) pairs take their answer from it.
		var found []projectService
		err := rd.readLastUsed(ctx, KeyLastUsedIn(KeyUseFilter{KeyID: f.KeyID, Project: f.Project, Projects: f.Projects}, services, Range{Start: start, End: end}),
			func(key, service, project string, lastMs int64) {
				if ps := (projectService{project, service}); open[ps] {
					addLastUse(uses, key, service, project, lastMs)
					found = append(found, ps)
				}
			})
		if err != nil {
			return err
		}
		for _, ps := range found {
			delete(open, ps)
		}
		end = start
	}
	// Services in name order, as every last-used query returns them.
	for pk, u := range uses {
		if pk.key == f.KeyID {
			slices.SortFunc(u.services, func(a, b ServiceUse) int { return strings.Compare(a.Service, b.Service) })
		}
	}
	return nil
}

func addLastUse(uses map[projectKey]keyUse, key, service, project string, lastMs int64) {
	last := time.UnixMilli(lastMs).UTC()
	pk := projectKey{project, key}
	u := uses[pk]
	if last.After(u.last) {
		u.last = last
	}
	u.services = append(u.services, ServiceUse{Service: service, LastUsedAt: last})
	uses[pk] = u
}

// readLastUsed runs a last-used query, passing each row to add.
func (rd *Reader) readLastUsed(ctx context.Context, q Query, add func(key, service, project string, lastMs int64)) error {
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return fmt.Errorf("query last used: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			key, service, project string
			lastMs                int64
		)
		if err := rows.Scan(&key, &service, &project, &lastMs); err != nil {
			return fmt.Errorf("scan last used: %w", err)
		}
		add(key, service, project, lastMs)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read last used: %w", err)
	}
	return nil
}
