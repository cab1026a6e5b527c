package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
)

// StreamConfig describes the streams keytrail needs.
type StreamConfig struct {
	Subjects event.Subjects
	// EventsStream holds usage and lifecycle events until the ingester has stored them.
	EventsStream string
	// DeadLetterStream keeps messages the ingester rejected, with the reason in a header.
	DeadLetterStream string
	// Durable is the ingester's durable consumer on the events stream.
	Durable string
	// DuplicateWindow is how long JetStream remembers message ids to drop repeated publishes.
	DuplicateWindow time.Duration
	// MaxBytes bounds the events stream; when full, publishes fail rather than old events
	// being dropped (0 means unlimited).
	MaxBytes int64
	// DeadLetterMaxAge is how long rejected messages are kept for inspection and replay.
	DeadLetterMaxAge time.Duration
	// MaxAckPending bounds what the ingester may hold unacknowledged, which bounds its memory.
	MaxAckPending int
	// AckWait is how long JetStream waits for an ack before redelivering.
	AckWait time.Duration
	// Replicas for clustered NATS; 1 for a single server.
	Replicas int
	// SharedConsumer makes the durable consumer ack each message (AckExplicit) so that
	// several ingesters can pull from it at once. The default, one ingester per durable with
	// AckAll, acks a whole batch with one message and drains about twice as fast. JetStream
	// cannot change the ack policy of an existing durable: choose at deployment.
	SharedConsumer bool
}

// AckPolicy is the durable consumer's ack policy for this configuration.
func (c StreamConfig) AckPolicy() jetstream.AckPolicy {
	if c.SharedConsumer {
		return jetstream.AckExplicitPolicy
	}
	return jetstream.AckAllPolicy
}

// DefaultStreamConfig is what the single-process run and the tests use.
func DefaultStreamConfig() StreamConfig {
	return StreamConfig{
		Subjects:         event.Subjects{Prefix: event.DefaultSubjectPrefix},
		EventsStream:     "KEYTRAIL_EVENTS",
		DeadLetterStream: "KEYTRAIL_DEADLETTER",
		Durable:          "keytrail-ingester",
		DuplicateWindow:  2 * time.Minute,
		MaxBytes:         8 << 30,
		DeadLetterMaxAge: 30 * 24 * time.Hour,
		MaxAckPending:    50_000,
		AckWait:          30 * time.Second,
		Replicas:         1,
	}
}

// Validate reports every problem with the configuration at once.
func (c StreamConfig) Validate() error {
	var errs []error
	if c.Subjects.Prefix == "" {
		errs = append(errs, errors.New("streams: subject prefix is required"))
	}
	if c.EventsStream == "" || c.DeadLetterStream == "" || c.Durable == "" {
		errs = append(errs, errors.New("streams: events stream, dead-letter stream and durable names are required"))
	}
	if c.DuplicateWindow <= 0 {
		errs = append(errs, errors.New("streams: duplicate window must be positive"))
	}
	if c.MaxAckPending <= 0 {
		errs = append(errs, errors.New("streams: max ack pending must be positive"))
	}
	if c.AckWait <= 0 {
		errs = append(errs, errors.New("streams: ack wait must be positive"))
	}
	if c.Replicas < 1 {
		errs = append(errs, errors.New("streams: replicas must be at least 1"))
	}
	return errors.Join(errs...)
}

// EnsureStreams creates or updates the events stream, the dead-letter stream and the
// ingester's durable consumer. It is safe to call from every keytrail process at start-up.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	maxBytes := c.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        c.EventsStream,
		Description: "keytrail usage and lifecycle events awaiting ingestion",
		Subjects:    c.Subjects.EventFilters(),
		Storage:     jetstream.FileStorage,
		// Interest retention drops a message once the ingester acknowledged it (it is then in
		// ClickHouse); discard-new turns a full stream into publish errors, never silent loss.
		Retention:  jetstream.InterestPolicy,
		Discard:    jetstream.DiscardNew,
		MaxBytes:   maxBytes,
		Duplicates: c.DuplicateWindow,
		// Larger than event.MaxPayloadBytes on purpose: an oversize event must reach the
		// ingester so it is dead-lettered with its reason, not bounced at the door.
		MaxMsgSize: 1 << 20,
		Replicas:   c.Replicas,
	}); err != nil {
		return fmt.Errorf("ensure stream %s: %w", c.EventsStream, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        c.DeadLetterStream,
		Description: "keytrail events the ingester rejected; header Keytrail-Reason says why",
		Subjects:    []string{c.Subjects.DeadLetterFilter()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.DeadLetterMaxAge,
		Duplicates:  c.DuplicateWindow,
		MaxMsgSize:  2 << 20,
		Replicas:    c.Replicas,
	}); err != nil {
		return fmt.Errorf("ensure stream %s: %w", c.DeadLetterStream, err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, c.EventsStream, jetstream.ConsumerConfig{
		Durable:     c.Durable,
		Description: "keytrail ingester",
		// AckAll lets one ack cover a whole flushed batch; the ingester acks only the last
		// message of a batch after ClickHouse accepted every row before it. A shared durable
		// needs per-message acks: with AckAll, one ingester's ack would cover messages
		// another ingester has not stored yet.
		AckPolicy:     c.AckPolicy(),
		AckWait:       c.AckWait,
		MaxAckPending: c.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}); err != nil {
		return fmt.Errorf("ensure consumer %s: %w", c.Durable, err)
	}
	return nil
}
