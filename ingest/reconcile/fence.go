package reconcile

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// The check's fence waits for every INSERT the server is running, whoever sent it and into
// whichever database: the ingester's (tagged for chsink's fence), a repair of another
// process, an operator's. Waiting for other databases' inserts costs a little time and
// nothing else; missing one whose raw rows the first read saw would let the check count
// its views' rows once more than it should. system.processes does not say which database a
// query writes, so the statement text is what is matched.
const (
	runningInsertsSQL = "SELECT query_id FROM system.processes WHERE match(query, '(?i)^[[:space:]]*insert[[:space:]]')"
	stillRunningSQL   = "SELECT query_id FROM system.processes WHERE query_id IN (SELECT arrayJoin(?))"
	fencePoll         = 20 * time.Millisecond
	fenceMaxWait      = time.Minute
)

// awaitInserts returns once no INSERT that was running when it was called is running any
// more.
func (r *Reconciler) awaitInserts(ctx context.Context) error {
	running, err := r.queryIDs(ctx, runningInsertsSQL)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(fenceMaxWait)
	for len(running) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("reconcile: inserts still running after %s (query ids %s): the rollups cannot be compared until they end", fenceMaxWait, strings.Join(running, ", "))
		}
		if !sleep(ctx, fencePoll) {
			return ctx.Err()
		}
		if running, err = r.queryIDs(ctx, stillRunningSQL, running); err != nil {
			return err
		}
	}
	return nil
}

func (r *Reconciler) queryIDs(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := r.conn.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("reconcile: list running inserts: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("reconcile: list running inserts: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reconcile: list running inserts: %w", err)
	}
	return ids, nil
}
