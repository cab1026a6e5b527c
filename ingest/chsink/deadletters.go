package chsink

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/ingest"
)

// The dead_letters table (migration 0010) keeps the dead letters the dead-letter stream
// refused. One row per message of the events stream; a second row for the same position
// is either the same dead letter kept again (a redelivery) or, with replayed_at set, the
// mark that it was replayed.

// DeadLetterColumns is the column list of every dead_letters insert, in append order.
const DeadLetterColumns = "stream, stream_seq, received_at, dead_lettered_at, reason, detail, kind, subject, original_msg_id, header_keys, header_values, dropped_headers, payload, payload_bytes, payload_sha256, redacted, truncated, fallback_cause, replayed_at"

var _ ingest.DeadLetterStore = (*Sink)(nil)

// WriteDeadLetters keeps dead letters in dead_letters. Writing one again (the ingester
// retries, or a redelivered message is dead-lettered again) leaves one row once merged, and
// ReadDeadLetters shows one.
func (s *Sink) WriteDeadLetters(ctx context.Context, letters []*ingest.DeadLetter) error {
	ctx, err := s.insertContext(ctx)
	if err != nil {
		return err
	}
	if err := insertDeadLetters(ctx, s.conn, letters, time.Unix(0, 0)); err != nil {
		return fmt.Errorf("insert %d rows into dead_letters: %w", len(letters), err)
	}
	return nil
}

func insertDeadLetters(ctx context.Context, conn driver.Conn, letters []*ingest.DeadLetter, replayedAt time.Time) error {
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO dead_letters ("+DeadLetterColumns+")")
	if err != nil {
		return err
	}
	for _, d := range letters {
		keys, values := []string{}, []string{}
		for k, vs := range d.Header {
			for _, v := range vs {
				keys, values = append(keys, k), append(values, v)
			}
		}
		truncated := uint8(0)
		if d.Truncated {
			truncated = 1
		}
		if err := batch.Append(d.Stream, d.StreamSeq, d.ReceivedAt.UTC(), d.At.UTC(), string(d.Reason), d.Detail, d.Kind, d.Subject,
			d.OriginalMsgID, keys, values, nonNil(d.Dropped), string(d.Payload), uint64(d.PayloadBytes), d.PayloadSHA256,
			uint32(d.Redacted), truncated, d.FallbackCause, replayedAt.UTC()); err != nil {
			_ = batch.Abort()
			return err
		}
	}
	return batch.Send()
}

// DeadLetterFilter selects dead letters; zero values select all.
type DeadLetterFilter struct {
	Reason string
	// Since keeps the dead letters made at or after it.
	Since time.Time
}

// ReadDeadLetters returns the dead letters in dead_letters that were not replayed, oldest
// first.
func ReadDeadLetters(ctx context.Context, conn driver.Conn, f DeadLetterFilter) ([]*ingest.DeadLetter, error) {
	// Versions are merged here rather than with FINAL: 18.16 may apply a WHERE condition
	// before FINAL's merge (as PREWHERE) and show a replayed row's older version. A
	// replayed mark repeats its row's reason and time, so the filter keeps or drops both.
	rows, err := conn.Query(ctx, `SELECT stream, stream_seq, received_at, dead_lettered_at, reason, detail, kind, subject, original_msg_id,
	header_keys, header_values, dropped_headers, payload, payload_bytes, payload_sha256, redacted, truncated, fallback_cause, toUInt32(replayed_at)
FROM dead_letters
WHERE dead_lettered_at >= ? AND (? = '' OR reason = ?)
ORDER BY dead_lettered_at, stream, stream_seq`, f.Since.UTC().Truncate(time.Second), f.Reason, f.Reason)
	if err != nil {
		return nil, fmt.Errorf("read dead_letters: %w", err)
	}
	defer rows.Close()
	type position struct {
		stream string
		seq    uint64
	}
	var out []*ingest.DeadLetter
	seen := map[position]bool{}
	replayed := map[position]bool{}
	for rows.Next() {
		var (
			d                     ingest.DeadLetter
			reason, payload       string
			keys, values, dropped []string
			payloadBytes          uint64
			redacted, replayedAt  uint32
			truncated             uint8
		)
		if err := rows.Scan(&d.Stream, &d.StreamSeq, &d.ReceivedAt, &d.At, &reason, &d.Detail, &d.Kind, &d.Subject, &d.OriginalMsgID,
			&keys, &values, &dropped, &payload, &payloadBytes, &d.PayloadSHA256, &redacted, &truncated, &d.FallbackCause, &replayedAt); err != nil {
			return nil, fmt.Errorf("read dead_letters: %w", err)
		}
		p := position{d.Stream, d.StreamSeq}
		if replayedAt != 0 {
			replayed[p] = true
			continue
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		d.Reason, d.Payload, d.PayloadBytes, d.Redacted, d.Truncated = event.Reason(reason), []byte(payload), int(payloadBytes), int(redacted), truncated == 1
		d.Header = nats.Header{}
		for i := range keys {
			d.Header[keys[i]] = append(d.Header[keys[i]], values[i])
		}
		if len(dropped) > 0 {
			d.Dropped = dropped
		}
		out = append(out, &d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read dead_letters: %w", err)
	}
	kept := out[:0]
	for _, d := range out {
		if !replayed[position{d.Stream, d.StreamSeq}] {
			kept = append(kept, d)
		}
	}
	return kept, nil
}

// MarkDeadLettersReplayed records that these dead letters were replayed: ReadDeadLetters no
// longer returns them.
func MarkDeadLettersReplayed(ctx context.Context, conn driver.Conn, letters []*ingest.DeadLetter, at time.Time) error {
	if err := insertDeadLetters(ctx, conn, letters, at.Truncate(time.Second)); err != nil {
		return fmt.Errorf("mark %d dead letters replayed: %w", len(letters), err)
	}
	return nil
}
