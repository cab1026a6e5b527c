package chreader

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/keystate"
)

// AuditFilter narrows the lifecycle audit trail; empty fields match everything.
type AuditFilter struct {
	Project string
	// Projects, when not nil, keeps only these projects (the caller's readable ones).
	Projects []string
	KeyID    string
	Actor    string
	// Action is the stored action name ("rotated"), empty for all.
	Action string
}

// auditCursor is the sort key of the last row of a page: newest first, ties by event id.
type auditCursor struct {
	TimeMs  int64
	EventID string
}

const auditColumns = "event_id, event_time_ms, project, key_id, action, new_key_id, actor, actor_type, reason, expires_at, budget_amount_micros, budget_period, scopes, attribute_keys, attribute_values, change_fields, change_before, change_after"

// AuditEvents is a page of the lifecycle audit trail, newest first.
func AuditEvents(f AuditFilter, r Range, after *auditCursor, limit int) Query {
	where := []string{
		"event_time >= toDateTime(?)", "event_time <= toDateTime(?)",
		"event_time_ms >= ?", "event_time_ms < ?",
	}
	args := []any{floorSec(r.Start.UnixMilli()), floorSec(r.End.UnixMilli()), r.Start.UnixMilli(), r.End.UnixMilli()}
	for _, c := range []struct{ column, value string }{
		{"project", f.Project}, {"key_id", f.KeyID}, {"actor", f.Actor}, {"action", f.Action},
	} {
		if c.value != "" {
			where = append(where, c.column+" = ?")
			args = append(args, c.value)
		}
	}
	if f.Projects != nil {
		where = append(where, "has(?, project)")
		args = append(args, f.Projects)
	}
	if after != nil {
		where = append(where, "(event_time_ms < ? OR (event_time_ms = ? AND event_id < ?))")
		args = append(args, after.TimeMs, after.TimeMs, after.EventID)
	}
	sql := "SELECT " + auditColumns + "\nFROM lifecycle_events\nWHERE " + strings.Join(where, "\n  AND ") +
		"\nORDER BY event_time_ms DESC, event_id DESC\nLIMIT ?"
	return Query{SQL: sql, Args: append(args, limit)}
}

// AuditRequest is the input of the audit trail.
type AuditRequest struct {
	Filter     AuditFilter
	Start, End time.Time
	PageSize   int32
	PageToken  string
}

// AuditEvent is one lifecycle event as stored. The enums are the event contract's, parsed
// from the stored names (an action this build does not know stays ACTION_UNSPECIFIED).
type AuditEvent struct {
	EventID   string
	Time      time.Time // millisecond precision
	Project   string
	KeyID     string
	Action    keytrailv1.Action
	NewKeyID  string
	Actor     string
	ActorType keytrailv1.ActorType
	Reason    string
	// ExpiresAt is zero when the event carries no expiry.
	ExpiresAt time.Time
	// Budget is nil when the event carries none.
	Budget     *keystate.Budget
	Scopes     []string
	Attributes map[string]string
	Changes    []FieldChange
}

// FieldChange is one field an event changed, as the gateway described it.
type FieldChange struct {
	Field, Before, After string
}

// AuditPage is one page of the audit trail.
type AuditPage struct {
	Events        []AuditEvent
	NextPageToken string
}

// AuditEvents reads one page of the audit trail.
func (rd *Reader) AuditEvents(ctx context.Context, req AuditRequest) (AuditPage, error) {
	r, err := NewRange(req.Start, req.End, rd.now())
	if err != nil {
		return AuditPage{}, err
	}
	limit, err := PageSize(req.PageSize)
	if err != nil {
		return AuditPage{}, err
	}
	f := req.Filter
	filters := []string{"audit", f.Project, projectsStamp(f.Projects), f.KeyID, f.Actor, f.Action, r.Start.Format(time.RFC3339Nano)}
	cursorFields, err := decodePageToken(req.PageToken, 2, filters...)
	if err != nil {
		return AuditPage{}, err
	}
	var cursor *auditCursor
	if cursorFields != nil {
		ms, perr := strconv.ParseInt(cursorFields[0], 10, 64)
		if perr != nil {
			return AuditPage{}, &InvalidError{Field: "page_token", Reason: "is not a token this query issued"}
		}
		cursor = &auditCursor{TimeMs: ms, EventID: cursorFields[1]}
	}
	if f.Projects != nil && len(f.Projects) == 0 {
		return AuditPage{}, nil
	}
	q := AuditEvents(f, r, cursor, limit+1)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return AuditPage{}, fmt.Errorf("query audit events: %w", err)
	}
	defer rows.Close()
	var page AuditPage
	for rows.Next() {
		var (
			id, project, key, action, newKey, actor, actorType, reason, period string
			timeMs                                                             int64
			expires                                                            *time.Time
			budget                                                             *int64
			scopes, attrKeys, attrValues, fields, before, after                []string
		)
		if err := rows.Scan(&id, &timeMs, &project, &key, &action, &newKey, &actor, &actorType, &reason,
			&expires, &budget, &period, &scopes, &attrKeys, &attrValues, &fields, &before, &after); err != nil {
			return AuditPage{}, fmt.Errorf("scan audit event: %w", err)
		}
		a, _ := event.ParseAction(action)
		e := AuditEvent{
			EventID:   id,
			Time:      time.UnixMilli(timeMs).UTC(),
			Project:   project,
			KeyID:     key,
			Action:    a,
			NewKeyID:  newKey,
			Actor:     actor,
			ActorType: event.ParseActorType(actorType),
			Reason:    reason,
			Scopes:    scopes,
		}
		if expires != nil {
			e.ExpiresAt = expires.UTC()
		}
		if budget != nil {
			e.Budget = &keystate.Budget{AmountMicros: *budget, Period: event.ParseBudgetPeriod(period)}
		}
		if len(attrKeys) > 0 {
			e.Attributes = make(map[string]string, len(attrKeys))
			for i, k := range attrKeys {
				e.Attributes[k] = attrValues[i]
			}
		}
		for i := range fields {
			e.Changes = append(e.Changes, FieldChange{Field: fields[i], Before: before[i], After: after[i]})
		}
		page.Events = append(page.Events, e)
	}
	if err := rows.Err(); err != nil {
		return AuditPage{}, fmt.Errorf("read audit events: %w", err)
	}
	if len(page.Events) > limit {
		page.Events = page.Events[:limit]
		last := page.Events[limit-1]
		page.NextPageToken = encodePageToken([]string{strconv.FormatInt(last.Time.UnixMilli(), 10), last.EventID}, filters...)
	}
	return page, nil
}
