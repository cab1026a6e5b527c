package chsink

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/auditchain"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/migrations"
)

// On a cluster (migrations render the cluster schema) the sink writes each shard's rows
// straight to a server of that shard, never through a Distributed table: usage rows to the
// shard's usage_events_ingest, a Null table whose materialized views fill the replicated raw
// table and every rollup, lifecycle rows to lifecycle_events_local. It chose this over
// inserting into a Distributed table with insert_distributed_sync=1 (both acknowledge only
// once a replica of every shard holds the rows; the measurements are in docs/cluster.md):
// the rows cross the network once instead of twice, the shards' inserts run in parallel, and
// the sink knows which server holds what it wrote.
//
// A failed write is retried identically: the same rows, in the same order, with the same
// ingested_at and chain values, to the same shards, on the shard's other replica if the first
// is unreachable. Every replicated table deduplicates an insert block equal to one it stored
// (ZooKeeper keeps the last 100 block hashes per table), each on its own, so a retry after an
// insert that failed half way (the raw part stored and a rollup's not, or one shard's rows
// and not the other's) completes what is missing and stores nothing twice. The rollups carry
// an insert_tag column (the batch's highest stream sequence per cell) so that two different
// batches whose cells happen to be equal are not mistaken for a retry.
//
// Reads that decide correctness (the storage check of redelivered records and the first read
// of an audit chain head) go to one server per shard after the fence (inserts still running
// anywhere) and SYSTEM SYNC REPLICA on that server: a replica that has not yet fetched a part
// its sibling stored would otherwise answer "not stored" and the rows would be written twice.
// When the sibling that holds such a part is down, the sync waits for it to return: the
// check, and so the ingester, stall rather than guess.

// syncTimeout bounds one SYSTEM SYNC REPLICA; the ingester retries a failed check with
// backoff, keeping its messages' leases.
const syncTimeout = 20 * time.Second

type clusterWriter struct {
	c *storage.Cluster
	// replica is, per shard, the index of the server written to and read from; it moves on
	// when a write or a read there fails.
	replica []int
	// pending is the batch whose write failed, kept to be sent again identically.
	pending *pendingWrite
}

func newClusterWriter(c *storage.Cluster) *clusterWriter {
	return &clusterWriter{c: c, replica: make([]int, len(c.Shards))}
}

// pendingWrite is one batch prepared for the shards: the inserts, and the chain heads to
// cache once every insert succeeded.
type pendingWrite struct {
	first, last uint64
	n           int
	inserts     []*shardInsert
	heads       map[string]auditchain.Head
}

func (p *pendingWrite) matches(records []ingest.Record) bool {
	return p != nil && len(records) == p.n && records[0].StreamSeq == p.first && records[len(records)-1].StreamSeq == p.last
}

// shardInsert is one insert into one shard.
type shardInsert struct {
	shard   int
	table   string
	columns string
	block   []any
	rows    int
	done    bool
}

// DeduplicatesRetries tells the ingester to retry a failed write as it is (see
// ingest.RetryDeduplicator): true on a cluster, whose replicated tables drop identical blocks.
func (s *Sink) DeduplicatesRetries() bool { return s.cluster != nil }

func (s *Sink) writeCluster(ctx context.Context, records []ingest.Record) error {
	w := s.cluster
	if len(records) == 0 {
		return nil
	}
	if !w.pending.matches(records) {
		p, err := s.prepare(ctx, records)
		if err != nil {
			return err
		}
		w.pending = p
	}
	p := w.pending
	// Resolved before the goroutines below share it.
	if _, err := s.insertNamespace(ctx); err != nil {
		return err
	}
	// The shards are written at once, each by its own goroutine over its own connections;
	// within a shard, lifecycle rows go before usage rows.
	errs := make([]error, len(w.c.Shards))
	var wg sync.WaitGroup
	for sh := range w.c.Shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, in := range p.inserts {
				if in.shard != sh || in.done {
					continue
				}
				r := w.c.Shards[sh].Replicas[w.replica[sh]]
				if err := s.sendColumns(ctx, r.Conn, "INSERT INTO "+in.table+" ("+in.columns+")", in.block...); err != nil {
					errs[sh] = fmt.Errorf("insert %d rows into %s on %s: %w", in.rows, in.table, r.Name(), err)
					w.next(sh)
					return
				}
				in.done = true
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for project, h := range p.heads {
		s.heads[project] = h
	}
	w.pending = nil
	return nil
}

// next moves a shard's writes and reads to its next server.
func (w *clusterWriter) next(shard int) {
	w.replica[shard] = (w.replica[shard] + 1) % len(w.c.Shards[shard].Replicas)
}

// prepare builds a batch's inserts: lifecycle first (the audit trail matters most), each
// project's rows to its shard; then usage, each key's rows to its shard.
func (s *Sink) prepare(ctx context.Context, records []ingest.Record) (*pendingWrite, error) {
	w := s.cluster
	ingestedAt := s.now().UTC().Truncate(time.Second)
	shards := len(w.c.Shards)
	usage := make([][]ingest.Record, shards)
	lifecycle := make([][]ingest.Record, shards)
	var allLifecycle []ingest.Record
	for _, r := range records {
		switch r.Event.Kind {
		case event.KindUsage:
			i := w.c.ShardOf(r.Event.Usage.GetProject(), r.Event.Usage.GetKeyId())
			usage[i] = append(usage[i], r)
		case event.KindLifecycle:
			allLifecycle = append(allLifecycle, r)
		}
	}
	p := &pendingWrite{first: records[0].StreamSeq, last: records[len(records)-1].StreamSeq, n: len(records)}
	for _, r := range allLifecycle {
		if _, ok := s.heads[r.Event.Lifecycle.GetProject()]; !ok {
			// Chain heads not cached yet are read from storage: settle it once for all.
			if err := s.settle(ctx); err != nil {
				return nil, err
			}
			break
		}
	}
	if len(allLifecycle) > 0 {
		rows, heads, err := s.chainRows(ctx, allLifecycle)
		if err != nil {
			return nil, err
		}
		p.heads = heads
		chainRows := make([][]auditchain.Row, shards)
		for i, r := range allLifecycle {
			sh := w.c.ShardOfProject(r.Event.Lifecycle.GetProject())
			lifecycle[sh] = append(lifecycle[sh], r)
			chainRows[sh] = append(chainRows[sh], rows[i])
		}
		for sh := range shards {
			if len(lifecycle[sh]) > 0 {
				p.inserts = append(p.inserts, &shardInsert{shard: sh, table: "lifecycle_events" + migrations.LocalSuffix, columns: LifecycleColumns,
					block: lifecycleBlock(chainRows[sh], lifecycle[sh], ingestedAt), rows: len(lifecycle[sh])})
			}
		}
	}
	for sh := range shards {
		if len(usage[sh]) > 0 {
			p.inserts = append(p.inserts, &shardInsert{shard: sh, table: "usage_events" + migrations.IngestSuffix, columns: UsageColumns,
				block: usageBlock(usage[sh], ingestedAt), rows: len(usage[sh])})
		}
	}
	return p, nil
}

// settle prepares the storage reads that decide correctness: it waits for inserts still
// running on any server (fence.go), then brings the server read on each shard up to date
// with everything its siblings committed.
func (s *Sink) settle(ctx context.Context) error {
	if err := s.awaitRunningInserts(ctx); err != nil {
		return err
	}
	w := s.cluster
	for i, shard := range w.c.Shards {
		var errs []error
		for range shard.Replicas {
			r := shard.Replicas[w.replica[i]]
			err := syncReplica(ctx, r.Conn)
			if err == nil {
				break
			}
			errs = append(errs, fmt.Errorf("%s: %w", r.Name(), err))
			w.next(i)
		}
		if len(errs) == len(shard.Replicas) {
			return fmt.Errorf("no server of shard %d could be brought up to date: %w", shard.Num, errors.Join(errs...))
		}
	}
	return nil
}

// syncReplica waits until the server holds every part of the raw tables that any replica
// committed (SYSTEM SYNC REPLICA fetches what its queue lacks).
func syncReplica(ctx context.Context, conn driver.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, syncTimeout)
	defer cancel()
	for _, table := range []string{"usage_events" + migrations.LocalSuffix, "lifecycle_events" + migrations.LocalSuffix} {
		if err := conn.Exec(ctx, "SYSTEM SYNC REPLICA "+table); err != nil {
			return fmt.Errorf("sync replica of %s: %w", table, err)
		}
	}
	return nil
}

// reader is the server a shard's correctness reads go to (after settle).
func (w *clusterWriter) reader(shard int) *storage.Replica {
	return w.c.Shards[shard].Replicas[w.replica[shard]]
}

// classifyCluster asks every shard about every record, not only the shard that would hold
// it now: after a shard is added, rows stored before the change live where the old mapping
// put them. These reads happen after a start, a crash or a lost ack, not on the hot path.
func (s *Sink) classifyCluster(ctx context.Context, records []ingest.Record) ([]ingest.Presence, error) {
	if err := s.settle(ctx); err != nil {
		return nil, err
	}
	out := make([]ingest.Presence, len(records))
	for sh := range s.cluster.c.Shards {
		r := s.cluster.reader(sh)
		presence, err := classifyOn(ctx, r.Conn, "usage_events"+migrations.LocalSuffix, "lifecycle_events"+migrations.LocalSuffix, records)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Name(), err)
		}
		for i, p := range presence {
			// A conflict anywhere wins; otherwise stored anywhere means stored.
			if p == ingest.Conflict || (p == ingest.AlreadyStored && out[i] == ingest.NotStored) {
				out[i] = p
			}
		}
	}
	return out, nil
}

// headCluster reads where a project's chain ends, the highest chain_seq on any shard (a
// project's rows are on one shard until a shard is added); prepare settled storage first.
func (s *Sink) headCluster(ctx context.Context, project string) (auditchain.Head, error) {
	h := auditchain.GenesisHead
	for sh := range s.cluster.c.Shards {
		r := s.cluster.reader(sh)
		var got auditchain.Head
		err := r.Conn.QueryRow(ctx, "SELECT chain_seq, chain_hash FROM lifecycle_events"+migrations.LocalSuffix+" WHERE project = ? ORDER BY chain_seq DESC LIMIT 1", project).Scan(&got.Seq, &got.Hash)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return auditchain.Head{}, fmt.Errorf("read audit chain head of %s on %s: %w", project, r.Name(), err)
		case got.Seq > h.Seq:
			h = got
		}
	}
	s.heads[project] = h
	return h, nil
}
