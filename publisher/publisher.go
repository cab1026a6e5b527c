package publisher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

var (
	// ErrClosed is returned by a publish after Close has been called.
	ErrClosed = errors.New("publisher: closed")
	// ErrInvalidEvent wraps the reason an event cannot be published at all.
	ErrInvalidEvent = errors.New("publisher: invalid event")
)

const (
	defaultMaxInFlight  = 4096
	defaultMaxRetries   = 8
	defaultRetryBackoff = 50 * time.Millisecond
	defaultAckTimeout   = 5 * time.Second
	// maxRetryBackoff caps the doubling so a long outage is probed every couple of seconds
	// rather than once a minute, while MaxRetries still bounds the total span.
	maxRetryBackoff = 2 * time.Second
)

// Config configures a Publisher. Zero values take the documented defaults.
type Config struct {
	// JetStream provides the NATS connection; required. The publisher builds its own
	// JetStream context on that connection so its ack timeout, handlers and in-flight count
	// are its own and never mix with the caller's async publishes.
	JetStream jetstream.JetStream
	// Subjects names the subjects events go to; Prefix is required.
	Subjects event.Subjects
	// Encoding of the payload; default protobuf.
	Encoding event.Encoding
	// MaxInFlight bounds the events accepted but not yet acknowledged or given up on;
	// publishing blocks while it is reached. Default 4096.
	MaxInFlight int
	// MaxRetries is how often one event is published again after a failed attempt, always
	// with the same message id. Default 8.
	MaxRetries int
	// RetryBackoff is the wait before the first retry; it doubles per retry up to about 2s.
	// Default 50ms.
	RetryBackoff time.Duration
	// AckTimeout is how long one attempt waits for the server's acknowledgement. Default 5s.
	AckTimeout time.Duration
	// OnFailure, if set, is called once for every event given up on, from a goroutine of
	// the publisher's or from Close; calls may be concurrent. It may publish again.
	OnFailure func(eventID string, err error)
	// Logger receives retries (debug) and give-ups (warn); default discards.
	Logger *slog.Logger
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.JetStream == nil {
		errs = append(errs, errors.New("publisher: jetstream is required"))
	}
	if c.Subjects.Prefix == "" {
		errs = append(errs, errors.New("publisher: subject prefix is required"))
	}
	if c.Encoding != event.EncodingProto && c.Encoding != event.EncodingJSON {
		errs = append(errs, fmt.Errorf("publisher: unknown encoding %d", c.Encoding))
	}
	if c.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("publisher: max in flight %d is negative", c.MaxInFlight))
	}
	if c.MaxRetries < 0 {
		errs = append(errs, fmt.Errorf("publisher: max retries %d is negative", c.MaxRetries))
	}
	if c.RetryBackoff < 0 {
		errs = append(errs, fmt.Errorf("publisher: retry backoff %s is negative", c.RetryBackoff))
	}
	if c.AckTimeout < 0 {
		errs = append(errs, fmt.Errorf("publisher: ack timeout %s is negative", c.AckTimeout))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.MaxInFlight == 0 {
		c.MaxInFlight = defaultMaxInFlight
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = defaultMaxRetries
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = defaultRetryBackoff
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = defaultAckTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// backoff is the wait before retry number n (1-based).
func (c Config) backoff(n int) time.Duration {
	limit := max(maxRetryBackoff, c.RetryBackoff)
	d := c.RetryBackoff
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// RetrySpan is the longest time, with defaults applied, between the first attempt of an
// event and its last retry when every attempt times out. Keep it below the stream's
// duplicate window (2 minutes in keytrail's default stream config): see Publisher.retry.
func (c Config) RetrySpan() time.Duration {
	c = c.withDefaults()
	var span time.Duration
	for n := 1; n <= c.MaxRetries; n++ {
		span += c.AckTimeout + c.backoff(n)
	}
	return span
}

// Stats counts what happened to events since New. Accepted == Acked + Failed + InFlight.
type Stats struct {
	// Accepted events were taken by PublishUsage or PublishLifecycle.
	Accepted uint64
	// Acked events were acknowledged by the stream, duplicates included.
	Acked uint64
	// Duplicates were acknowledged as already stored: a retry whose earlier attempt had
	// landed, or the same event_id published twice.
	Duplicates uint64
	// Retried counts repeated publishes (attempts after the first), not events.
	Retried uint64
	// Failed events were given up on.
	Failed uint64
	// InFlight events are accepted and neither acknowledged nor given up on yet.
	InFlight int
}

// Publisher sends events to JetStream asynchronously, with bounded in-flight events,
// retries under the same message id, and counters. It is safe for concurrent use.
type Publisher struct {
	cfg         Config
	js          jetstream.JetStream
	pubOpts     []jetstream.PublishOpt
	contentType string

	// slots holds one token per in-flight event; a full channel is what blocks a publish.
	slots   chan struct{}
	closing chan struct{}

	mu        sync.Mutex
	closed    bool
	abandoned bool
	pending   map[*nats.Msg]*pending
	// Flush waits per epoch: an event belongs to the epoch current when it was accepted,
	// and each Flush opens a new epoch, so a flush under steady load waits only for the
	// events accepted before it, not for a moment with nothing in flight.
	epoch   uint64
	byEpoch map[uint64]int
	// drained is closed (and replaced) whenever an epoch's last event resolves.
	drained     chan struct{}
	stats       Stats
	flushFailed uint64
	flushErr    error
}

// pending is one accepted event, keyed by its message: the library's ack and error handlers
// hand back the message pointer that was published.
type pending struct {
	msg     *nats.Msg
	id      string
	epoch   uint64
	retries int
	timer   *time.Timer
}

// New builds a Publisher on the connection of cfg.JetStream.
func New(cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Publisher{
		cfg:         cfg,
		contentType: cfg.Encoding.ContentType(),
		// The library's own no-responders retry is off so that every retry goes through
		// one policy (ours: counted, backed off, bounded by MaxRetries).
		pubOpts: []jetstream.PublishOpt{jetstream.WithRetryAttempts(0)},
		slots:   make(chan struct{}, cfg.MaxInFlight),
		closing: make(chan struct{}),
		pending: make(map[*nats.Msg]*pending),
		byEpoch: make(map[uint64]int),
		drained: make(chan struct{}),
	}
	js, err := jetstream.New(cfg.JetStream.Conn(),
		jetstream.WithPublishAsyncAckHandler(p.onAck),
		jetstream.WithPublishAsyncErrHandler(p.onError),
		// Each event has at most one attempt outstanding, so the library never reaches this
		// bound; it is set so the library would stall rather than exceed ours.
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInFlight),
		// Without a timeout an attempt whose ack is lost (server restarted after storing it)
		// would stay pending forever and hold its slot.
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("publisher: jetstream: %w", err)
	}
	p.js = js
	return p, nil
}

// NewEventID returns a random UUID (version 4) for a new event. Gateways must create the id
// once per event and keep it across their own retries, or the duplicate window cannot help.
func NewEventID() string {
	return uuid.NewString()
}

// PublishUsage accepts a usage event for asynchronous publishing. It blocks only while
// MaxInFlight events are in flight, and fails only for an event that cannot be published
// at all (nil, no event_id, no project), a done ctx, or a closed publisher. Whether the
// event was stored is reported by Flush, Stats and OnFailure.
func (p *Publisher) PublishUsage(ctx context.Context, e *keytrailv1.UsageEvent) error {
	if e == nil {
		return fmt.Errorf("%w: nil usage event", ErrInvalidEvent)
	}
	if err := checkEvent(e.GetEventId(), e.GetProject()); err != nil {
		return err
	}
	return p.publish(ctx, p.cfg.Subjects.Usage(e.GetProject()), e.GetEventId(), e)
}

// PublishLifecycle is PublishUsage for lifecycle events.
func (p *Publisher) PublishLifecycle(ctx context.Context, e *keytrailv1.LifecycleEvent) error {
	if e == nil {
		return fmt.Errorf("%w: nil lifecycle event", ErrInvalidEvent)
	}
	if err := checkEvent(e.GetEventId(), e.GetProject()); err != nil {
		return err
	}
	return p.publish(ctx, p.cfg.Subjects.Lifecycle(e.GetProject()), e.GetEventId(), e)
}

// checkEvent rejects only what makes publishing impossible or pointless: without an id
// there is no deduplication, without a project no subject. Everything else is the
// ingester's to judge, which dead-letters an invalid event with its reason.
func checkEvent(id, project string) error {
	var errs []error
	if id == "" {
		errs = append(errs, fmt.Errorf("%w: event_id is required", ErrInvalidEvent))
	}
	if project == "" {
		errs = append(errs, fmt.Errorf("%w: project is required", ErrInvalidEvent))
	}
	return errors.Join(errs...)
}

func (p *Publisher) publish(ctx context.Context, subject, id string, m proto.Message) error {
	data, err := p.cfg.Encoding.Marshal(m)
	if err != nil {
		return fmt.Errorf("%w: encode %s: %w", ErrInvalidEvent, id, err)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set(event.ContentTypeHeader, p.contentType)

	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.closing:
		return ErrClosed
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.slots
		return ErrClosed
	}
	pd := &pending{msg: msg, id: id, epoch: p.epoch}
	p.pending[msg] = pd
	p.byEpoch[pd.epoch]++
	p.stats.Accepted++
	p.mu.Unlock()

	p.send(pd)
	return nil
}

// send makes one attempt. It must be called without p.mu held: the library calls our
// handlers, which take p.mu, while holding its own lock (ack timeouts), so taking the
// locks in the other order here could deadlock.
func (p *Publisher) send(pd *pending) {
	if _, err := p.js.PublishMsgAsync(pd.msg, p.pubOpts...); err != nil {
		p.attemptFailed(pd.msg, err)
	}
}

func (p *Publisher) onAck(_ jetstream.JetStream, msg *nats.Msg, ack *jetstream.PubAck) {
	p.mu.Lock()
	pd, ok := p.pending[msg]
	if !ok {
		// Given up on by Close while this attempt was out; it is stored after all, but
		// the caller has been told otherwise and republishing it is safe.
		p.mu.Unlock()
		return
	}
	p.stats.Acked++
	if ack.Duplicate {
		p.stats.Duplicates++
	}
	p.resolveLocked(pd)
	p.mu.Unlock()
	<-p.slots
}

// onError hands the failure to a goroutine of its own: the library calls it for an ack
// timeout while holding its publish lock, and a give-up runs OnFailure, which may well
// publish again and would then wait on that lock for ever. Failures are rare, so the
// goroutine costs nothing on the normal path.
func (p *Publisher) onError(_ jetstream.JetStream, msg *nats.Msg, err error) {
	go p.attemptFailed(msg, err)
}

// attemptFailed schedules a retry of the event or gives up on it.
func (p *Publisher) attemptFailed(msg *nats.Msg, err error) {
	p.mu.Lock()
	pd, ok := p.pending[msg]
	if !ok {
		p.mu.Unlock()
		return
	}
	retries := pd.retries
	if !p.abandoned && retries < p.cfg.MaxRetries && retryable(err) {
		pd.retries++
		wait := p.cfg.backoff(pd.retries)
		pd.timer = time.AfterFunc(wait, func() { p.retry(pd) })
		p.mu.Unlock()
		p.cfg.Logger.Debug("publish failed, retrying", "event_id", pd.id, "retry", retries+1, "backoff", wait, "error", err)
		return
	}
	p.giveUpLocked(pd, err)
	p.mu.Unlock()
	p.failed(pd.id, retries, err)
}

// retry publishes the event again under the same message id.
//
// Why this never stores an event twice: the stream remembers every message id it stored for
// its duplicate window (broker.StreamConfig.DuplicateWindow, 2 minutes by default) and
// answers a repeated id with an ack marked Duplicate instead of storing it. So a retry of an
// attempt that did land, whose ack was lost to a timeout, a disconnect or a server restart,
// is dropped. Beyond the window the id is forgotten and a retry would be stored again, and
// the ingester would write a second row. That is why retries are bounded: with the defaults
// the last retry leaves at most Config.RetrySpan (about 47s) after the first attempt.
//
// Retries are not jittered: while the connection is down they queue in the client's
// reconnect buffer and go out when the client reconnects, which nats.go already jitters.
func (p *Publisher) retry(pd *pending) {
	p.mu.Lock()
	if _, ok := p.pending[pd.msg]; !ok {
		p.mu.Unlock()
		return
	}
	pd.timer = nil
	p.stats.Retried++
	p.mu.Unlock()
	p.send(pd)
}

// retryable is false only where another attempt cannot succeed: the connection was closed
// by its owner, or the server refused the message itself (API code 400, e.g. too large).
// Timeouts, no responders during a restart or leader election, a disconnect, and
// "temporarily unavailable" or "store failed" (a full stream drains as the ingester catches
// up) are all worth another attempt.
func retryable(err error) bool {
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) {
		return false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.Code == 400 {
		return false
	}
	return true
}

// giveUpLocked records the failure; the caller then calls failed, without p.mu held, to
// release the slot and report it.
func (p *Publisher) giveUpLocked(pd *pending, err error) {
	if pd.timer != nil {
		pd.timer.Stop()
		pd.timer = nil
	}
	p.stats.Failed++
	p.flushFailed++
	p.flushErr = fmt.Errorf("event %s: %w", pd.id, err)
	p.resolveLocked(pd)
}

func (p *Publisher) failed(id string, retries int, err error) {
	<-p.slots
	p.cfg.Logger.Warn("gave up publishing event", "event_id", id, "retries", retries, "error", err)
	if p.cfg.OnFailure != nil {
		p.cfg.OnFailure(id, err)
	}
}

func (p *Publisher) resolveLocked(pd *pending) {
	delete(p.pending, pd.msg)
	p.byEpoch[pd.epoch]--
	if p.byEpoch[pd.epoch] == 0 {
		delete(p.byEpoch, pd.epoch)
		close(p.drained)
		p.drained = make(chan struct{})
	}
}

// Flush waits until every event accepted before the call is acknowledged or given up on.
// It returns an error if any event was given up on since the previous Flush, or if ctx ends
// first (the events stay in flight).
func (p *Publisher) Flush(ctx context.Context) error {
	p.mu.Lock()
	target := p.epoch
	p.epoch++
	for p.waitingUpTo(target) {
		drained := p.drained
		inFlight := len(p.pending)
		p.mu.Unlock()
		select {
		case <-drained:
		case <-ctx.Done():
			return fmt.Errorf("publisher: flush: %d events still in flight: %w", inFlight, ctx.Err())
		}
		p.mu.Lock()
	}
	failed, last := p.flushFailed, p.flushErr
	p.flushFailed, p.flushErr = 0, nil
	p.mu.Unlock()
	if failed > 0 {
		return fmt.Errorf("publisher: %d events given up on since the last flush, last: %w", failed, last)
	}
	return nil
}

func (p *Publisher) waitingUpTo(epoch uint64) bool {
	for e := range p.byEpoch {
		if e <= epoch {
			return true
		}
	}
	return false
}

// Close stops accepting events and flushes. Flushing before returning is what keeps a
// gateway that shuts down from losing the events it accepted last. If ctx ends first, the
// events still in flight are given up on (Failed, OnFailure) so that nothing is retried
// after Close returns. The NATS connection belongs to the caller and stays open; the
// publisher's reply subscription on it goes away when the caller closes it.
func (p *Publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.closing)
	}
	p.mu.Unlock()
	err := p.Flush(ctx)
	if ctx.Err() == nil {
		return err
	}
	p.mu.Lock()
	p.abandoned = true
	abandoned := make([]pending, 0, len(p.pending))
	for _, pd := range p.pending {
		p.giveUpLocked(pd, ctx.Err())
		abandoned = append(abandoned, *pd)
	}
	p.mu.Unlock()
	for _, pd := range abandoned {
		p.failed(pd.id, pd.retries, ctx.Err())
	}
	return fmt.Errorf("publisher: close: gave up on %d events: %w", len(abandoned), err)
}

// Stats returns a consistent snapshot of the counters.
func (p *Publisher) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.InFlight = len(p.pending)
	return s
}
