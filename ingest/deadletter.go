package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/internal/retry"
)

// Headers the ingester sets on a dead-lettered message. The original's headers are kept
// beside them, redacted, except those listed in Keytrail-Dropped-Headers.
const (
	HeaderReason          = "Keytrail-Reason"
	HeaderDetail          = "Keytrail-Detail"
	HeaderOriginalSubject = "Keytrail-Original-Subject"
	HeaderStreamSeq       = "Keytrail-Stream-Seq"
	// HeaderReceivedAt is when the events stream stored the original (RFC 3339).
	HeaderReceivedAt = "Keytrail-Received-At"
	// HeaderOriginalMsgID is the original's Nats-Msg-Id (the copy carries its own).
	HeaderOriginalMsgID = "Keytrail-Original-Msg-Id"
	// HeaderPayloadBytes and HeaderPayloadSHA256 describe the original payload, before
	// redaction and truncation, so an operator can match it with the gateway's copy.
	HeaderPayloadBytes  = "Keytrail-Payload-Bytes"
	HeaderPayloadSHA256 = "Keytrail-Payload-Sha256"
	// HeaderRedacted counts the secret-shaped values replaced in payload, headers, subject
	// and detail; absent when there were none.
	HeaderRedacted = "Keytrail-Redacted"
	// HeaderTruncated is the number of payload bytes kept when the payload was cut.
	HeaderTruncated = "Keytrail-Truncated"
	// HeaderDroppedHeaders names the original headers the copy does not carry, and why.
	HeaderDroppedHeaders = "Keytrail-Dropped-Headers"
	// HeaderReplayOf marks a message republished by `keytrail deadletters replay` (value:
	// where the dead letter was kept). The ingester checks such a message against storage
	// before writing it, as it does a redelivery, so a replay never stores an event twice.
	HeaderReplayOf = "Keytrail-Replay-Of"
)

const (
	// maxHeaderBytes is NATS's limit on a message's encoded header block: the server keeps
	// its length in 16 bits and refuses a longer one, however often it is retried.
	maxHeaderBytes = math.MaxUint16
	// optionalHeaderReserve is kept free for the headers whose size is known only after the
	// original's were fitted (Keytrail-Dropped-Headers, Keytrail-Truncated).
	optionalHeaderReserve = 2048
	// maxDeadLetterPayload bounds the payload a dead letter keeps; a longer one (it is over
	// the 64 KiB event limit anyway) is cut and its length and hash recorded.
	maxDeadLetterPayload = 256 << 10
	// maxDroppedList bounds the Keytrail-Dropped-Headers value.
	maxDroppedList = 1024
	// deadLetterPublishTimeout bounds one publish attempt to the dead-letter stream.
	deadLetterPublishTimeout = 5 * time.Second
)

// DeadLetter is a rejected message as keytrail keeps it: in the dead-letter stream, or in
// the ClickHouse table dead_letters when the stream refused it. Everything in it is redacted
// (secret-shaped tokens replaced by fingerprints, see event.RedactPayload) and it fits NATS's
// limits.
type DeadLetter struct {
	// Stream and StreamSeq are where the original was in the events stream; ReceivedAt is
	// when that stream stored it, At when it was dead-lettered.
	Stream     string
	StreamSeq  uint64
	ReceivedAt time.Time
	At         time.Time
	Reason     event.Reason
	Detail     string
	// Kind is the event kind of the original subject: usage, lifecycle or unknown.
	Kind          string
	Subject       string
	OriginalMsgID string
	// Header holds the original headers that were kept.
	Header  nats.Header
	Dropped []string
	// Payload is the redacted payload, cut when Truncated. PayloadBytes and PayloadSHA256
	// describe the original.
	Payload       []byte
	PayloadBytes  int
	PayloadSHA256 string
	Redacted      int
	Truncated     bool
	// FallbackCause says why the dead-letter stream did not take it; empty when it did.
	FallbackCause string
	// DeadLetterSeq is its sequence in the dead-letter stream when read back from there.
	DeadLetterSeq uint64
}

// DeadLetterStore keeps the dead letters the dead-letter stream refused. It is called by the
// goroutine that writes batches, before the batch is acknowledged, and again with the same
// letters after an error: keeping one twice must leave one (chsink's table collapses them).
type DeadLetterStore interface {
	WriteDeadLetters(ctx context.Context, letters []*DeadLetter) error
}

// newDeadLetter makes the kept form of a rejected message: redacted, and its headers within
// NATS's 64 KiB limit. maxMsg bounds headers and payload together (the server's max payload).
// subject is the one the message was published to (without a partition token, see
// broker.StreamConfig.PublishedSubject).
func newDeadLetter(subjects event.Subjects, stream, subject string, msg jetstream.Msg, why *event.Invalid, meta *jetstream.MsgMetadata, maxMsg int) *DeadLetter {
	d := &DeadLetter{Stream: stream, Reason: why.Reason, At: time.Now().UTC(), Kind: "unknown"}
	d.ReceivedAt = d.At
	if meta != nil {
		d.StreamSeq, d.ReceivedAt = meta.Sequence.Stream, meta.Timestamp.UTC()
	}
	kind := event.Kind(0)
	if k, _, err := subjects.Parse(subject); err == nil {
		kind, d.Kind = k, k.String()
	}
	var n int
	d.Subject, n = event.RedactSubject(subject)
	d.Redacted += n
	detail, n := event.RedactText(why.Detail)
	d.Detail, d.Redacted = headerSafe(detail, 1024), d.Redacted+n

	data := msg.Data()
	sum := sha256.Sum256(data)
	d.PayloadBytes, d.PayloadSHA256 = len(data), hex.EncodeToString(sum[:])
	d.Payload, n = event.RedactPayload(kind, msg.Headers().Get(event.ContentTypeHeader), data)
	d.Redacted += n

	if maxMsg <= 0 { // not told by a server yet: NATS's default
		maxMsg = 1 << 20
	}
	d.keepHeaders(msg.Headers(), maxHeaderBytes-headerSize(d.keytrailHeaders())-optionalHeaderReserve)
	room := maxMsg - headerSize(d.keytrailHeaders()) - headerSize(d.Header) - optionalHeaderReserve
	if keep := max(0, min(len(d.Payload), maxDeadLetterPayload, room)); keep < len(d.Payload) {
		d.Payload, d.Truncated = d.Payload[:keep], true
	}
	return d
}

// keepHeaders copies the original headers that can travel on the copy, redacted, smallest
// first until budget bytes are used; the rest are listed in Dropped. NATS directives
// (Nats-*) are dropped because the server would act on them again: Nats-Expected-Stream
// naming the events stream, for one, would make every publish of the copy fail.
func (d *DeadLetter) keepHeaders(orig nats.Header, budget int) {
	type entry struct {
		key    string
		values []string
		size   int
	}
	var entries []entry
	for k, vs := range orig {
		switch {
		case strings.EqualFold(k, nats.MsgIdHdr):
			if len(vs) > 0 {
				id, n := event.RedactText(vs[0])
				d.OriginalMsgID, d.Redacted = headerSafe(id, 256), d.Redacted+n
			}
			continue
		case k == HeaderReplayOf:
		case hasPrefixFold(k, "Keytrail-"):
			// Left by an earlier dead-lettering of a replayed message: this copy says it anew.
			continue
		case hasPrefixFold(k, "Nats-"):
			d.Dropped = append(d.Dropped, k+" (NATS directive)")
			continue
		case event.LooksLikeSecret(k):
			d.Dropped = append(d.Dropped, event.Fingerprint(k)+" (secret-shaped name)")
			d.Redacted++
			continue
		case !validHeaderKey(k):
			d.Dropped = append(d.Dropped, strconv.QuoteToASCII(headerSafe(k, 64))+" (not a valid header name)")
			continue
		}
		e := entry{key: k}
		for _, v := range vs {
			rv, n := event.RedactText(v)
			d.Redacted += n
			e.values = append(e.values, rv)
			e.size += len(k) + len(textproto.TrimString(rv)) + 4
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].size != entries[j].size {
			return entries[i].size < entries[j].size
		}
		return entries[i].key < entries[j].key
	})
	d.Header = nats.Header{}
	for _, e := range entries {
		if e.size > budget {
			d.Dropped = append(d.Dropped, fmt.Sprintf("%s (%d bytes)", e.key, e.size))
			continue
		}
		d.Header[e.key], budget = e.values, budget-e.size
	}
	sort.Strings(d.Dropped)
}

// keytrailHeaders are the headers the copy carries besides the original's.
func (d *DeadLetter) keytrailHeaders() nats.Header {
	h := nats.Header{}
	h.Set(HeaderReason, string(d.Reason))
	h.Set(HeaderDetail, d.Detail)
	h.Set(HeaderOriginalSubject, d.Subject)
	h.Set(HeaderStreamSeq, strconv.FormatUint(d.StreamSeq, 10))
	h.Set(HeaderReceivedAt, d.ReceivedAt.Format(time.RFC3339Nano))
	h.Set(HeaderPayloadBytes, strconv.Itoa(d.PayloadBytes))
	h.Set(HeaderPayloadSHA256, d.PayloadSHA256)
	if d.Redacted > 0 {
		h.Set(HeaderRedacted, strconv.Itoa(d.Redacted))
	}
	if d.OriginalMsgID != "" {
		h.Set(HeaderOriginalMsgID, d.OriginalMsgID)
	}
	if len(d.Dropped) > 0 {
		h.Set(HeaderDroppedHeaders, boundedList(d.Dropped, maxDroppedList))
	}
	if d.Truncated {
		h.Set(HeaderTruncated, strconv.Itoa(len(d.Payload)))
	}
	// A redelivered rejected message is dead-lettered once: the id is its stream position.
	h.Set(nats.MsgIdHdr, "deadletter-"+d.Stream+"-"+strconv.FormatUint(d.StreamSeq, 10))
	return h
}

// message is the copy published to the dead-letter stream.
func (d *DeadLetter) message(subjects event.Subjects) *nats.Msg {
	out := nats.NewMsg(subjects.DeadLetter(d.Kind))
	for k, vs := range d.Header {
		out.Header[k] = append([]string(nil), vs...)
	}
	for k, vs := range d.keytrailHeaders() {
		out.Header[k] = vs
	}
	out.Data = d.Payload
	return out
}

// DeadLetterFromStream reads a message of the dead-letter stream back into a DeadLetter.
func DeadLetterFromStream(m *jetstream.RawStreamMsg) *DeadLetter {
	h := m.Header
	d := &DeadLetter{
		Reason: event.Reason(h.Get(HeaderReason)), Detail: h.Get(HeaderDetail), Subject: h.Get(HeaderOriginalSubject),
		OriginalMsgID: h.Get(HeaderOriginalMsgID), PayloadSHA256: h.Get(HeaderPayloadSHA256),
		At: m.Time.UTC(), Payload: m.Data, DeadLetterSeq: m.Sequence, Kind: "unknown", Header: nats.Header{},
	}
	d.StreamSeq, _ = strconv.ParseUint(h.Get(HeaderStreamSeq), 10, 64)
	d.ReceivedAt, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderReceivedAt))
	d.PayloadBytes, _ = strconv.Atoi(h.Get(HeaderPayloadBytes))
	d.Redacted, _ = strconv.Atoi(h.Get(HeaderRedacted))
	d.Truncated = h.Get(HeaderTruncated) != ""
	if dropped := h.Get(HeaderDroppedHeaders); dropped != "" {
		d.Dropped = []string{dropped}
	}
	if i := strings.LastIndexByte(m.Subject, '.'); i >= 0 {
		d.Kind = m.Subject[i+1:]
	}
	if msgID := h.Get(nats.MsgIdHdr); strings.HasPrefix(msgID, "deadletter-") {
		// The copy's id is deadletter-<events stream>-<stream seq> (see keytrailHeaders).
		d.Stream = strings.TrimSuffix(strings.TrimPrefix(msgID, "deadletter-"), "-"+strconv.FormatUint(d.StreamSeq, 10))
	}
	for k, vs := range h {
		if hasPrefixFold(k, "Keytrail-") && k != HeaderReplayOf || strings.EqualFold(k, nats.MsgIdHdr) {
			continue
		}
		d.Header[k] = vs
	}
	return d
}

// ReplayMessage is the message `keytrail deadletters replay` publishes for d: the payload
// and kept headers on the original subject, marked with Keytrail-Replay-Of (source says
// where the dead letter was kept). Its Nats-Msg-Id is "replay-" with the event id and a hash
// of the payload when the payload decodes, so replaying the same dead letter twice within
// JetStream's duplicate window publishes it once; the original's id would not do: the
// original publish holds it for that window, and the replay would be dropped as its
// duplicate.
func (d *DeadLetter) ReplayMessage(source string) (*nats.Msg, error) {
	if d.Subject == "" {
		return nil, errors.New("the dead letter has no original subject")
	}
	if d.Truncated {
		return nil, fmt.Errorf("only %d of the payload's %d bytes were kept", len(d.Payload), d.PayloadBytes)
	}
	out := nats.NewMsg(d.Subject)
	for k, vs := range d.Header {
		out.Header[k] = append([]string(nil), vs...)
	}
	out.Header.Set(HeaderReplayOf, source)
	sum := sha256.Sum256(d.Payload)
	kind := event.KindUsage
	if d.Kind == event.KindLifecycle.String() {
		kind = event.KindLifecycle
	}
	if id := event.PayloadEventID(kind, d.Header.Get(event.ContentTypeHeader), d.Payload); id != "" && d.Kind != "unknown" {
		out.Header.Set(nats.MsgIdHdr, "replay-"+id+"-"+hex.EncodeToString(sum[:8]))
	} else {
		out.Header.Set(nats.MsgIdHdr, "replay-"+d.Stream+"-"+strconv.FormatUint(d.StreamSeq, 10)+"-"+hex.EncodeToString(sum[:8]))
	}
	out.Data = d.Payload
	return out, nil
}

// deadLetter keeps a rejected message that is part of batch b. It is republished to the
// dead-letter stream; when the stream refuses it (full, deleted, unreachable) after a
// bounded retry, it joins b's fallback letters, which the flush writes to the
// DeadLetterStore before it acknowledges the batch. Either way the message behind it is not
// held up for longer than the retry, and nothing is acknowledged before the dead letter is
// kept somewhere.
func (in *Ingester) deadLetter(ctx context.Context, b *batch, msg jetstream.Msg, why *event.Invalid, meta *jetstream.MsgMetadata) {
	subject, _ := in.cfg.Streams.PublishedSubject(msg.Subject())
	d := newDeadLetter(in.cfg.Streams.Subjects, in.cfg.Streams.EventsStream, subject, msg, why, meta, int(in.cfg.JetStream.Conn().MaxPayload()))
	if d.Redacted > 0 {
		in.metrics.secretsRedacted.WithLabelValues(d.Kind).Add(float64(d.Redacted))
	}
	err := in.publishDeadLetter(ctx, b, d)
	if err == nil {
		in.deadLettered(d)
		return
	}
	d.FallbackCause = publishFailureCause(ctx, err)
	in.log.Warn("the dead-letter stream refused a dead letter; keeping it in ClickHouse table dead_letters before acknowledging it",
		"reason", d.Reason, "cause", d.FallbackCause, "stream_seq", d.StreamSeq, "error", err)
	b.deadLetters = append(b.deadLetters, d)
}

// publishDeadLetter publishes d to the dead-letter stream, retrying an error that may pass
// (a timeout, a lost connection) up to DeadLetterAttempts tries in all; a refusal by the
// server (no such stream, stream full, message too large) is final at once.
func (in *Ingester) publishDeadLetter(ctx context.Context, b *batch, d *DeadLetter) error {
	out := d.message(in.cfg.Streams.Subjects)
	policy := in.retryPolicy()
	policy.Attempts = in.cfg.DeadLetterAttempts
	return retry.Do(ctx, policy, func(attempt int) error {
		if attempt > 1 {
			in.extendLeases(b)
		}
		// Not cut short by shutdown (the message is in the batch the shutdown flush acks),
		// and no retries inside the client on "no responders": a deleted stream is final.
		pubCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deadLetterPublishTimeout)
		defer cancel()
		_, err := in.cfg.JetStream.PublishMsg(pubCtx, out, jetstream.WithRetryAttempts(0))
		if err != nil && refusedByServer(err) {
			return retry.Permanent(err)
		}
		return err
	}, func(attempt int, err error, _ time.Duration) {
		in.log.Warn("dead-letter publish failed; retrying", "reason", d.Reason, "stream_seq", d.StreamSeq, "attempt", attempt, "error", err)
	})
}

// deadLettered counts and logs a dead letter once it is kept.
func (in *Ingester) deadLettered(d *DeadLetter) {
	in.metrics.deadLettered.WithLabelValues(string(d.Reason)).Inc()
	where := "stream"
	if d.FallbackCause != "" {
		where = "clickhouse"
		in.metrics.deadLetterFallback.WithLabelValues(d.FallbackCause).Inc()
	}
	in.log.Warn("dead-lettered event", "reason", d.Reason, "detail", d.Detail, "subject", d.Subject, "stream_seq", d.StreamSeq, "kept_in", where)
}

// refusedByServer tells a final refusal from an error that may pass on retry.
func refusedByServer(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.As(err, &apiErr) || errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadHeaderMsg)
}

// publishFailureCause labels why the dead-letter stream did not take a dead letter.
func publishFailureCause(ctx context.Context, err error) string {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders):
		return "no_stream"
	case errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadHeaderMsg):
		return "too_large"
	case errors.As(err, &apiErr):
		desc := strings.ToLower(apiErr.Description)
		switch {
		case apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum || strings.Contains(desc, "header"):
			return "too_large"
		case strings.Contains(desc, "maximum") || strings.Contains(desc, "resources") || strings.Contains(desc, "storage"):
			return "stream_full"
		}
		return "refused"
	}
	if ctx.Err() != nil {
		return "shutdown"
	}
	return "unavailable"
}

// headerSize is the encoded size of h as nats.go sends it (its headerSize, which the server
// checks against its limit).
func headerSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(textproto.TrimString(v)) + 4
		}
	}
	return n
}

// validHeaderKey is nats.go's rule for a header name it will send: printable ASCII without
// the separators below. A publisher speaking the protocol directly can store others.
func validHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c < 33 || c > 126 || strings.IndexByte(`"()/,:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// boundedList joins items with ", ", ending with "and N more" past max bytes.
func boundedList(items []string, maxLen int) string {
	var b strings.Builder
	for i, it := range items {
		sep := ""
		if i > 0 {
			sep = ", "
		}
		if b.Len()+len(sep)+len(it) > maxLen-32 {
			fmt.Fprintf(&b, "%sand %d more", sep, len(items)-i)
			break
		}
		b.WriteString(sep)
		b.WriteString(it)
	}
	return headerSafe(b.String(), maxLen)
}

// headerSafe strips what NATS headers cannot carry (line breaks) and bounds the length
// (cutting at a UTF-8 boundary).
func headerSafe(s string, maxLen int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && cut < len(s) && s[cut]&0xC0 == 0x80 {
			cut--
		}
		s = s[:cut]
	}
	return s
}
