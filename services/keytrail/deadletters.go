package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/chsink"
	"github.com/keytrail/keytrail/internal/storage"
)

const deadLettersUsage = `usage:
  keytrail deadletters list   [--reason R] [--since T] [--json]
  keytrail deadletters replay [--reason R] [--since T] [--dry-run] [--keep]
common flags: --nats-url URL --clickhouse-dsn DSN --subject-prefix P (see -h)`

// deadLettersCmd is the state of one `keytrail deadletters` run: where the dead letters are
// kept (the dead-letter stream, and the ClickHouse table dead_letters for those the stream
// refused) and which of them the operator asked for.
type deadLettersCmd struct {
	js      jetstream.JetStream
	ch      driver.Conn
	streams broker.StreamConfig
	filter  chsink.DeadLetterFilter
	stdout  io.Writer
	// streamMissing is set by read when the dead-letter stream does not exist.
	streamMissing bool
}

// keptLetter is a dead letter and where it is kept.
type keptLetter struct {
	*ingest.DeadLetter
	// keptIn is "<dead-letter stream>/<seq>" or "dead_letters/<events stream>/<seq>".
	keptIn  string
	inTable bool
}

// runDeadLetters is `keytrail deadletters list|replay`.
func runDeadLetters(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		return &exitCodeError{exitUsage, errors.New(deadLettersUsage)}
	}
	sub := args[0]
	fs := flag.NewFlagSet("keytrail deadletters "+sub, flag.ContinueOnError)
	fs.SetOutput(stdout)
	// As for `rotation check`, only the connection settings have environment variables (the
	// same ones keytrail serve reads); what to list or replay is always on the command line.
	natsURL := fs.String("nats-url", envDefault("KEYTRAIL_NATS_URL", "nats://127.0.0.1:4222"), "NATS holding the dead-letter stream: keytrail's -nats-url, or the embedded server's -nats-listen address (env KEYTRAIL_NATS_URL)")
	dsn := fs.String("clickhouse-dsn", envDefault("KEYTRAIL_CLICKHOUSE_DSN", storage.DefaultDSN), "ClickHouse holding the dead_letters table (env KEYTRAIL_CLICKHOUSE_DSN)")
	prefix := fs.String("subject-prefix", envDefault("KEYTRAIL_SUBJECT_PREFIX", "keytrail"), "first token of every keytrail subject (env KEYTRAIL_SUBJECT_PREFIX)")
	reason := fs.String("reason", "", "only dead letters with this Keytrail-Reason")
	since := fs.String("since", "", "only dead letters made since this time: RFC 3339, or a duration back from now (24h)")
	asJSON := fs.Bool("json", false, "list: print every field as JSON, payload included")
	dryRun := fs.Bool("dry-run", false, "replay: print what would be replayed and publish nothing")
	keep := fs.Bool("keep", false, "replay: keep the dead letters after replaying them (by default a replayed one is removed)")
	if err := fs.Parse(args[1:]); err != nil {
		return &exitCodeError{exitUsage, err}
	}
	if fs.NArg() > 0 {
		return &exitCodeError{exitUsage, fmt.Errorf("unexpected arguments %q\n%s", fs.Args(), deadLettersUsage)}
	}
	sinceTime, err := parseSince(*since, time.Now())
	if err != nil {
		return &exitCodeError{exitUsage, err}
	}

	nc, err := nats.Connect(*natsURL, nats.Name("keytrail deadletters"))
	if err != nil {
		return &exitCodeError{exitError, fmt.Errorf("connect nats %s: %w", *natsURL, err)}
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return &exitCodeError{exitError, err}
	}
	ch, err := storage.Open(ctx, storage.Config{DSN: *dsn})
	if err != nil {
		return &exitCodeError{exitError, err}
	}
	defer ch.Close()
	streams := broker.DefaultStreamConfig()
	streams.Subjects.Prefix = *prefix
	c := &deadLettersCmd{js: js, ch: ch, streams: streams, stdout: stdout,
		filter: chsink.DeadLetterFilter{Reason: *reason, Since: sinceTime}}
	letters, err := c.read(ctx)
	if err != nil {
		return &exitCodeError{exitError, err}
	}
	if c.streamMissing && !*asJSON {
		fmt.Fprintf(stdout, "note: the dead-letter stream %s does not exist; until a keytrail process starts and creates it, dead letters go to the dead_letters table\n", streams.DeadLetterStream)
	}
	if sub == "list" {
		if *asJSON {
			return printDeadLettersJSON(stdout, letters)
		}
		printDeadLetters(stdout, letters)
		return nil
	}
	return c.replay(ctx, letters, *dryRun, *keep)
}

// parseSince reads --since: empty (everything), an RFC 3339 time, or a duration before now.
func parseSince(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time (2026-12-01T00:00:00Z) or a duration (24h)", v)
	}
	return t, nil
}

// read returns the dead letters that match the filter, from the stream and the table,
// oldest first.
func (c *deadLettersCmd) read(ctx context.Context) ([]keptLetter, error) {
	fromStream, err := c.readStream(ctx)
	if err != nil {
		return nil, err
	}
	fromTable, err := chsink.ReadDeadLetters(ctx, c.ch, c.filter)
	if err != nil {
		return nil, err
	}
	out := fromStream
	for _, d := range fromTable {
		out = append(out, keptLetter{DeadLetter: d, inTable: true, keptIn: "dead_letters/" + d.Stream + "/" + strconv.FormatUint(d.StreamSeq, 10)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out, nil
}

// readStream reads the dead-letter stream with an ordered consumer (nothing is acknowledged
// or changed), up to its last message when the read began.
func (c *deadLettersCmd) readStream(ctx context.Context) ([]keptLetter, error) {
	s, err := c.js.Stream(ctx, c.streams.DeadLetterStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// Deleted: what it refused meanwhile is in the table, read next.
		c.streamMissing = true
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", c.streams.DeadLetterStream, err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 || (!c.filter.Since.IsZero() && state.LastTime.Before(c.filter.Since)) {
		return nil, nil
	}
	cfg := jetstream.OrderedConsumerConfig{}
	if !c.filter.Since.IsZero() {
		since := c.filter.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("read dead-letter stream %s: %w", c.streams.DeadLetterStream, err)
	}
	var out []keptLetter
	// Ask for no more than remain: a fetch returns once it has what it asked for, and the
	// first message's metadata tells how many follow it.
	remain := uint64(1)
	for remain > 0 {
		batch, err := cons.Fetch(int(min(remain, 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read dead-letter stream %s: %w", c.streams.DeadLetterStream, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			d := ingest.DeadLetterFromStream(&jetstream.RawStreamMsg{Subject: m.Subject(), Sequence: meta.Sequence.Stream, Header: m.Headers(), Data: m.Data(), Time: meta.Timestamp})
			if c.filter.Reason == "" || string(d.Reason) == c.filter.Reason {
				out = append(out, keptLetter{DeadLetter: d, keptIn: c.streams.DeadLetterStream + "/" + strconv.FormatUint(meta.Sequence.Stream, 10)})
			}
			remain = meta.NumPending
			if meta.Sequence.Stream >= state.LastSeq {
				remain = 0 // what arrived after the read began is for the next one
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("read dead-letter stream %s: %w", c.streams.DeadLetterStream, err)
		}
		if n == 0 {
			break // nothing at or after --since
		}
	}
	return out, nil
}

// replay republishes each dead letter to its original subject (see
// ingest.DeadLetter.ReplayMessage), then, unless keep, removes it from the stream or marks
// it replayed in the table. A replayed message goes through ingestion again: stored once,
// or dead-lettered anew if its cause is still there. A crash between the publish and the
// removal leaves the dead letter to be replayed again, which stores nothing twice (the
// replay's message id, and the ingester's storage check of Keytrail-Replay-Of messages).
func (c *deadLettersCmd) replay(ctx context.Context, letters []keptLetter, dryRun, keep bool) error {
	if len(letters) == 0 {
		fmt.Fprintln(c.stdout, "no dead letters to replay")
		return nil
	}
	var failed, replayed, duplicates int
	for _, l := range letters {
		msg, err := l.ReplayMessage(l.keptIn)
		if err != nil {
			fmt.Fprintf(c.stdout, "skipped %s: %v\n", l.keptIn, err)
			failed++
			continue
		}
		if dryRun {
			fmt.Fprintf(c.stdout, "would replay %s (%s) to %s as %s\n", l.keptIn, l.Reason, msg.Subject, msg.Header.Get(nats.MsgIdHdr))
			continue
		}
		ack, err := c.js.PublishMsg(ctx, msg)
		if err != nil {
			fmt.Fprintf(c.stdout, "failed %s: publish to %s: %v\n", l.keptIn, msg.Subject, err)
			failed++
			continue
		}
		note := fmt.Sprintf("events stream seq %d", ack.Sequence)
		if ack.Duplicate {
			// Replayed moments ago already: JetStream kept the first copy.
			note, duplicates = "already in the events stream (replayed before)", duplicates+1
		}
		replayed++
		if !keep {
			if err := c.remove(ctx, l); err != nil {
				fmt.Fprintf(c.stdout, "replayed %s to %s (%s) but could not remove it: %v\n", l.keptIn, msg.Subject, note, err)
				failed++
				continue
			}
		}
		fmt.Fprintf(c.stdout, "replayed %s to %s (%s)\n", l.keptIn, msg.Subject, note)
	}
	if dryRun {
		fmt.Fprintf(c.stdout, "dry run: %d dead letters would be replayed, nothing was published\n", len(letters)-failed)
	} else {
		fmt.Fprintf(c.stdout, "%d replayed (%d already in the events stream), %d failed\n", replayed, duplicates, failed)
	}
	if failed > 0 {
		return &exitCodeError{exitError, fmt.Errorf("%d dead letters were not replayed", failed)}
	}
	return nil
}

// remove takes a replayed dead letter out of the list: deleted from the stream, or marked
// replayed in the table.
func (c *deadLettersCmd) remove(ctx context.Context, l keptLetter) error {
	if l.inTable {
		return chsink.MarkDeadLettersReplayed(ctx, c.ch, []*ingest.DeadLetter{l.DeadLetter}, time.Now())
	}
	s, err := c.js.Stream(ctx, c.streams.DeadLetterStream)
	if err != nil {
		return err
	}
	return s.DeleteMsg(ctx, l.DeadLetterSeq)
}

func printDeadLetters(w io.Writer, letters []keptLetter) {
	if len(letters) == 0 {
		fmt.Fprintln(w, "no dead letters")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKEPT IN\tREASON\tSUBJECT\tSTREAM SEQ\tBYTES\tDETAIL")
	for _, l := range letters {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", ts(l.At), l.keptIn, l.Reason, l.Subject, l.StreamSeq, l.PayloadBytes, l.Detail)
	}
	tw.Flush()
}

// deadLetterJSON is one dead letter as `list --json` prints it.
type deadLetterJSON struct {
	KeptIn         string              `json:"kept_in"`
	Time           time.Time           `json:"time"`
	Reason         string              `json:"reason"`
	Detail         string              `json:"detail"`
	Subject        string              `json:"subject"`
	Stream         string              `json:"stream"`
	StreamSeq      uint64              `json:"stream_seq"`
	ReceivedAt     time.Time           `json:"received_at"`
	OriginalMsgID  string              `json:"original_msg_id,omitempty"`
	Headers        map[string][]string `json:"headers,omitempty"`
	DroppedHeaders []string            `json:"dropped_headers,omitempty"`
	FallbackCause  string              `json:"fallback_cause,omitempty"`
	PayloadBytes   int                 `json:"payload_bytes"`
	PayloadSHA256  string              `json:"payload_sha256"`
	Redacted       int                 `json:"redacted"`
	Truncated      bool                `json:"truncated"`
	// Payload is the kept payload when it is UTF-8 text (JSON events), else PayloadBase64.
	Payload       string `json:"payload,omitempty"`
	PayloadBase64 string `json:"payload_base64,omitempty"`
}

func printDeadLettersJSON(w io.Writer, letters []keptLetter) error {
	out := make([]deadLetterJSON, 0, len(letters))
	for _, l := range letters {
		j := deadLetterJSON{
			KeptIn: l.keptIn, Time: l.At, Reason: string(l.Reason), Detail: l.Detail, Subject: l.Subject, Stream: l.Stream,
			StreamSeq: l.StreamSeq, ReceivedAt: l.ReceivedAt, OriginalMsgID: l.OriginalMsgID, Headers: l.Header,
			DroppedHeaders: l.Dropped, FallbackCause: l.FallbackCause, PayloadBytes: l.PayloadBytes,
			PayloadSHA256: l.PayloadSHA256, Redacted: l.Redacted, Truncated: l.Truncated,
		}
		if isText(l.Payload) {
			j.Payload = string(l.Payload)
		} else {
			j.PayloadBase64 = base64.StdEncoding.EncodeToString(l.Payload)
		}
		out = append(out, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// isText tells a payload worth printing as a string: UTF-8 without control characters
// other than white space.
func isText(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) && r != '\n' && r != '\r' && r != '\t' {
			return false
		}
	}
	return true
}
