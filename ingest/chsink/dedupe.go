package chsink

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/auditchain"
	"github.com/keytrail/keytrail/ingest"
)

// Classify tells, for each record, whether the same event is already stored, a different
// event with the same id is, or neither. The ingester asks about redelivered records and,
// after it starts, about records until the first one storage does not hold: these reads
// happen after a start, a crash or a lost ack, not on the hot path. Lookups are narrowed by
// the records' keys (the usage table's sort-key prefix) and time span (partition pruning),
// and name at most classifyChunk records each.
//
// It first waits for inserts ClickHouse is still running (see fence.go): one sent by a
// process killed a moment ago commits after its sender died.
func (s *Sink) Classify(ctx context.Context, records []ingest.Record) ([]ingest.Presence, error) {
	if s.cluster != nil {
		return s.classifyCluster(ctx, records)
	}
	if err := s.awaitRunningInserts(ctx); err != nil {
		return nil, err
	}
	return classifyOn(ctx, s.conn, "usage_events", "lifecycle_events", records)
}

// classifyOn classifies records against the named tables over conn, in chunks.
func classifyOn(ctx context.Context, conn driver.Conn, usageTable, lifecycleTable string, records []ingest.Record) ([]ingest.Presence, error) {
	out := make([]ingest.Presence, 0, len(records))
	for chunk := range slices.Chunk(records, classifyChunk) {
		presence, err := classify(ctx, conn, usageTable, lifecycleTable, chunk)
		if err != nil {
			return nil, err
		}
		out = append(out, presence...)
	}
	return out, nil
}

// classifyChunk bounds the records one lookup names: the ids and keys are bound into the
// query text, and ClickHouse refuses a query over max_query_size (256 KiB by default), which
// a 10,000-event batch of UUID ids exceeds.
const classifyChunk = 1000

// classify looks one chunk up. The table names are the sink's own constants, never input.
func classify(ctx context.Context, conn driver.Conn, usageTable, lifecycleTable string, records []ingest.Record) ([]ingest.Presence, error) {
	var usageIDs, usageKeys, lifecycleIDs []string
	var minSec, maxSec int64
	for i, r := range records {
		sec := eventTime(r).Unix()
		if i == 0 || sec < minSec {
			minSec = sec
		}
		if i == 0 || sec > maxSec {
			maxSec = sec
		}
		switch r.Event.Kind {
		case event.KindUsage:
			usageIDs = append(usageIDs, r.Event.Usage.GetEventId())
			usageKeys = append(usageKeys, r.Event.Usage.GetKeyId())
		case event.KindLifecycle:
			lifecycleIDs = append(lifecycleIDs, r.Event.Lifecycle.GetEventId())
		}
	}
	storedUsage := map[string]uint64{}
	if len(usageIDs) > 0 {
		rows, err := conn.Query(ctx, `SELECT event_id, content_hash FROM `+usageTable+`
WHERE key_id IN (SELECT arrayJoin(?)) AND event_id IN (SELECT arrayJoin(?)) AND event_time >= toDateTime(?) AND event_time <= toDateTime(?)`,
			usageKeys, usageIDs, minSec, maxSec)
		if err != nil {
			return nil, fmt.Errorf("look up stored usage events: %w", err)
		}
		for rows.Next() {
			var id string
			var h uint64
			if err := rows.Scan(&id, &h); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up stored usage events: %w", err)
			}
			storedUsage[id] = h
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up stored usage events: %w", err)
		}
	}
	storedLifecycle := map[string]string{}
	if len(lifecycleIDs) > 0 {
		rows, err := conn.Query(ctx, `SELECT event_id, content_hash FROM `+lifecycleTable+`
WHERE event_id IN (SELECT arrayJoin(?)) AND event_time >= toDateTime(?) AND event_time <= toDateTime(?)`,
			lifecycleIDs, minSec, maxSec)
		if err != nil {
			return nil, fmt.Errorf("look up stored lifecycle events: %w", err)
		}
		for rows.Next() {
			var id, h string
			if err := rows.Scan(&id, &h); err != nil {
				rows.Close()
				return nil, fmt.Errorf("look up stored lifecycle events: %w", err)
			}
			storedLifecycle[id] = h
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("look up stored lifecycle events: %w", err)
		}
	}
	out := make([]ingest.Presence, len(records))
	for i, r := range records {
		switch r.Event.Kind {
		case event.KindUsage:
			if h, ok := storedUsage[r.Event.Usage.GetEventId()]; ok {
				out[i] = presence(h == r.ContentHash)
			}
		case event.KindLifecycle:
			if h, ok := storedLifecycle[r.Event.Lifecycle.GetEventId()]; ok {
				out[i] = presence(h == auditchain.ContentHash(LifecycleEntry(r)))
			}
		}
	}
	return out, nil
}

func presence(same bool) ingest.Presence {
	if same {
		return ingest.AlreadyStored
	}
	return ingest.Conflict
}

func eventTime(r ingest.Record) time.Time {
	if r.Event.Kind == event.KindLifecycle {
		return r.Event.Lifecycle.GetTime().AsTime()
	}
	return r.Event.Usage.GetTime().AsTime()
}
