package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/retry"
)

// Record is one valid event with where it came from in the stream.
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

// Sink stores a batch. Write must be all-or-error for each kind of event it holds, and may
// be called again with the same records after an error.
type Sink interface {
	Write(ctx context.Context, records []Record) error
}

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
	// 100k, about 10 MB); 0 keeps the default, negative disables.
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

// batch is what one flush stores and acknowledges.
type batch struct {
	records []Record
	// held are every message taken into this batch (stored or dead-lettered), whose leases
	// are extended while a write is retried; last is the newest, acked on flush.
	held    []jetstream.Msg
	last    jetstream.Msg
	started time.Time
	// deadLetters are the dead letters of this batch that the dead-letter stream refused;
	// the flush keeps them in the DeadLetterStore before it acknowledges the batch.
	deadLetters []*DeadLetter
	// flushed is closed once the writer is done with the batch (stored and acked, or given up
	// on at shutdown).
	flushed chan struct{}
}

func newBatch() *batch { return &batch{flushed: make(chan struct{})} }

func (b *batch) empty() bool { return b.last == nil }

// New validates the configuration and binds to the durable consumer, which must exist
// (broker.EnsureStreams creates it).
func New(ctx context.Context, cfg Config) (*Ingester, error) {
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 10_000
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 500 * time.Millisecond
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
		cfg:       cfg,
		consumer:  consumer,
		log:       cfg.Logger.With("component", "ingester"),
		metrics:   cfg.Metrics,
		deduper:   deduper,
		dlStore:   cfg.DeadLetters,
		retryAsIs: retrier != nil && retrier.DeduplicatesRetries(),
		recent:    newRecentIDs(cfg.RecentIDs),
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
			continue
		}
		// Shutting down (the reader's last, partial batch, or a flush cut short): finish
		// with the shutdown deadline.
		sctx, cancel := context.WithTimeout(context.Background(), in.cfg.ShutdownTimeout)
		if !in.flush(sctx, b) {
			failed = fmt.Errorf("ingest: shutdown flush of %d events did not complete; JetStream will redeliver them", len(b.records))
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
	cur := newBatch()
	var handed *batch // the newest batch handed to the writer
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
				if !in.handOver(ctx, out, cur) {
					return
				}
				handed, cur = cur, newBatch()
			}
			if handed != nil {
				select {
				case <-handed.flushed:
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
		if cur.empty() || (len(cur.records) < in.cfg.BatchSize && time.Since(cur.started) < in.cfg.FlushInterval) {
			continue
		}
		if !in.handOver(ctx, out, cur) {
			break
		}
		handed, cur = cur, newBatch()
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
			extendLeases(b.held)
		case <-ctx.Done():
			return false
		}
	}
}

// fetchOnce pulls up to one fetch worth of messages into b, waiting at most until b is due
// for a flush.
func (in *Ingester) fetchOnce(ctx context.Context, b *batch) error {
	want := min(in.cfg.FetchSize, in.cfg.BatchSize-len(b.records))
	if want <= 0 {
		return nil
	}
	wait := in.cfg.FlushInterval
	if !b.empty() {
		wait = time.Until(b.started.Add(in.cfg.FlushInterval))
	}
	// The pull request expires within the flush interval, so shutdown is never held up by it.
	fetched, err := in.consumer.Fetch(want, jetstream.FetchMaxWait(max(wait, 10*time.Millisecond)))
	if err != nil {
		return err
	}
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
	}
	b.last = msg
	b.held = append(b.held, msg)
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
	ev, err := in.cfg.Streams.Subjects.Decode(subject, msg.Headers().Get(event.ContentTypeHeader), msg.Data(), in.cfg.Now())
	if err != nil {
		var inv *event.Invalid
		if !errors.As(err, &inv) {
			inv = &event.Invalid{Reason: event.ReasonUndecodable, Detail: err.Error()}
		}
		in.deadLetter(ctx, b, msg, inv, meta)
		return true
	}
	kind := ev.Kind.String()
	in.metrics.received.WithLabelValues(kind).Inc()
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
	b.records = append(b.records, r)
	return true
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

// dropStored removes the records marked MaybeStored that storage already holds, and
// dead-letters the ones whose id is stored with different content. It returns false when ctx
// ended.
func (in *Ingester) dropStored(ctx context.Context, b *batch) bool {
	var maybe []Record
	for _, r := range b.records {
		if r.MaybeStored {
			maybe = append(maybe, r)
		}
	}
	if len(maybe) == 0 || in.deduper == nil {
		return true
	}
	var presence []Presence
	err := retry.Do(ctx, in.retryPolicy(), func(int) error {
		var err error
		presence, err = in.deduper.Classify(ctx, maybe)
		return err
	}, func(_ int, err error, _ time.Duration) {
		in.log.Warn("checking events against storage failed; retrying", "events", len(maybe), "error", err)
	})
	if err != nil {
		return false // only ctx ends the retries
	}
	drop := map[uint64]Presence{}
	for i, r := range maybe {
		if presence[i] != NotStored {
			drop[r.StreamSeq] = presence[i]
		} else {
			// The run of stored records after a take-over has ended (see takeOver).
			in.checkStored.Store(false)
		}
	}
	kept := b.records[:0]
	for _, r := range b.records {
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
	b.records = kept
	return true
}

// flush stores a batch and acknowledges it. It returns false only when ctx ended first.
//
//  0. Drop redelivered records that an earlier, unacknowledged flush already stored (see
//     dropStored): this is what makes a crash between write and ack not duplicate rows.
//  1. Write the records to the Sink, retrying with backoff until it succeeds. The reader
//     blocks at the hand-over meanwhile, so memory stays bounded. Before each retry the
//     records are checked against storage as in step 0: a write reported as failed may
//     have been committed. A sink whose storage drops identical retries is instead sent
//     the same records again (see RetryDeduplicator).
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
	if len(b.records) > 0 {
		err := retry.Do(ctx, in.retryPolicy(), func(attempt int) error {
			// A failed write may have stored the rows all the same: ClickHouse can commit an
			// insert and the connection break before its reply arrives. Writing them again
			// blindly would store them twice, so they are checked like redeliveries first,
			// unless the storage itself drops an identical retry (see RetryDeduplicator).
			if attempt > 1 && !in.retryAsIs {
				for i := range b.records {
					b.records[i].MaybeStored = true
				}
				if !in.dropStored(ctx, b) {
					return retry.Permanent(errStopped)
				}
				if len(b.records) == 0 {
					return nil
				}
			}
			start := time.Now()
			err := in.cfg.Sink.Write(ctx, b.records)
			in.metrics.insertDuration.Observe(time.Since(start).Seconds())
			if err != nil {
				in.metrics.insertErrors.Inc()
			}
			return err
		}, func(attempt int, err error, wait time.Duration) {
			in.log.Warn("storing batch failed; retrying", "events", len(b.records), "attempt", attempt, "backoff", wait, "error", err)
		})
		if err != nil {
			return false // only ctx ends the retries
		}
		if len(b.records) > 0 {
			in.metrics.batchSize.Observe(float64(len(b.records)))
		}
		for _, r := range b.records {
			in.metrics.inserted.WithLabelValues(r.Event.Kind.String()).Inc()
		}
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
		for _, m := range b.held {
			if err := m.Ack(); err != nil {
				in.log.Warn("ack failed; the message will be redelivered", "error", err)
			}
		}
		return
	}
	if err := b.last.Ack(); err != nil {
		in.log.Warn("ack failed; the batch will be redelivered", "error", err)
	}
}

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
				extendLeases(b.held)
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

func extendLeases(held []jetstream.Msg) {
	for _, m := range held {
		_ = m.InProgress()
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
