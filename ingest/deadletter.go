package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
)

// Headers the ingester adds to a dead-lettered message. The original headers are kept.
const (
	HeaderReason          = "Keytrail-Reason"
	HeaderDetail          = "Keytrail-Detail"
	HeaderOriginalSubject = "Keytrail-Original-Subject"
	HeaderStreamSeq       = "Keytrail-Stream-Seq"
	HeaderTruncated       = "Keytrail-Truncated"
)

// maxDeadLetterPayload keeps a dead-lettered copy under NATS's default 1 MiB max payload even
// with the added headers; a longer payload is cut and its full hash recorded instead.
const maxDeadLetterPayload = 256 << 10

// deadLetter republishes a rejected message with its reason. It retries until the dead-letter
// stream accepts it (or ctx ends) because acking past a message that was neither stored nor
// dead-lettered would lose it.
func (in *Ingester) deadLetter(ctx context.Context, msg jetstream.Msg, why *event.Invalid, streamSeq uint64) {
	kind := "unknown"
	if k, _, err := in.cfg.Streams.Subjects.Parse(msg.Subject()); err == nil {
		kind = k.String()
	}
	out := nats.NewMsg(in.cfg.Streams.Subjects.DeadLetter(kind))
	for k, vs := range msg.Headers() {
		for _, v := range vs {
			out.Header.Add(k, v)
		}
	}
	out.Header.Set(HeaderReason, string(why.Reason))
	out.Header.Set(HeaderDetail, headerSafe(why.Detail))
	out.Header.Set(HeaderOriginalSubject, msg.Subject())
	out.Header.Set(HeaderStreamSeq, strconv.FormatUint(streamSeq, 10))
	// A redelivered poison message is dead-lettered once: the id is its stream position.
	out.Header.Set(nats.MsgIdHdr, "deadletter-"+in.cfg.Streams.EventsStream+"-"+strconv.FormatUint(streamSeq, 10))
	out.Data = msg.Data()
	if len(out.Data) > maxDeadLetterPayload {
		sum := sha256.Sum256(out.Data)
		out.Header.Set(HeaderTruncated, strconv.Itoa(len(out.Data))+" bytes, sha256 "+hex.EncodeToString(sum[:]))
		out.Data = out.Data[:maxDeadLetterPayload]
	}

	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		pubCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := in.cfg.JetStream.PublishMsg(pubCtx, out)
		cancel()
		if err == nil {
			break
		}
		in.log.Error("dead-letter publish failed; retrying", "reason", why.Reason, "stream_seq", streamSeq, "attempt", attempt, "error", err)
		if !sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, in.cfg.MaxBackoff)
	}
	in.metrics.deadLettered.WithLabelValues(string(why.Reason)).Inc()
	in.log.Warn("dead-lettered event", "reason", why.Reason, "detail", why.Detail, "subject", msg.Subject(), "stream_seq", streamSeq)
}

// headerSafe strips what NATS headers cannot carry (line breaks) and bounds the length.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}
