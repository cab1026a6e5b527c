package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/retry"
)

// Record is one valid event with where it came from in the stream. Lifecycle events travel
// as records; usage events as rows of UsageRows, and as records only when storage is asked
// about them (see Deduper).
type Record struct {
	Event     event.Event
	StreamSeq uint64
	// MaybeStored is true when storage may hold this event already and must be asked before
	// it is written: JetStream delivered it before (an earlier flush may have stored it before
	// its ack was lost), a take-over's run of stored records has not ended yet (see takeOver),
	// or a write of it was reported as failed.
	MaybeStored bool
	// ContentHash fingerprints the event's content (after secret redaction).
	ContentHash uint64

	msg jetstream.Msg // for dead-lettering a conflict found at flush time
}

// Rows are what one Sink.Write stores, each kind in stream order: lifecycle events as whole
// records (the audit chain hashes every field), usage events in columns.
type Rows struct {
	Lifecycle []Record
	Usage     *UsageRows
}

// Len is the number of events.
func (r *Rows) Len() int { return len(r.Lifecycle) + r.Usage.Len() }

// Sink stores a batch. Write must be all-or-error for each kind of event it holds, and may
// be called again with the same rows after an error.
type Sink interface {
	Write(ctx context.Context, rows *Rows) error
}

// Defaults of Config, chosen from `make bench` (docs/benchmarks.md, blocks phase):
// ClickHouse's CPU per row falls with the insert block, about 3x from 10k-row blocks to
// 100k, little past that; and the latency target (queryable within 2 s) leaves a flush
// interval of about a second. A batch flushes at whichever comes first, so a busy ingester
// writes 100k-row blocks and a quiet one is never more than a second behind.
const (
	DefaultBatchSize     = 100_000
	DefaultFlushInterval = time.Second
)

// Config configures an Ingester.
type Config struct {
	JetStream jetstream.JetStream
	Streams   broker.StreamConfig
	Sink      Sink
	// BatchSize is the most events one flush writes.
	BatchSize int
	// FlushInterval is the longest an event waits in the buffer before a flush.
	FlushInterval time.Duration
	// FetchSize is the most messages one pull request asks for.
	FetchSize int
	// MaxBackoff caps the wait between retries of a failed write or dead-letter publish.
	MaxBackoff time.Duration
	// DeadLetters keeps the dead letters the dead-letter stream refuses; default: the Sink,
	// which must then implement DeadLetterStore.
	DeadLetters DeadLetterStore
	// DeadLetterAttempts bounds the publishes of one dead letter to the dead-letter stream
	// when they fail in a way that may pass (timeouts); a refusal by the server is final at
	// once. Then the dead letter goes to DeadLetters. Default 3.
	DeadLetterAttempts int
	// StallTimeout is how long the consumer may have a backlog without the ingester making
	// progress before Stalled reports it (default 2m).
	StallTimeout time.Duration
	// ShutdownTimeout bounds the final flush when Run's context ends (default 15s).
	ShutdownTimeout time.Duration
	// RecentIDs is how many recent event ids are remembered to catch a reused id (default
	// 100k, about 3 MB); 0 keeps the default, negative disables.
	RecentIDs int
	Metrics   *Metrics
	Logger    *slog.Logger
	// Now is the clock event times are validated against; time.Now when nil.
	Now func() time.Time
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.JetStream == nil {
		errs = append(errs, errors.New("ingest: jetstream is required"))
	}
	if c.Sink == nil {
		errs = append(errs, errors.New("ingest: sink is required"))
	} else if _, ok := c.Sink.(DeadLetterStore); !ok && c.DeadLetters == nil {
		errs = append(errs, errors.New("ingest: a dead-letter store is required (the sink does not implement DeadLetterStore): dead letters the dead-letter stream refuses must be kept somewhere"))
	}
	if err := c.Streams.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.BatchSize < 0 || c.FetchSize < 0 || c.FlushInterval < 0 || c.MaxBackoff < 0 || c.DeadLetterAttempts < 0 || c.StallTimeout < 0 {
		errs = append(errs, errors.New("ingest: sizes and durations must not be negative"))
	}
	if c.BatchSize > 0 && c.Streams.MaxAckPending > 0 {
		if err := CheckAckPending(c.BatchSize, c.Streams.MaxAckPending); err != nil {
			errs = append(errs, fmt.Errorf("ingest: %w", err))
		}
	}
	return errors.Join(errs...)
}

// CheckAckPending is the rule tying the batch size to the consumer's max ack pending: the
// ingester holds up to two batches unacknowledged (one being written, the next being read,
// see Run), so the consumer must let it hold both, or reading stalls behind every write.
func CheckAckPending(batchSize, maxAckPending int) error {
	if maxAckPending < 2*batchSize {
		return fmt.Errorf("max ack pending %d must be at least twice the batch size %d (the ingester holds up to two batches)", maxAckPending, batchSize)
	}
	return nil
}

// Ingester consumes the events stream into a Sink. Create it with New and run it with Run.
type Ingester struct {
	cfg      Config
	consumer jetstream.Consumer
	log      *slog.Logger
	metrics  *Metrics
	deduper  Deduper
	dlStore  DeadLetterStore
	// retryAsIs: the sink's storage drops an identical retry (see RetryDeduplicator).
	retryAsIs bool
	recent    *recentIDs // used by the reading goroutine only
	// spare holds flushed batches for reuse (see newBatch).
	spare chan *batch
	// counters resolved once: the per-event path does not look metrics up by label.
	receivedUsage, receivedLifecycle prometheus.Counter
	// Used by the reading goroutine only: the decoded fields of the usage event being taken,
	// and the clock of the current fetch.
	fields decode.UsageFields
	now    time.Time

	// Delivery tracking of the AckAll consumer, used by the reading goroutine only (see
	// takeOver): whether the consumer must be taken over before the next fetch, and the
	// consumer sequence the next delivery must carry.
	needTakeOver bool
	nextDelivery uint64
	// checkStored is set by a take-over and cleared by the writer once storage is found not
	// to hold a taken record: until then every record is checked against storage (see
	// takeOver for why that is exact).
	checkStored atomic.Bool

	// Progress, for Stalled: when the ingester last acknowledged a batch or found nothing
	// to do (unix nanoseconds), and the stall it reports (nil when none).
	lastProgress atomic.Int64
	stall        atomic.Pointer[error]
}

// errDeliveryGap reports deliveries this reader never received (see takeOver).
var errDeliveryGap = errors.New("ingest: the consumer delivered messages this ingester never received")

// maybeRow is a usage row, by index, that storage may hold already (see Record.MaybeStored).
// onlyRun: only because a take-over's run of stored records had not ended when it was taken
// (see takeOver); such a row need not be asked about once the run is found to have ended
// before it.
type maybeRow struct {
	row     int
	onlyRun bool
}

// batch is what one flush stores and acknowledges. It holds the events it will store, not
// the messages they came in: a message is let go of as soon as it is taken, so a batch of
// 100k events takes about 30 MB.
type batch struct {
	rows Rows
	// maybeUsage are the usage rows that storage may hold already (see Record.MaybeStored),
	// in the order taken.
	maybeUsage []maybeRow
	// replies are the reply subjects of every message taken into this batch (stored,
	// duplicate or dead-lettered): their leases are extended while a write is retried, and a
	// shared consumer acks each. last is the newest message, acked on flush.
	replies textColumn
	last    jetstream.Msg
	started time.Time
	// deadLetters are the dead letters of this batch that the dead-letter stream refused;
	// the flush keeps them in the DeadLetterStore before it acknowledges the batch.
	deadLetters []*DeadLetter
	// leased is when the leases of the batch's messages were last extended (or it started).
	leased time.Time
	// flushed is closed once the writer is done with the batch (stored and acked, or given up
	// on at shutdown).
	flushed chan struct{}
}

func (b *batch) empty() bool { return b.last == nil }

// newBatch is an empty batch, with the buffers of a flushed one when there is one: the
// buffers grow to a batch's size once and are reused from then on.
func (in *Ingester) newBatch() *batch {
	select {
	case b := <-in.spare:
		return b
	default:
		b := &batch{rows: Rows{Usage: &UsageRows{}}, flushed: make(chan struct{})}
		b.rows.Usage.Grow(in.cfg.BatchSize)
		b.replies.end = make([]uint32, 0, in.cfg.BatchSize)
		return b
	}
}

// recycle empties a flushed batch and keeps it for newBatch.
func (in *Ingester) recycle(b *batch) {
	b.rows.Lifecycle, b.deadLetters = nil, nil
	b.rows.Usage.Reset()
	b.maybeUsage = b.maybeUsage[:0]
	b.replies.reset()
	b.last, b.started, b.leased, b.flushed = nil, time.Time{}, time.Time{}, make(chan struct{})
	select {
	case in.spare <- b:
	default:
	}
}

// New validates the configuration and binds to the durable consumer, which must exist
// (broker.EnsureStreams creates it).
func New(ctx context.Context, cfg Config) (*Ingester, error) {
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.FetchSize == 0 {
		cfg.FetchSize = min(cfg.BatchSize, 2_000)
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.DeadLetterAttempts == 0 {
		cfg.DeadLetterAttempts = 3
	}
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = 2 * time.Minute
	}
	if cfg.DeadLetters == nil {
		cfg.DeadLetters, _ = cfg.Sink.(DeadLetterStore)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	switch {
	case cfg.RecentIDs == 0:
		cfg.RecentIDs = 100_000
	case cfg.RecentIDs < 0:
		cfg.RecentIDs = 0
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	consumer, err := cfg.JetStream.Consumer(ctx, cfg.Streams.EventsStream, cfg.Streams.IngestDurable())
	if err != nil {
		return nil, fmt.Errorf("ingest: bind consumer %s on %s: %w", cfg.Streams.IngestDurable(), cfg.Streams.EventsStream, err)
	}
	deduper, _ := cfg.Sink.(Deduper)
	retrier, _ := cfg.Sink.(RetryDeduplicator)
	in := &Ingester{
		cfg:               cfg,
		consumer:          consumer,
		log:               cfg.Logger.With("component", "ingester"),
		metrics:           cfg.Metrics,
		deduper:           deduper,
		dlStore:           cfg.DeadLetters,
		retryAsIs:         retrier != nil && retrier.DeduplicatesRetries(),
		recent:            newRecentIDs(cfg.RecentIDs),
		spare:             make(chan *batch, 2),
		receivedUsage:     cfg.Metrics.received.WithLabelValues(event.KindUsage.String()),
		receivedLifecycle: cfg.Metrics.received.WithLabelValues(event.KindLifecycle.String()),
		// A shared durable acks message by message: nothing to take over.
		needTakeOver: !cfg.Streams.SharedConsumer,
	}
	in.progressed()
	return in, nil
}

// Run consumes until ctx is cancelled, then flushes what it holds (bounded by
// ShutdownTimeout) and returns. Messages it could not flush are redelivered later.
//
// Reading and writing overlap: one goroutine fetches, decodes and validates the next batch
// while this one writes the previous batch to the Sink and acks it. The hand-over channel is
// unbuffered, so at most two batches are in memory; while a write is being retried the
// reader stops at the hand-over and fetches nothing more.
func (in *Ingester) Run(ctx context.Context) error {
	go in.watchLag(ctx)
	batches := make(chan *batch)
	go in.read(ctx, batches)
	var failed error
	for b := range batches {
		if ctx.Err() == nil && in.flush(ctx, b) {
			close(b.flushed)
			in.recycle(b)
			continue
		}
		// Shutting down (the reader's last, partial batch, or a flush cut short): finish
		// with the shutdown deadline.
		sctx, cancel := context.WithTimeout(context.Background(), in.cfg.ShutdownTimeout)
		if !in.flush(sctx, b) {
			failed = fmt.Errorf("ingest: shutdown flush of %d events did not complete; JetStream will redeliver them", b.rows.Len())
		}
		cancel()
		close(b.flushed)
	}
	if failed == nil {
		in.log.Info("ingester stopped; everything taken was flushed")
	}
	return failed
}

// read fetches and routes messages into batches and hands each over when it is full or old
// enough; on shutdown it hands over its partial batch and closes the channel.
func (in *Ingester) read(ctx context.Context, out chan<- *batch) {
	defer close(out)
	cur := in.newBatch()
	// handed is closed when the newest batch handed to the writer is flushed. (The batch
	// itself is the writer's once handed: it recycles it.)
	var handed chan struct{}
	for ctx.Err() == nil {
		if in.needTakeOver {
			if err := in.takeOver(ctx); err != nil {
				if ctx.Err() == nil {
					in.log.Warn("taking over the consumer failed; retrying", "error", err)
					sleep(ctx, time.Second)
				}
				continue
			}
			in.needTakeOver = false
		}
		err := in.fetchOnce(ctx, cur)
		switch {
		case errors.Is(err, errDeliveryGap):
			// Hand over what came before the gap and wait until it is stored and acked;
			// then take over the missed deliveries (and the rest of this fetch, dropped).
			if !cur.empty() {
				flushed := cur.flushed
				if !in.handOver(ctx, out, cur) {
					return
				}
				handed, cur = flushed, in.newBatch()
			}
			if handed != nil {
				select {
				case <-handed:
				case <-ctx.Done():
					return
				}
			}
			in.needTakeOver = true
			continue
		case err != nil && ctx.Err() == nil:
			in.log.Warn("fetch failed; retrying", "error", err)
			sleep(ctx, time.Second)
		}
		full := cur.rows.Len() >= in.cfg.BatchSize
		if cur.empty() || (!full && time.Since(cur.started) < in.cfg.FlushInterval) {
			continue
		}
		flushed := cur.flushed
		if !full {
			// Due by age: handed over if the writer is free. While it is busy the batch keeps
			// filling, so a backlog is written in full batches (which cost ClickHouse least),
			// its leases kept as in handOver.
			select {
			case out <- cur:
				handed, cur = flushed, in.newBatch()
			default:
				if time.Since(cur.leased) > in.cfg.Streams.AckWait/3 {
					in.extendLeases(cur)
					cur.leased = time.Now()
				}
			}
			continue
		}
		if !in.handOver(ctx, out, cur) {
			break
		}
		handed, cur = flushed, in.newBatch()
	}
	if !cur.empty() {
		out <- cur // the writer flushes it with its shutdown deadline
	}
}

// handOver waits for the writer to take a batch, extending the batch's leases while it
// waits (a slow or failing write upstream must not make JetStream redeliver these).
func (in *Ingester) handOver(ctx context.Context, out chan<- *batch, b *batch) bool {
	t := time.NewTicker(max(in.cfg.Streams.AckWait/3, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case out <- b:
			return true
		case <-t.C:
			in.extendLeases(b)
		case <-ctx.Done():
			return false
		}
	}
}

// fetchOnce pulls up to one fetch worth of messages into b, waiting at most until b is due
// for a flush.
func (in *Ingester) fetchOnce(ctx context.Context, b *batch) error {
	want := min(in.cfg.FetchSize, in.cfg.BatchSize-b.rows.Len())
	if want <= 0 {
		return nil
	}
	wait := in.cfg.FlushInterval
	if !b.empty() {
		wait = time.Until(b.started.Add(in.cfg.FlushInterval))
	}
	// The pull request expires within the flush interval, so shutdown is never held up by it;
	// a batch that is due and waits for a busy writer polls the hand-over every 25 ms.
	fetched, err := in.consumer.Fetch(want, jetstream.FetchMaxWait(max(wait, 25*time.Millisecond)))
	if err != nil {
		return err
	}
	// One clock reading per fetch: event times are checked against it (to within an hour).
	in.now = in.cfg.Now()
	gap := false
	for msg := range fetched.Messages() {
		// After a gap the rest of the fetch is left unacknowledged: the take-over has it
		// redelivered.
		gap = gap || !in.take(ctx, b, msg)
	}
	if gap {
		return errDeliveryGap
	}
	if err := fetched.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
		return err
	}
	return nil
}

// take routes one message into b or the dead-letter subject. It returns false, leaving b
// unchanged, when the message is not the delivery that had to come next: an AckAll ack past
// it would acknowledge the missed deliveries unstored.
func (in *Ingester) take(ctx context.Context, b *batch, msg jetstream.Msg) bool {
	meta, err := msg.Metadata()
	if err == nil && in.nextDelivery != 0 {
		if meta.Sequence.Consumer != in.nextDelivery {
			in.log.Warn("missed deliveries of the consumer; taking it over", "want_delivery", in.nextDelivery, "got_delivery", meta.Sequence.Consumer, "stream_seq", meta.Sequence.Stream)
			return false
		}
		in.nextDelivery++
	}
	if b.empty() {
		b.started = time.Now()
		b.leased = b.started
	}
	b.last = msg
	b.replies.append(msg.Reply())
	if err != nil {
		// Only a message without a JetStream reply subject lacks metadata; a pull consumer
		// never hands one out, but dead-letter it rather than guess.
		in.deadLetter(ctx, b, msg, &event.Invalid{Reason: event.ReasonUndecodable, Detail: "no jetstream metadata: " + err.Error()}, nil)
		return true
	}
	subject, err := in.cfg.Streams.PublishedSubject(msg.Subject())
	if err != nil {
		in.deadLetter(ctx, b, msg, &event.Invalid{Reason: event.ReasonBadSubject, Detail: err.Error()}, meta)
		return true
	}
	if kind, _, err := in.cfg.Streams.Subjects.Parse(subject); err == nil && kind == event.KindUsage {
		in.takeUsage(ctx, b, msg, subject, meta)
		return true
	}
	ev, err := decode.Event(in.cfg.Streams.Subjects, subject, msg.Headers().Get(event.ContentTypeHeader), msg.Data(), in.now)
	if err != nil {
		in.deadLetter(ctx, b, msg, asInvalid(err), meta)
		return true
	}
	kind := ev.Kind.String()
	in.receivedLifecycle.Inc()
	if n := redact(ev); n > 0 {
		// The values themselves are never logged: that is the point.
		in.metrics.secretsRedacted.WithLabelValues(kind).Add(float64(n))
		in.log.Warn("replaced secret-shaped values with fingerprints", "kind", kind, "fields", n, "stream_seq", meta.Sequence.Stream)
	}
	r := Record{
		Event: ev, StreamSeq: meta.Sequence.Stream, ContentHash: contentHash(ev), msg: msg,
		// A replayed dead letter may have been replayed (and stored) before.
		MaybeStored: meta.NumDelivered > 1 || in.checkStored.Load() || msg.Headers().Get(HeaderReplayOf) != "",
	}
	switch in.recent.check(ev.ID(), r.ContentHash) {
	case AlreadyStored:
		in.metrics.duplicates.WithLabelValues(kind).Inc()
		return true
	case Conflict:
		in.deadLetter(ctx, b, msg, &event.Invalid{Reason: event.ReasonDuplicateEventID, Detail: "event_id was already taken with different content"}, meta)
		return true
	}
	b.rows.Lifecycle = append(b.rows.Lifecycle, r)
	return true
}

// takeUsage is take for a usage event, which goes straight into b's usage columns: decoded
// without a message in between when the payload is protobuf in canonical form (see
// decode.Usage), hashed without a second encoding, and let go of. The checks, the
// redaction and the hash are those of every other event.
func (in *Ingester) takeUsage(ctx context.Context, b *batch, msg jetstream.Msg, subject string, meta *jetstream.MsgMetadata) {
	f := &in.fields
	// f's text may be views into data until it is copied into the columns; clear it after,
	// so that the payload is not kept alive.
	defer func() { *f = decode.UsageFields{} }()
	data := msg.Data()
	decoded, err := decode.Usage(in.cfg.Streams.Subjects, subject, msg.Headers().Get(event.ContentTypeHeader), data, in.now, f)
	if err != nil {
		in.deadLetter(ctx, b, msg, asInvalid(err), meta)
		return
	}
	in.receivedUsage.Inc()
	var n int
	var hash uint64
	switch {
	case decoded != nil:
		// Not canonical protobuf (JSON, say): decoded as a message, redacted and hashed as
		// such, unknown fields and all.
		n = event.RedactUsage(decoded)
		*f = decode.FieldsOf(decoded)
		hash = contentHash(event.Event{Kind: event.KindUsage, Usage: decoded})
	default:
		if n = f.Redact(); n == 0 {
			// data is exactly the deterministic encoding of the fields: hashing it is
			// contentHash without encoding them again.
			hash = xxhash.Sum64(data)
		} else {
			hash = contentHash(event.Event{Kind: event.KindUsage, Usage: f.Event()})
		}
	}
	if n > 0 {
		// The values themselves are never logged: that is the point.
		in.metrics.secretsRedacted.WithLabelValues(event.KindUsage.String()).Add(float64(n))
		in.log.Warn("replaced secret-shaped values with fingerprints", "kind", event.KindUsage.String(), "fields", n, "stream_seq", meta.Sequence.Stream)
	}
	switch in.recent.check(f.EventID, hash) {
	case AlreadyStored:
		in.metrics.duplicates.WithLabelValues(event.KindUsage.String()).Inc()
		return
	case Conflict:
		in.deadLetter(ctx, b, msg, &event.Invalid{Reason: event.ReasonDuplicateEventID, Detail: "event_id was already taken with different content"}, meta)
		return
	}
	// A replayed dead letter may have been replayed (and stored) before.
	if mustAsk := meta.NumDelivered > 1 || msg.Headers().Get(HeaderReplayOf) != ""; mustAsk || in.checkStored.Load() {
		b.maybeUsage = append(b.maybeUsage, maybeRow{row: b.rows.Usage.Len(), onlyRun: !mustAsk})
	}
	b.rows.Usage.Append(f, hash, meta.Sequence.Stream)
}

// asInvalid is the dead-letter reason of a decoding error.
func asInvalid(err error) *event.Invalid {
	var inv *event.Invalid
	if !errors.As(err, &inv) {
		inv = &event.Invalid{Reason: event.ReasonUndecodable, Detail: err.Error()}
	}
	return inv
}

// takeOver runs before the first fetch and after missed deliveries, while this ingester holds
// nothing unacknowledged. Messages delivered and never acknowledged (to an ingester that was
// killed, or to a pull request of ours abandoned in a reconnect) would otherwise be redelivered
// only after AckWait, and long before that this ingester's first AckAll ack, for a later
// message, would acknowledge them unstored: lost. So the consumer is reset to its ack floor,
// which redelivers them now.
//
// Some of what comes next may be stored already: a flush that was never acknowledged, by
// this process or a dead one, or by one of a chain of dead ones, each of which reset the
// consumer's delivered sequence back to the ack floor, so the consumer's state does not tell
// how far they got. Storage does: each ingester writes in stream order without gaps from the
// ack floor it took over at, and the ack floor never passes what was stored, so above the
// ack floor storage holds an unbroken run of the stream (stored, or dead-lettered, or a
// duplicate of a stored event). Every record is therefore checked against storage until the
// first one it does not hold; after that none can be held (checkStored). That costs one
// lookup per batch of the run, usually just the first batch after a start.
//
// One ingester per AckAll durable is assumed (a second one's deliveries would look missed);
// several ingesters need the shared consumer, which never takes over.
func (in *Ingester) takeOver(ctx context.Context) error {
	info, err := in.consumer.Info(ctx)
	if err != nil {
		return fmt.Errorf("read consumer state: %w", err)
	}
	in.checkStored.Store(true)
	if info.NumAckPending == 0 {
		in.nextDelivery = info.Delivered.Consumer + 1
		return nil
	}
	reset, err := in.cfg.JetStream.ResetConsumer(ctx, in.cfg.Streams.EventsStream, in.cfg.Streams.IngestDurable())
	if err != nil {
		return fmt.Errorf("reset consumer to redeliver %d unacknowledged messages: %w", info.NumAckPending, err)
	}
	in.nextDelivery = reset.Delivered.Consumer + 1
	in.log.Warn("took over unacknowledged deliveries; they are redelivered and checked against storage",
		"messages", info.NumAckPending, "from_stream_seq", reset.ResetSeq, "through_stream_seq", info.Delivered.Stream)
	return nil
}

func redact(ev event.Event) int {
	if ev.Kind == event.KindLifecycle {
		return event.RedactLifecycle(ev.Lifecycle)
	}
	return event.RedactUsage(ev.Usage)
}

// dropStored removes the events marked MaybeStored that storage already holds, and
// dead-letters the ones whose id is stored with different content. It returns false when ctx
// ended.
func (in *Ingester) dropStored(ctx context.Context, b *batch) bool {
	if in.deduper == nil {
		b.maybeUsage = b.maybeUsage[:0]
		return true
	}
	var lifecycle []Record
	for _, r := range b.rows.Lifecycle {
		if r.MaybeStored {
			lifecycle = append(lifecycle, r)
		}
	}
	if len(lifecycle) == 0 && len(b.maybeUsage) == 0 {
		return true
	}
	// Storage is asked in chunks, each built as records only for its lookup: the lifecycle
	// records and the first usage rows, then the other usage rows in the order taken. A row
	// that is a candidate only because of a take-over's run is skipped when the run ended
	// before it: storage does not hold an earlier record of the stream, so by the run's
	// definition it cannot hold this one (see takeOver). Without that, every row of every
	// batch taken before the first lookup answered would be asked about after a start. (Such
	// rows are first deliveries, taken in stream order.)
	ended := !in.checkStored.Load()  // before this batch
	endSeq := uint64(math.MaxUint64) // the first stream sequence found not stored
	var lifecyclePresence []Presence
	asked := make([]maybeRow, 0, len(b.maybeUsage))
	usagePresence := make([]Presence, 0, len(b.maybeUsage))
	for i, first := 0, true; first || i < len(b.maybeUsage); first = false {
		records := lifecycle[:len(lifecycle):len(lifecycle)]
		if !first {
			records = nil
		}
		var chunk []maybeRow
		for ; i < len(b.maybeUsage) && len(records) < dedupeChunk; i++ {
			if m := b.maybeUsage[i]; !m.onlyRun || !(ended || b.rows.Usage.StreamSeq[m.row] > endSeq) {
				chunk = append(chunk, m)
				records = append(records, Record{
					Event:     event.Event{Kind: event.KindUsage, Usage: b.rows.Usage.Event(m.row)},
					StreamSeq: b.rows.Usage.StreamSeq[m.row], ContentHash: b.rows.Usage.ContentHash[m.row], MaybeStored: true,
				})
			}
		}
		if len(records) == 0 {
			break
		}
		presence, ok := in.classify(ctx, b, records)
		if !ok {
			return false
		}
		if first {
			lifecyclePresence, presence = presence[:len(lifecycle)], presence[len(lifecycle):]
			records = records[len(lifecycle):]
			for k, p := range lifecyclePresence {
				if p == NotStored {
					endSeq = min(endSeq, lifecycle[k].StreamSeq)
				}
			}
		}
		asked = append(asked, chunk...)
		usagePresence = append(usagePresence, presence...)
		for k, p := range presence {
			if p == NotStored {
				endSeq = min(endSeq, records[k].StreamSeq)
			}
		}
	}
	if endSeq != math.MaxUint64 {
		// The run of stored records after a take-over has ended (see takeOver).
		in.checkStored.Store(false)
	}

	drop := map[uint64]Presence{}
	for i, r := range lifecycle {
		if lifecyclePresence[i] != NotStored {
			drop[r.StreamSeq] = lifecyclePresence[i]
		}
	}
	kept := b.rows.Lifecycle[:0]
	for _, r := range b.rows.Lifecycle {
		switch drop[r.StreamSeq] {
		case AlreadyStored:
			in.metrics.duplicates.WithLabelValues(r.Event.Kind.String()).Inc()
		case Conflict:
			meta, _ := r.msg.Metadata()
			in.deadLetter(ctx, b, r.msg, &event.Invalid{Reason: event.ReasonDuplicateEventID, Detail: "event_id is already stored with different content"}, meta)
		default:
			kept = append(kept, r)
		}
	}
	b.rows.Lifecycle = kept

	var keep []bool
	for i, m := range asked {
		row := m.row
		if usagePresence[i] == NotStored {
			continue
		}
		if keep == nil {
			keep = make([]bool, b.rows.Usage.Len())
			for j := range keep {
				keep[j] = true
			}
		}
		keep[row] = false
		seq := b.rows.Usage.StreamSeq[row]
		if usagePresence[i] == AlreadyStored {
			in.metrics.duplicates.WithLabelValues(event.KindUsage.String()).Inc()
			continue
		}
		// A usage row keeps no message: the dead letter is made from the stream's copy,
		// which stays until the batch is acknowledged.
		msg, ok := in.storedMessage(ctx, b, seq)
		if !ok {
			return false
		}
		meta, _ := msg.Metadata()
		in.deadLetter(ctx, b, msg, &event.Invalid{Reason: event.ReasonDuplicateEventID, Detail: "event_id is already stored with different content"}, meta)
	}
	if keep != nil {
		b.rows.Usage.Keep(keep)
	}
	b.maybeUsage = b.maybeUsage[:0]
	return true
}

// dedupeChunk is how many usage rows one Classify call is asked about.
const dedupeChunk = 10_000

// classify asks the Deduper about records, retrying until it answers; false when ctx ended.
func (in *Ingester) classify(ctx context.Context, b *batch, records []Record) ([]Presence, bool) {
	if len(records) == 0 {
		return nil, true
	}
	var presence []Presence
	err := retry.Do(ctx, in.retryPolicy(), func(int) error {
		var err error
		presence, err = in.deduper.Classify(ctx, records)
		return err
	}, func(_ int, err error, _ time.Duration) {
		in.log.Warn("checking events against storage failed; retrying", "events", len(records), "error", err)
	})
	return presence, err == nil // only ctx ends the retries
}

// storedMessage reads the stream's copy of a message of b, retrying until it succeeds;
// false when ctx ended.
func (in *Ingester) storedMessage(ctx context.Context, b *batch, seq uint64) (jetstream.Msg, bool) {
	var msg *jetstream.RawStreamMsg
	err := retry.Do(ctx, in.retryPolicy(), func(int) error {
		stream, err := in.cfg.JetStream.Stream(ctx, in.cfg.Streams.EventsStream)
		if err == nil {
			msg, err = stream.GetMsg(ctx, seq)
		}
		return err
	}, func(_ int, err error, _ time.Duration) {
		in.log.Warn("reading a message from the stream failed; retrying", "stream_seq", seq, "error", err)
	})
	if err != nil {
		return nil, false
	}
	return storedMsg{msg}, true
}

// storedMsg is a message read back from the stream, for dead-lettering: it has the subject,
// headers and payload of the delivery, and cannot be acknowledged.
type storedMsg struct{ raw *jetstream.RawStreamMsg }

var errNotDelivered = errors.New("ingest: a message read from the stream is not a delivery")

func (m storedMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.raw.Sequence}, Timestamp: m.raw.Time}, nil
}
func (m storedMsg) Data() []byte                     { return m.raw.Data }
func (m storedMsg) Headers() nats.Header             { return m.raw.Header }
func (m storedMsg) Subject() string                  { return m.raw.Subject }
func (m storedMsg) Reply() string                    { return "" }
func (m storedMsg) Ack() error                       { return errNotDelivered }
func (m storedMsg) DoubleAck(context.Context) error  { return errNotDelivered }
func (m storedMsg) Nak() error                       { return errNotDelivered }
func (m storedMsg) NakWithDelay(time.Duration) error { return errNotDelivered }
func (m storedMsg) InProgress() error                { return errNotDelivered }
func (m storedMsg) Term() error                      { return errNotDelivered }
func (m storedMsg) TermWithReason(string) error      { return errNotDelivered }

// flush stores a batch and acknowledges it. It returns false only when ctx ended first.
//
//  0. Drop redelivered events that an earlier, unacknowledged flush already stored (see
//     dropStored): this is what makes a crash between write and ack not duplicate rows.
//  1. Write the rows to the Sink, retrying with backoff until it succeeds. The reader
//     blocks at the hand-over meanwhile, so memory stays bounded. Before each retry the
//     rows are checked against storage as in step 0: a write reported as failed may
//     have been committed. A sink whose storage drops identical retries is instead sent
//     the same rows again (see RetryDeduplicator).
//  2. Keep the dead letters the dead-letter stream refused in the DeadLetterStore, retrying
//     like step 1: a rejected message is acknowledged only once it is kept somewhere.
//  3. Ack the newest message taken. With AckAll this acknowledges every message up to it:
//     the stored ones and the dead-lettered ones (republished before this point, or kept
//     in step 2). If the ack is lost, JetStream redelivers the batch and the Sink sees it
//     again with MaybeStored set; nothing is lost.
//
// Until the ack, the held messages' leases are extended every third of AckWait, however long
// a step takes (a check waiting for a predecessor's insert, one slow insert, the retries of
// a failing one): JetStream must not redeliver messages the flush still holds.
func (in *Ingester) flush(ctx context.Context, b *batch) bool {
	stopLeases := in.keepLeases(b)
	defer stopLeases()
	if !in.dropStored(ctx, b) {
		return false
	}
	if b.rows.Len() > 0 {
		err := retry.Do(ctx, in.retryPolicy(), func(attempt int) error {
			// A failed write may have stored the rows all the same: ClickHouse can commit an
			// insert and the connection break before its reply arrives. Writing them again
			// blindly would store them twice, so they are checked like redeliveries first,
			// unless the storage itself drops an identical retry (see RetryDeduplicator).
			if attempt > 1 && !in.retryAsIs {
				for i := range b.rows.Lifecycle {
					b.rows.Lifecycle[i].MaybeStored = true
				}
				b.maybeUsage = b.maybeUsage[:0]
				for row := range b.rows.Usage.Len() {
					b.maybeUsage = append(b.maybeUsage, maybeRow{row: row})
				}
				if !in.dropStored(ctx, b) {
					return retry.Permanent(errStopped)
				}
				if b.rows.Len() == 0 {
					return nil
				}
			}
			start := time.Now()
			err := in.cfg.Sink.Write(ctx, &b.rows)
			in.metrics.insertDuration.Observe(time.Since(start).Seconds())
			if err != nil {
				in.metrics.insertErrors.Inc()
			}
			return err
		}, func(attempt int, err error, wait time.Duration) {
			in.log.Warn("storing batch failed; retrying", "events", b.rows.Len(), "attempt", attempt, "backoff", wait, "error", err)
		})
		if err != nil {
			return false // only ctx ends the retries
		}
		if n := b.rows.Len(); n > 0 {
			in.metrics.batchSize.Observe(float64(n))
		}
		in.metrics.inserted.WithLabelValues(event.KindLifecycle.String()).Add(float64(len(b.rows.Lifecycle)))
		in.metrics.inserted.WithLabelValues(event.KindUsage.String()).Add(float64(b.rows.Usage.Len()))
	}
	if !in.keepDeadLetters(ctx, b) {
		return false
	}
	stopLeases()
	in.ack(b)
	return true
}

// keepDeadLetters writes the batch's refused dead letters to the DeadLetterStore, retrying
// until it succeeds; it returns false when ctx ended first.
func (in *Ingester) keepDeadLetters(ctx context.Context, b *batch) bool {
	if len(b.deadLetters) == 0 {
		return true
	}
	err := retry.Do(ctx, in.retryPolicy(), func(int) error {
		return in.dlStore.WriteDeadLetters(ctx, b.deadLetters)
	}, func(attempt int, err error, wait time.Duration) {
		in.log.Warn("keeping dead letters in ClickHouse failed; retrying", "dead_letters", len(b.deadLetters), "attempt", attempt, "backoff", wait, "error", err)
	})
	if err != nil {
		return false // only ctx ends the retries
	}
	for _, d := range b.deadLetters {
		in.deadLettered(d)
	}
	b.deadLetters = nil
	return true
}

// ack acknowledges everything taken since the last flush: one AckAll ack for the newest
// message, or one ack per message on a shared (AckExplicit) consumer. The rows are stored
// by now; a lost ack only means redelivery, which dropStored absorbs.
func (in *Ingester) ack(b *batch) {
	defer in.progressed()
	if in.cfg.Streams.SharedConsumer {
		nc := in.cfg.JetStream.Conn()
		for i := range b.replies.end {
			// What jetstream.Msg.Ack sends.
			if err := nc.Publish(b.replies.at(i), ackAck); err != nil {
				in.log.Warn("ack failed; the message will be redelivered", "error", err)
			}
		}
		return
	}
	if err := b.last.Ack(); err != nil {
		in.log.Warn("ack failed; the batch will be redelivered", "error", err)
	}
}

// Acknowledgement bodies of the JetStream protocol (jetstream.Msg sends the same).
var (
	ackAck      = []byte("+ACK")
	ackProgress = []byte("+WPI")
)

// retryPolicy is how a failed storage check or write is retried: until it succeeds or ctx
// ends, the wait doubling from 100ms up to MaxBackoff.
func (in *Ingester) retryPolicy() retry.Policy {
	return retry.Policy{First: 100 * time.Millisecond, Max: in.cfg.MaxBackoff}
}

// errStopped ends a write's retries when its context ended during the storage check.
var errStopped = errors.New("ingest: stopped")

// keepLeases extends the batch's leases every third of AckWait until the returned stop is
// called (once or more), so JetStream does not redeliver messages a flush still holds.
func (in *Ingester) keepLeases(b *batch) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(max(in.cfg.Streams.AckWait/3, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-t.C:
				in.extendLeases(b)
			case <-done:
				return
			}
		}
	}()
	return sync.OnceFunc(func() { close(done) })
}

// progressed records that the ingester moved on: a batch acknowledged, or nothing to do.
func (in *Ingester) progressed() {
	now := time.Now()
	in.lastProgress.Store(now.UnixNano())
	in.metrics.lastProgress.Set(float64(now.UnixNano()) / 1e9)
}

// Stalled reports an ingester that has had a backlog (messages pending or awaiting its ack)
// for longer than StallTimeout without acknowledging anything; nil otherwise. A stall means
// events are not reaching storage: ClickHouse refusing writes, or a message the ingester
// cannot get past. The readiness probe (/readyz) reports it.
func (in *Ingester) Stalled() error {
	if err := in.stall.Load(); err != nil {
		return *err
	}
	return nil
}

// checkStall updates the stall state from the consumer's backlog.
func (in *Ingester) checkStall(backlog uint64, ackFloor uint64, lastAckFloor *uint64) {
	if backlog == 0 || ackFloor != *lastAckFloor {
		// Idle, or the ack floor moved (this ingester or, on a shared durable, another).
		in.progressed()
	}
	*lastAckFloor = ackFloor
	since := time.Since(time.Unix(0, in.lastProgress.Load()))
	if backlog > 0 && since > in.cfg.StallTimeout {
		if in.stall.Load() == nil {
			in.log.Error("ingestion stalled: the consumer has a backlog and nothing was acknowledged", "backlog", backlog, "for", since.Round(time.Second), "stall_timeout", in.cfg.StallTimeout)
		}
		err := fmt.Errorf("ingester stalled: %d messages waiting and nothing acknowledged for %s (stall timeout %s)", backlog, since.Round(time.Second), in.cfg.StallTimeout)
		in.stall.Store(&err)
		in.metrics.stalled.Set(1)
		return
	}
	if in.stall.Swap(nil) != nil {
		in.log.Info("ingestion resumed")
	}
	in.metrics.stalled.Set(0)
}

// extendLeases tells JetStream that every message of b is still being worked on (what
// jetstream.Msg.InProgress sends), so it does not redeliver them.
func (in *Ingester) extendLeases(b *batch) {
	nc := in.cfg.JetStream.Conn()
	for i := range b.replies.end {
		_ = nc.Publish(b.replies.at(i), ackProgress)
	}
}

// watchLag reads the consumer's backlog for the lag metrics and the stall check.
func (in *Ingester) watchLag(ctx context.Context) {
	t := time.NewTicker(min(2*time.Second, max(in.cfg.StallTimeout/4, 50*time.Millisecond)))
	defer t.Stop()
	var ackFloor uint64
	for {
		info, err := in.consumer.Info(ctx)
		if err == nil {
			in.metrics.pending.Set(float64(info.NumPending))
			in.metrics.ackPending.Set(float64(info.NumAckPending))
			in.checkStall(info.NumPending+uint64(info.NumAckPending), info.AckFloor.Stream, &ackFloor)
		} else if since := time.Since(time.Unix(0, in.lastProgress.Load())); ctx.Err() == nil && since > in.cfg.StallTimeout {
			// Without the consumer's state the ingester cannot fetch either.
			err := fmt.Errorf("ingester stalled: cannot read the consumer's state (%v) and nothing acknowledged for %s", err, since.Round(time.Second))
			in.stall.Store(&err)
			in.metrics.stalled.Set(1)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sleep waits d or until ctx ends; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
