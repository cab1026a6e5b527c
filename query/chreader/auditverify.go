package chreader

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/keytrail/keytrail/event/auditchain"
)

// ChainVerification is the result of recomputing one project's audit chain.
type ChainVerification struct {
	Project  string
	FirstSeq uint64
	LastSeq  uint64
	Rows     int
	Break    *auditchain.Break
	HeadHash string
}

const chainColumns = "event_id, event_time_ms, project, key_id, action, new_key_id, actor, actor_type, reason, expires_at, budget_amount_micros, budget_period, scopes, attribute_keys, attribute_values, change_fields, change_before, change_after, chain_seq, content_hash, prev_hash, chain_hash"

// ChainProjects lists the projects with a lifecycle chain, optionally just one.
func ChainProjects(project string) Query {
	if project != "" {
		return Query{SQL: "SELECT DISTINCT project FROM lifecycle_events WHERE project = ? ORDER BY project", Args: []any{project}}
	}
	return Query{SQL: "SELECT DISTINCT project FROM lifecycle_events ORDER BY project"}
}

// ChainSpan is the sequence range of a project's chain holding events in a time range. The
// chain is in ingestion order, so the span is contiguous even when event times are not.
func ChainSpan(project string, r Range) Query {
	return Query{
		SQL: `SELECT min(chain_seq), max(chain_seq), count()
FROM lifecycle_events
WHERE project = ? AND event_time_ms >= ? AND event_time_ms < ?`,
		Args: []any{project, r.Start.UnixMilli(), r.End.UnixMilli()},
	}
}

// ChainRows reads a project's chain rows from seq from through to, in chain order. The row
// before from is included so the first link can be checked.
func ChainRows(project string, from, to uint64) Query {
	return Query{
		SQL:  "SELECT " + chainColumns + "\nFROM lifecycle_events\nWHERE project = ? AND chain_seq >= ? AND chain_seq <= ?\nORDER BY chain_seq",
		Args: []any{project, from, to},
	}
}

// VerifyAuditTrail recomputes the chain of each project (or one) over the events in a range.
func (rd *Reader) VerifyAuditTrail(ctx context.Context, project string, start, end time.Time) ([]ChainVerification, error) {
	r, err := NewRange(start, end, rd.now())
	if err != nil {
		return nil, err
	}
	q := ChainProjects(project)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return nil, fmt.Errorf("list audit chains: %w", err)
	}
	var projects []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			rows.Close()
			return nil, err
		}
		projects = append(projects, p)
	}
	rows.Close()
	var out []ChainVerification
	for _, p := range projects {
		v, err := rd.verifyProject(ctx, p, r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (rd *Reader) verifyProject(ctx context.Context, project string, r Range) (ChainVerification, error) {
	v := ChainVerification{Project: project}
	var count uint64
	q := ChainSpan(project, r)
	if err := rd.conn.QueryRow(ctx, q.SQL, q.Args...).Scan(&v.FirstSeq, &v.LastSeq, &count); err != nil {
		return v, fmt.Errorf("chain span of %s: %w", project, err)
	}
	if err := rd.conn.QueryRow(ctx, "SELECT chain_hash FROM lifecycle_events WHERE project = ? ORDER BY chain_seq DESC LIMIT 1", project).Scan(&v.HeadHash); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return v, fmt.Errorf("chain head of %s: %w", project, err)
	}
	if count == 0 {
		return v, nil
	}
	from := v.FirstSeq
	if from > 1 {
		from-- // the row before the span anchors its first link
	}
	q = ChainRows(project, from, v.LastSeq)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return v, fmt.Errorf("chain rows of %s: %w", project, err)
	}
	defer rows.Close()
	var chain []auditchain.Row
	for rows.Next() {
		var (
			row     auditchain.Row
			expires *time.Time
		)
		if err := rows.Scan(&row.EventID, &row.EventTimeMs, &row.Project, &row.KeyID, &row.Action, &row.NewKeyID, &row.Actor, &row.ActorType, &row.Reason,
			&expires, &row.BudgetAmountMicros, &row.BudgetPeriod, &row.Scopes, &row.AttributeKeys, &row.AttributeValues,
			&row.ChangeFields, &row.ChangeBefore, &row.ChangeAfter, &row.Seq, &row.ContentHash, &row.PrevHash, &row.ChainHash); err != nil {
			return v, fmt.Errorf("scan chain row of %s: %w", project, err)
		}
		if expires != nil {
			sec := expires.Unix()
			row.ExpiresAtUnix = &sec
		}
		chain = append(chain, row)
	}
	if err := rows.Err(); err != nil {
		return v, fmt.Errorf("read chain of %s: %w", project, err)
	}
	prev := auditchain.GenesisHead
	if v.FirstSeq > 1 {
		if len(chain) == 0 || chain[0].Seq != v.FirstSeq-1 {
			v.Break = &auditchain.Break{Seq: v.FirstSeq - 1, Problem: "the row before the verified range is missing"}
			return v, nil
		}
		prev = auditchain.Head{Seq: chain[0].Seq, Hash: chain[0].ChainHash}
		chain = chain[1:]
	}
	v.Rows = len(chain)
	v.Break = auditchain.Verify(prev, chain)
	return v, nil
}
