package chsink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/auditchain"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/internal/storage"
)

// Config configures a Sink.
type Config struct {
	Conn driver.Conn
	// Cluster, when set, is the ClickHouse cluster Conn belongs to: the sink then writes each
	// shard's rows to a server of that shard (see cluster.go).
	Cluster *storage.Cluster
	// Now stamps ingested_at; time.Now when nil.
	Now func() time.Time
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	if c.Conn == nil {
		return errors.New("chsink: connection is required")
	}
	return nil
}

// Sink writes ingest records to ClickHouse. It is used by one Ingester goroutine.
type Sink struct {
	conn driver.Conn
	now  func() time.Time
	// storedThrough is the highest stream sequence stored per table, for retries.
	storedThrough map[string]uint64
	// heads caches where each project's audit chain ends; loaded from ClickHouse on first
	// use and advanced only after an insert succeeded.
	heads map[string]auditchain.Head
	// namespace is the query id prefix of this database's inserts (see fence.go).
	namespace string
	// cluster is nil on a single server.
	cluster *clusterWriter
}

// New creates a Sink.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Sink{conn: cfg.Conn, now: cfg.Now, storedThrough: map[string]uint64{}, heads: map[string]auditchain.Head{}}
	if cfg.Cluster != nil {
		s.cluster = newClusterWriter(cfg.Cluster)
	}
	return s, nil
}

var (
	_ ingest.Sink              = (*Sink)(nil)
	_ ingest.Deduper           = (*Sink)(nil)
	_ ingest.RetryDeduplicator = (*Sink)(nil)
)

// Write stores the rows: lifecycle rows first (the audit trail matters most), then usage.
func (s *Sink) Write(ctx context.Context, rows *ingest.Rows) error {
	if s.cluster != nil {
		return s.writeCluster(ctx, rows.Records())
	}
	ingestedAt := s.now().UTC().Truncate(time.Second)
	lifecycle := rows.Lifecycle
	if len(lifecycle) > 0 {
		if err := s.writeOnce("lifecycle_events", len(lifecycle), lifecycle[len(lifecycle)-1].StreamSeq, func() error { return s.insertLifecycle(ctx, lifecycle, ingestedAt) }); err != nil {
			return err
		}
	}
	if u := rows.Usage; u.Len() > 0 {
		return s.writeOnce("usage_events", u.Len(), u.StreamSeq[u.Len()-1], func() error { return s.insertUsage(ctx, u, ingestedAt) })
	}
	return nil
}

// writeOnce runs insert unless the table already holds this batch (last is its highest
// stream sequence): a retried batch whose other table failed is not written twice here.
func (s *Sink) writeOnce(table string, rows int, last uint64, insert func() error) error {
	if last <= s.storedThrough[table] {
		return nil
	}
	if err := insert(); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", rows, table, err)
	}
	s.storedThrough[table] = last
	return nil
}

// UsageColumns is the column list of every usage insert, in append order.
const UsageColumns = "event_id, event_time, event_time_ms, project, key_id, service, gateway_instance, method, endpoint, model, provider, status_code, latency_ms, input_tokens, output_tokens, cost_micros, client_ip, request_id, content_hash, stream_seq, ingested_at"

// usageColumns holds one batch column by column, for the cluster's inserts (cluster.go),
// which send each shard's rows as one block: appending whole columns is several times faster
// than row-wise Append.
type usageColumns struct {
	ids, projects, keys, services, gateways, methods, endpoints, models, providers, ips, requestIDs []string
	times, ingested                                                                                 []time.Time
	timesMs, costs                                                                                  []int64
	statuses                                                                                        []uint16
	latencies                                                                                       []uint32
	inTokens, outTokens, hashes, seqs                                                               []uint64
}

// newUsageColumns preallocates every column: growing them by append doubled the ingester's
// peak heap in the benchmark's profile.
func newUsageColumns(n int) usageColumns {
	str := func() []string { return make([]string, 0, n) }
	return usageColumns{
		ids: str(), projects: str(), keys: str(), services: str(), gateways: str(), methods: str(),
		endpoints: str(), models: str(), providers: str(), ips: str(), requestIDs: str(),
		times: make([]time.Time, 0, n), ingested: make([]time.Time, 0, n),
		timesMs: make([]int64, 0, n), costs: make([]int64, 0, n),
		statuses: make([]uint16, 0, n), latencies: make([]uint32, 0, n),
		inTokens: make([]uint64, 0, n), outTokens: make([]uint64, 0, n), hashes: make([]uint64, 0, n), seqs: make([]uint64, 0, n),
	}
}

// insertChunk is how many usage rows are handed to the driver at a time. The server joins
// the chunks of one INSERT into blocks of up to min_insert_block_size_rows (1M by default),
// so a batch is still written, and its materialized views run, as one block (one part per
// partition), while the driver holds a copy of one chunk instead of the whole batch: about
// 4 MB instead of 40 at 100k rows.
const insertChunk = 10_000

// insertUsage sends the usage rows as one INSERT, column by column in chunks of insertChunk
// rows. The driver copies what is appended, so one scratch slice serves every column.
//
// A sender killed in the middle leaves the chunks the server had received committed: a
// prefix of the rows, in stream order. The ingester's redelivery check asks storage about
// each row, so it drops that prefix and writes the rest (see ingest.Deduper). (A cluster
// retries identically instead, which needs whole blocks: cluster.go sends no chunks.)
func (s *Sink) insertUsage(ctx context.Context, u *ingest.UsageRows, ingestedAt time.Time) error {
	texts := make([]string, 0, min(u.Len(), insertChunk))
	times := make([]int64, 0, min(u.Len(), insertChunk))
	defer clear(texts[:cap(texts)]) // the views point into u's buffers
	text := func(col int) func(lo, hi int) any {
		return func(lo, hi int) any {
			texts = u.TextColumn(col, lo, hi, texts[:0])
			return texts
		}
	}
	seconds := func(f func(i int) int64) func(lo, hi int) any {
		return func(lo, hi int) any {
			times = times[:0]
			for i := lo; i < hi; i++ {
				times = append(times, f(i))
			}
			return times
		}
	}
	ingested := ingestedAt.Unix()
	return s.sendChunks(ctx, s.conn, "INSERT INTO usage_events ("+UsageColumns+")", u.Len(), insertChunk,
		text(ingest.UsageEventID),
		seconds(func(i int) int64 { return u.TimeMs[i] / 1000 }),
		rowsOf(u.TimeMs),
		text(ingest.UsageProject),
		text(ingest.UsageKeyID),
		text(ingest.UsageService),
		text(ingest.UsageGatewayInstance),
		text(ingest.UsageMethod),
		text(ingest.UsageEndpoint),
		text(ingest.UsageModel),
		text(ingest.UsageProvider),
		rowsOf(u.StatusCode),
		rowsOf(u.LatencyMs),
		rowsOf(u.InputTokens),
		rowsOf(u.OutputTokens),
		rowsOf(u.CostMicros),
		text(ingest.UsageClientIP),
		text(ingest.UsageRequestID),
		rowsOf(u.ContentHash),
		rowsOf(u.StreamSeq),
		seconds(func(int) int64 { return ingested }),
	)
}

// rowsOf is a column's rows [lo, hi), for sendChunks.
func rowsOf[T any](col []T) func(lo, hi int) any {
	return func(lo, hi int) any { return col[lo:hi] }
}

// usageBlock is the columns of a usage insert, in UsageColumns order.
func usageBlock(records []ingest.Record, ingestedAt time.Time) []any {
	c := newUsageColumns(len(records))
	for _, r := range records {
		e := r.Event.Usage
		t := e.GetTime().AsTime()
		c.ids, c.projects, c.keys = append(c.ids, e.GetEventId()), append(c.projects, e.GetProject()), append(c.keys, e.GetKeyId())
		c.services, c.gateways = append(c.services, e.GetService()), append(c.gateways, e.GetGatewayInstance())
		c.methods, c.endpoints = append(c.methods, e.GetMethod()), append(c.endpoints, e.GetEndpoint())
		c.models, c.providers = append(c.models, e.GetModel()), append(c.providers, e.GetProvider())
		c.ips, c.requestIDs = append(c.ips, e.GetClientIp()), append(c.requestIDs, e.GetRequestId())
		c.times, c.timesMs, c.ingested = append(c.times, t.Truncate(time.Second)), append(c.timesMs, t.UnixMilli()), append(c.ingested, ingestedAt)
		c.statuses, c.latencies = append(c.statuses, uint16(e.GetStatusCode())), append(c.latencies, e.GetLatencyMs())
		c.inTokens, c.outTokens, c.costs = append(c.inTokens, e.GetInputTokens()), append(c.outTokens, e.GetOutputTokens()), append(c.costs, e.GetCostMicros())
		c.hashes, c.seqs = append(c.hashes, r.ContentHash), append(c.seqs, r.StreamSeq)
	}
	return []any{c.ids, c.times, c.timesMs, c.projects, c.keys, c.services, c.gateways, c.methods, c.endpoints, c.models, c.providers,
		c.statuses, c.latencies, c.inTokens, c.outTokens, c.costs, c.ips, c.requestIDs, c.hashes, c.seqs, c.ingested}
}

// LifecycleColumns is the column list of every lifecycle insert, in append order.
const LifecycleColumns = "event_id, event_time, event_time_ms, project, key_id, action, new_key_id, actor, actor_type, reason, expires_at, budget_amount_micros, budget_period, scopes, attribute_keys, attribute_values, change_fields, change_before, change_after, content_hash, prev_hash, chain_hash, chain_seq, stream_seq, ingested_at"

// LifecycleEntry is the audit-chain entry of a lifecycle event, exactly as it is stored.
func LifecycleEntry(r ingest.Record) auditchain.Entry {
	e := r.Event.Lifecycle
	entry := auditchain.Entry{
		EventID: e.GetEventId(), EventTimeMs: e.GetTime().AsTime().UnixMilli(), Project: e.GetProject(),
		KeyID: e.GetKeyId(), Action: event.ActionName(e.GetAction()), NewKeyID: e.GetNewKeyId(),
		Actor: e.GetActor(), ActorType: event.ActorTypeName(e.GetActorType()), Reason: e.GetReason(),
		Scopes: e.GetScopes(),
	}
	if e.GetExpiresAt() != nil {
		sec := e.GetExpiresAt().AsTime().Unix()
		entry.ExpiresAtUnix = &sec
	}
	if b := e.GetBudget(); b != nil {
		amount := b.GetAmountMicros()
		entry.BudgetAmountMicros, entry.BudgetPeriod = &amount, event.BudgetPeriodName(b.GetPeriod())
	}
	entry.AttributeKeys, entry.AttributeValues = auditchain.SortedAttributes(e.GetAttributes())
	for _, c := range e.GetChanges() {
		entry.ChangeFields = append(entry.ChangeFields, c.GetField())
		entry.ChangeBefore = append(entry.ChangeBefore, c.GetBefore())
		entry.ChangeAfter = append(entry.ChangeAfter, c.GetAfter())
	}
	return entry
}

func (s *Sink) insertLifecycle(ctx context.Context, records []ingest.Record, ingestedAt time.Time) error {
	rows, heads, err := s.chainRows(ctx, records)
	if err != nil {
		return err
	}
	if err := s.sendColumns(ctx, s.conn, "INSERT INTO lifecycle_events ("+LifecycleColumns+")", lifecycleBlock(rows, records, ingestedAt)...); err != nil {
		// The insert may have been committed although it reported an error; the next write
		// must continue from what ClickHouse holds, not from this process's guess.
		for p := range heads {
			delete(s.heads, p)
		}
		return err
	}
	for p, h := range heads {
		s.heads[p] = h
	}
	return nil
}

// chainRows extends each project's chain in stream order and returns the rows and the new
// heads. The cached heads move only once the insert succeeded, so a retried batch gets the
// same hashes and sequence numbers.
func (s *Sink) chainRows(ctx context.Context, records []ingest.Record) ([]auditchain.Row, map[string]auditchain.Head, error) {
	heads := map[string]auditchain.Head{}
	var rows []auditchain.Row
	for _, r := range records {
		project := r.Event.Lifecycle.GetProject()
		head, ok := heads[project]
		if !ok {
			var err error
			if head, err = s.head(ctx, project); err != nil {
				return nil, nil, err
			}
		}
		var row auditchain.Row
		row, heads[project] = head.Next(LifecycleEntry(r))
		rows = append(rows, row)
	}
	return rows, heads, nil
}

// lifecycleBlock is the columns of a lifecycle insert, in LifecycleColumns order; records[i]
// is the record of rows[i].
func lifecycleBlock(rows []auditchain.Row, records []ingest.Record, ingestedAt time.Time) []any {
	n := len(rows)
	var (
		ids, projects, keys, actions, newKeys, actors, actorTypes, reasons, periods = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		contentHashes, prevHashes, chainHashes                                      = make([]string, n), make([]string, n), make([]string, n)
		times, ingested                                                             = make([]time.Time, n), make([]time.Time, n)
		timesMs                                                                     = make([]int64, n)
		expires                                                                     = make([]*time.Time, n)
		budgets                                                                     = make([]*int64, n)
		scopes, attrKeys, attrValues, changeFields, changeBefore, changeAfter       = make([][]string, n), make([][]string, n), make([][]string, n), make([][]string, n), make([][]string, n), make([][]string, n)
		chainSeqs, seqs                                                             = make([]uint64, n), make([]uint64, n)
	)
	for i, row := range rows {
		ids[i], projects[i], keys[i], actions[i], newKeys[i] = row.EventID, row.Project, row.KeyID, row.Action, row.NewKeyID
		actors[i], actorTypes[i], reasons[i], periods[i] = row.Actor, row.ActorType, row.Reason, row.BudgetPeriod
		times[i], timesMs[i], ingested[i] = time.UnixMilli(row.EventTimeMs).UTC().Truncate(time.Second), row.EventTimeMs, ingestedAt
		if row.ExpiresAtUnix != nil {
			exp := time.Unix(*row.ExpiresAtUnix, 0).UTC()
			expires[i] = &exp
		}
		budgets[i] = row.BudgetAmountMicros
		scopes[i], attrKeys[i], attrValues[i] = nonNil(row.Scopes), nonNil(row.AttributeKeys), nonNil(row.AttributeValues)
		changeFields[i], changeBefore[i], changeAfter[i] = nonNil(row.ChangeFields), nonNil(row.ChangeBefore), nonNil(row.ChangeAfter)
		contentHashes[i], prevHashes[i], chainHashes[i], chainSeqs[i] = row.ContentHash, row.PrevHash, row.ChainHash, row.Seq
		seqs[i] = records[i].StreamSeq
	}
	return []any{ids, times, timesMs, projects, keys, actions, newKeys, actors, actorTypes, reasons,
		expires, budgets, periods, scopes, attrKeys, attrValues, changeFields, changeBefore, changeAfter,
		contentHashes, prevHashes, chainHashes, chainSeqs, seqs, ingested}
}

// head is where a project's chain ends, from the cache or from ClickHouse.
func (s *Sink) head(ctx context.Context, project string) (auditchain.Head, error) {
	if h, ok := s.heads[project]; ok {
		return h, nil
	}
	if s.cluster != nil {
		return s.headCluster(ctx, project)
	}
	// A predecessor's last lifecycle insert may still be committing; reading the head
	// before it ends would fork the chain.
	if err := s.awaitRunningInserts(ctx); err != nil {
		return auditchain.Head{}, err
	}
	var h auditchain.Head
	err := s.conn.QueryRow(ctx, "SELECT chain_seq, chain_hash FROM lifecycle_events WHERE project = ? ORDER BY chain_seq DESC LIMIT 1", project).Scan(&h.Seq, &h.Hash)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		h = auditchain.GenesisHead
	case err != nil:
		return auditchain.Head{}, fmt.Errorf("read audit chain head of %s: %w", project, err)
	}
	s.heads[project] = h
	return h, nil
}

// sendColumns appends whole columns, then sends the batch over conn, tagged for the insert
// fence.
func (s *Sink) sendColumns(ctx context.Context, conn driver.Conn, insert string, columns ...any) error {
	whole := make([]func(lo, hi int) any, len(columns))
	for i, col := range columns {
		whole[i] = func(int, int) any { return col }
	}
	// One chunk of "one row": every column is appended whole, once.
	return s.sendChunks(ctx, conn, insert, 1, 1, whole...)
}

// sendChunks sends rows [0, n) over conn as one INSERT tagged for the insert fence, chunk
// rows at a time: column(lo, hi) is a column's rows [lo, hi), made just before it is
// appended.
func (s *Sink) sendChunks(ctx context.Context, conn driver.Conn, insert string, n, chunk int, columns ...func(lo, hi int) any) error {
	ctx, err := s.insertContext(ctx)
	if err != nil {
		return err
	}
	batch, err := conn.PrepareBatch(ctx, insert)
	if err != nil {
		return err
	}
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		for i, col := range columns {
			if err := batch.Column(i).Append(col(lo, hi)); err != nil {
				_ = batch.Abort()
				return fmt.Errorf("column %d: %w", i, err)
			}
		}
		if hi < n {
			if err := batch.Flush(); err != nil {
				_ = batch.Abort()
				return err
			}
		}
	}
	return batch.Send()
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
