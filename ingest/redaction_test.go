package ingest_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
)

// wantNoSecretAnywhere fails the test for every secret found in a cell of any table of the
// test database, in any dead-letter message (payload, header names and values) or in the log.
func (e *dlEnv) wantNoSecretAnywhere(t *testing.T, secrets map[string]string) {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.JS.Stream(ctx, e.js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	var dl strings.Builder
	for seq := s.CachedInfo().State.FirstSeq; seq > 0 && seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&dl, "%s %q %s\n", m.Subject, m.Header, m.Data)
	}
	logs := e.logs.String()
	cells := testenv.CountEachOccurrence(t, e.db, secrets)
	for path, secret := range secrets {
		if n := cells[path]; n != 0 {
			t.Errorf("%s: the secret is in %d ClickHouse cells", path, n)
		}
		if strings.Contains(dl.String(), secret) {
			t.Errorf("%s: the secret is in the dead-letter stream", path)
		}
		if strings.Contains(logs, secret) {
			t.Errorf("%s: the secret is in the log", path)
		}
	}
	if t.Failed() {
		t.Logf("dead letters:\n%s\nlog:\n%s", dl.String(), logs)
	}
}

// Paths a secret takes into a rejected message, each with its own secret: the project of an
// event published on another project's subject; a request_id of an event 10 years ahead
// (decodable: redacted field by field); the bytes of an undecodable payload; an
// Authorization header; a secret-shaped subject token; an unknown JSON field; a JSON value
// that the decoder's error message quotes; the project of a rejected event while the
// dead-letter stream is deleted (the dead_letters table); and the event_id of a valid event.
// Expect: every rejected message dead-lettered with its reason, none of the secrets in any
// table, dead letter or log line; the decodable dead letter's payload is the event as
// ingestion would store it (fingerprints in place of the secrets) and its headers give the
// original payload's length and sha256; the valid event is stored under its fingerprint.
func TestNoSecretReachesDeadLettersTablesOrLogs(t *testing.T) {
	t.Parallel()
	secrets := map[string]string{
		"project":          "sk-proj-Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8Ii9Jj0",
		"request_id":       "ghp_Bb1Cc2Dd3Ee4Ff5Gg6Hh7Ii8Jj9Kk0Ll1Mm2",
		"payload bytes":    "AKIAC1C2C3C4C5C6C7C8",
		"header":           "xoxb-D1234567890-abcdefDEF",
		"subject":          "sk_live_E1e2E3e4E5e6E7e8E9e0",
		"unknown field":    "glpat-F1f2F3f4F5f6F7f8F9f0",
		"decoder error":    "AIzaG1g2G3g4G5g6G7g8G9g0G1g2G3g4G5g6G7g",
		"fallback project": "sk-ant-H1h2H3h4H5h6H7h8H9h0",
		"event_id":         "Zx8Qw2Er4Ty6Ui8Op0As2Df4Gh6Jk8LiI9",
	}
	e := newDLEnv(t, broker.DefaultStreamConfig(), nil)
	ctx := context.Background()
	subjects := e.js.Streams.Subjects
	acme := subjects.Usage("acme")
	send := func(kind, subject, contentType string, data []byte, header ...string) {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Header.Set(poisonKindHeader, kind)
		msg.Header.Set(nats.MsgIdHdr, "msg-"+kind)
		if contentType != "" {
			msg.Header.Set(event.ContentTypeHeader, contentType)
		}
		for i := 0; i+1 < len(header); i += 2 {
			msg.Header.Set(header[i], header[i+1])
		}
		msg.Data = data
		e.publishMsg(t, msg)
	}
	pb := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	usage := func(id string, mutate func(*keytrailv1.UsageEvent)) *keytrailv1.UsageEvent {
		u := usageEvent(id, "key_a", "billing", time.Now().Add(-time.Minute), 200)
		mutate(u)
		return u
	}
	future := timestamppb.New(time.Now().AddDate(10, 0, 0))

	// The dead-letter stream deleted first (it is created again below): this one goes to the
	// dead_letters table.
	if err := e.js.JS.DeleteStream(ctx, e.js.Streams.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	send("fallback project", acme, "", pb(usage("r0", func(u *keytrailv1.UsageEvent) { u.Project = secrets["fallback project"] })))
	e.waitDrained(t)
	if err := broker.EnsureStreams(ctx, e.js.JS, e.js.Streams); err != nil {
		t.Fatal(err)
	}

	send("project", acme, "", pb(usage("r1", func(u *keytrailv1.UsageEvent) { u.Project = secrets["project"] })))
	decodable := usage("r2", func(u *keytrailv1.UsageEvent) { u.RequestId, u.Time = "Bearer "+secrets["request_id"], future })
	send("request_id", acme, "", pb(decodable))
	garbage := []byte("\xff\xfe not an event " + secrets["payload bytes"] + " \x00")
	send("payload bytes", acme, "", garbage)
	send("header", acme, "", []byte("\xff\xfe"), "Authorization", "Bearer "+secrets["header"])
	send("subject", subjects.Usage(secrets["subject"]), "", pb(usage("r5", func(*keytrailv1.UsageEvent) {})))
	send("unknown field", acme, event.ContentTypeJSON,
		[]byte(`{"eventId":"r6","time":"`+future.AsTime().Format(time.RFC3339)+`","project":"acme","keyId":"key_a","service":"billing","statusCode":200,"leak":"`+secrets["unknown field"]+`"}`))
	send("decoder error", acme, event.ContentTypeJSON, []byte(`{"eventId":"r7","statusCode":"`+secrets["decoder error"]+`"}`))
	send("event_id", acme, "", pb(usage(secrets["event_id"], func(*keytrailv1.UsageEvent) {})))
	e.waitDrained(t)
	testenv.WaitForEvents(t, e.db, 1, 0, 10*time.Second)

	dl := e.deadLetters(t)
	for kind, reason := range map[string]string{
		"project": "project_mismatch", "request_id": "time_out_of_range", "payload bytes": "undecodable", "header": "undecodable",
		"subject": "project_mismatch", "unknown field": "time_out_of_range", "decoder error": "undecodable",
	} {
		if m := dl[kind]; m == nil || m.Header.Get("Keytrail-Reason") != reason {
			t.Errorf("%s: dead letter %v, want reason %s", kind, m, reason)
		}
	}
	if len(dl) != 7 {
		t.Errorf("%d dead letters in the stream, want 7", len(dl))
	}
	if got, want := fmt.Sprint(e.tableDeadLetters(t)), "[1 project_mismatch no_stream]"; got != want {
		t.Errorf("dead_letters table %s, want %s", got, want)
	}
	if n := testenv.QueryUint64(t, e.db.Conn, "SELECT count() FROM usage_events WHERE event_id = ?", event.Fingerprint(secrets["event_id"])); n != 1 {
		t.Errorf("valid event stored %d times under its fingerprint, want 1", n)
	}

	// The decodable one carries the event as ingestion would store it, and how to match the
	// original.
	if m := dl["request_id"]; m != nil {
		want := proto.Clone(decodable).(*keytrailv1.UsageEvent)
		event.RedactUsage(want)
		got := &keytrailv1.UsageEvent{}
		original := pb(decodable)
		sum := sha256.Sum256(original)
		if err := proto.Unmarshal(m.Data, got); err != nil || !proto.Equal(got, want) || got.RequestId != event.Fingerprint("Bearer "+secrets["request_id"]) {
			t.Errorf("redacted payload %v (%v), want %v", got, err, want)
		}
		if m.Header.Get("Keytrail-Payload-Bytes") != fmt.Sprint(len(original)) || m.Header.Get("Keytrail-Payload-Sha256") != hex.EncodeToString(sum[:]) || m.Header.Get("Keytrail-Redacted") != "1" {
			t.Errorf("payload headers %v", m.Header)
		}
	}
	// The undecodable one keeps its length.
	if m := dl["payload bytes"]; m != nil && len(m.Data) != len(garbage) {
		t.Errorf("masked payload is %d bytes, want %d", len(m.Data), len(garbage))
	}
	e.wantNoSecretAnywhere(t, secrets)
	// The search finds what is there: the valid event's fingerprinted id, in one cell.
	if n := testenv.CountEachOccurrence(t, e.db, map[string]string{"id": event.Fingerprint(secrets["event_id"])})["id"]; n != 1 {
		t.Errorf("the fingerprinted event id is in %d cells, want 1", n)
	}
}
