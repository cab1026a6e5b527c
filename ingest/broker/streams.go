package broker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
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
	// Partitions splits the events by project into this many partitions, each drained by its
	// own durable and ingester (0 or 1: one partition, the durable named Durable). The stream
	// inserts the partition, a hash of the project, as a subject token (a JetStream subject
	// transform): <prefix>.<kind>.<partition>.<project>. Every process of a deployment must
	// use the same count; EnsureStreams refuses a different one.
	Partitions int
	// Partition is the partition this process's ingester drains (0 to Partitions-1).
	Partition int
}

// partitioned reports whether the events are split into several partitions.
func (c StreamConfig) partitioned() bool { return c.Partitions > 1 }

// DurableName is the durable consumer of a partition: Durable itself when unpartitioned.
func (c StreamConfig) DurableName(partition int) string {
	if !c.partitioned() {
		return c.Durable
	}
	return fmt.Sprintf("%s-p%d-of-%d", c.Durable, partition, c.Partitions)
}

// IngestDurable is the durable consumer this process's ingester drains.
func (c StreamConfig) IngestDurable() string { return c.DurableName(c.Partition) }

// partitionFilter is the consumer filter of a partition's durable.
func (c StreamConfig) partitionFilter(partition int) string {
	return fmt.Sprintf("%s.*.%d.*", c.Subjects.Prefix, partition)
}

// subjectTransform inserts the partition token: the partition is FNV-1a (32 bits) of the
// project token modulo Partitions (nats-server's partition() mapping function).
func (c StreamConfig) subjectTransform() *jetstream.SubjectTransformConfig {
	if !c.partitioned() {
		return nil
	}
	p := c.Subjects.Prefix
	return &jetstream.SubjectTransformConfig{
		Source:      p + ".*.*",
		Destination: fmt.Sprintf("%s.{{wildcard(1)}}.{{partition(%d,2)}}.{{wildcard(2)}}", p, c.Partitions),
	}
}

// streamSubjects are the events stream's subjects. Partitioned, they are exactly three tokens
// long: a subject with more would not be transformed, match no partition and be dropped by
// interest retention, so the stream refuses it at publish instead (the publisher sees an
// error). Unpartitioned, such a subject reaches the ingester and is dead-lettered.
func (c StreamConfig) streamSubjects() []string {
	if !c.partitioned() {
		return c.Subjects.EventFilters()
	}
	return []string{c.Subjects.Prefix + ".usage.*", c.Subjects.Prefix + ".lifecycle.*"}
}

// PartitionOf is the partition a project's events go to (the subject transform's choice).
func (c StreamConfig) PartitionOf(project string) int {
	if !c.partitioned() {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(event.SubjectToken(project)))
	return int(h.Sum32() % uint32(c.Partitions))
}

// PublishedSubject is the subject a message was published to, from the subject the stream
// stored it under (which carries the partition token when partitioned). It reports an error
// for a stored subject that is not <prefix>.<kind>.<partition>.<project> with the project's
// own partition.
func (c StreamConfig) PublishedSubject(stored string) (string, error) {
	if !c.partitioned() {
		return stored, nil
	}
	tokens := strings.Split(stored, ".")
	prefixLen := len(strings.Split(c.Subjects.Prefix, "."))
	if len(tokens) != prefixLen+3 {
		return stored, fmt.Errorf("subject %q is not <prefix>.<kind>.<partition>.<project>", stored)
	}
	part, project := tokens[prefixLen+1], tokens[prefixLen+2]
	published := strings.Join(append(tokens[:prefixLen+1:prefixLen+1], project), ".")
	if part != strconv.Itoa(c.PartitionOf(project)) {
		return published, fmt.Errorf("subject %q carries partition %s, but project token %q belongs to partition %d", stored, part, project, c.PartitionOf(project))
	}
	return published, nil
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
		// At least two batches of the ingester's default size (ingest.CheckAckPending), and
		// room for dead letters taken beside them.
		MaxAckPending: 250_000,
		AckWait:       30 * time.Second,
		Replicas:      1,
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
	if c.Partitions < 0 || (c.Partitions <= 1 && c.Partition != 0) || (c.Partitions > 1 && (c.Partition < 0 || c.Partition >= c.Partitions)) {
		errs = append(errs, fmt.Errorf("streams: partition %d is not one of the %d partitions (0 to %d)", c.Partition, max(c.Partitions, 1), max(c.Partitions, 1)-1))
	}
	if c.Partitions > 1 && c.SharedConsumer {
		errs = append(errs, errors.New("streams: partitions and the shared consumer exclude each other (a partition is drained by one ingester)"))
	}
	return errors.Join(errs...)
}

// checkPartitions refuses to change the partitioning of an existing events stream: the
// durables of the old partitions would keep their messages for ever (interest retention), and
// messages already stored keep the old partition tokens.
func (c StreamConfig) checkPartitions(ctx context.Context, js jetstream.JetStream) error {
	s, err := js.Stream(ctx, c.EventsStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read stream %s: %w", c.EventsStream, err)
	}
	existing := 1
	if t := s.CachedInfo().Config.SubjectTransform; t != nil {
		if _, err := fmt.Sscanf(t.Destination[strings.Index(t.Destination, "{{partition(")+len("{{partition("):], "%d", &existing); err != nil {
			return fmt.Errorf("stream %s has a subject transform keytrail did not make: %s", c.EventsStream, t.Destination)
		}
	}
	if existing != max(c.Partitions, 1) {
		return fmt.Errorf("stream %s is split into %d ingest partitions, this process is configured for %d: every process must use the same -ingest-partitions (docs/cluster.md says how to change it)", c.EventsStream, existing, max(c.Partitions, 1))
	}
	return nil
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
	if err := Provision(ctx, "read stream "+c.EventsStream, func(ctx context.Context) error { return c.checkPartitions(ctx, js) }); err != nil {
		return err
	}
	if err := Provision(ctx, "ensure stream "+c.EventsStream, func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, c.eventsStreamConfig(maxBytes))
		return err
	}); err != nil {
		return err
	}
	if err := Provision(ctx, "ensure stream "+c.DeadLetterStream, func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, c.deadLetterStreamConfig())
		return err
	}); err != nil {
		return err
	}
	// Every partition's durable exists before anything is published to it: with interest
	// retention a message no consumer is interested in is not kept.
	for p := range max(c.Partitions, 1) {
		cc := jetstream.ConsumerConfig{
			Durable:     c.DurableName(p),
			Description: "keytrail ingester",
			// AckAll lets one ack cover a whole flushed batch; the ingester acks only the last
			// message of a batch after ClickHouse accepted every row before it. A shared durable
			// needs per-message acks: with AckAll, one ingester's ack would cover messages
			// another ingester has not stored yet.
			AckPolicy:     c.AckPolicy(),
			AckWait:       c.AckWait,
			MaxAckPending: c.MaxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas:      c.Replicas,
		}
		if c.partitioned() {
			cc.Description = fmt.Sprintf("keytrail ingester, partition %d of %d", p, c.Partitions)
			cc.FilterSubject = c.partitionFilter(p)
		}
		if err := Provision(ctx, "ensure consumer "+cc.Durable, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateConsumer(ctx, c.EventsStream, cc)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

func (c StreamConfig) eventsStreamConfig(maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.EventsStream,
		Description: "keytrail usage and lifecycle events awaiting ingestion",
		Subjects:    c.streamSubjects(),
		Storage:     jetstream.FileStorage,
		// Interest retention drops a message once the ingester acknowledged it (it is then in
		// ClickHouse); discard-new turns a full stream into publish errors, never silent loss.
		Retention:  jetstream.InterestPolicy,
		Discard:    jetstream.DiscardNew,
		MaxBytes:   maxBytes,
		Duplicates: c.DuplicateWindow,
		// Larger than event.MaxPayloadBytes on purpose: an oversize event must reach the
		// ingester so it is dead-lettered with its reason, not bounced at the door.
		MaxMsgSize:       1 << 20,
		Replicas:         c.Replicas,
		SubjectTransform: c.subjectTransform(),
	}
}

func (c StreamConfig) deadLetterStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.DeadLetterStream,
		Description: "keytrail events the ingester rejected; header Keytrail-Reason says why",
		Subjects:    []string{c.Subjects.DeadLetterFilter()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.DeadLetterMaxAge,
		Duplicates:  c.DuplicateWindow,
		MaxMsgSize:  2 << 20,
		Replicas:    c.Replicas,
	}
}
