package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// poisonKindHeader names the poison kind on each message; the dead-letter copy keeps the
// original headers, so the test can tell which dead letter is which.
const poisonKindHeader = "Poison-Kind"

// poisonMessage is one message to publish as it is, and what the ingester must do with it.
type poisonMessage struct {
	kind, subject, contentType, msgID string
	data                              []byte
	// reason is the Keytrail-Reason the dead letter must carry; detail a fragment of its
	// Keytrail-Detail (the field at fault).
	reason, detail string
}

// poisonKinds builds the poison of one round. valid is the usage event published just before
// the poison, whose id the duplicate-id poison reuses with other content.
func poisonKinds(t *testing.T, subjects event.Subjects, round int, valid *keytrailv1.UsageEvent) []poisonMessage {
	t.Helper()
	id := func(kind string) string { return fmt.Sprintf("poison-%d-%s", round, kind) }
	usage := func(kind string, mutate func(*keytrailv1.UsageEvent)) *keytrailv1.UsageEvent {
		e := poisonUsage(id(kind), time.Now().Add(-10*time.Minute))
		if mutate != nil {
			mutate(e)
		}
		return e
	}
	pb := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	acme := subjects.Usage("acme")

	wrongType, err := event.EncodingJSON.Marshal(usage("json_wrong_type", nil))
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(wrongType, &fields); err != nil {
		t.Fatal(err)
	}
	fields["statusCode"] = "two hundred" // a JSON string where a number belongs
	if wrongType, err = json.Marshal(fields); err != nil {
		t.Fatal(err)
	}

	// Go's protobuf refuses to marshal invalid UTF-8 in a string field, so it is spliced into
	// the encoded bytes in place of a placeholder of the same length.
	badUTF8 := pb(usage("invalid_utf8", func(e *keytrailv1.UsageEvent) { e.Service = "svc-PLACEHOLDER" }))
	badUTF8 = bytes.Replace(badUTF8, []byte("PLACEHOLDER"), []byte("bad\xff\xfe\xfdutf-8"), 1)

	forged := proto.Clone(valid).(*keytrailv1.UsageEvent)
	forged.CostMicros += 1_000_000

	return []poisonMessage{
		{kind: "not_protobuf", subject: acme, data: []byte("not a protobuf \xff\xff\xff"), reason: "undecodable", detail: "usage event"},
		{kind: "not_json", subject: acme, contentType: event.ContentTypeJSON, data: []byte(`{"eventId": "x", "time": `), reason: "undecodable", detail: "application/json"},
		{kind: "json_wrong_type", subject: acme, contentType: event.ContentTypeJSON, data: wrongType, reason: "undecodable", detail: "uint32 field statusCode"},
		{kind: "invalid_utf8", subject: acme, data: badUTF8, reason: "undecodable", detail: "UTF-8"},
		{kind: "missing_event_id", subject: acme, data: pb(usage("missing_event_id", func(e *keytrailv1.UsageEvent) { e.EventId = "" })), reason: "missing_field", detail: "event_id is required"},
		{kind: "missing_key_id", subject: acme, data: pb(usage("missing_key_id", func(e *keytrailv1.UsageEvent) { e.KeyId = "" })), reason: "missing_field", detail: "key_id is required"},
		{kind: "missing_time", subject: acme, data: pb(usage("missing_time", func(e *keytrailv1.UsageEvent) { e.Time = nil })), reason: "missing_field", detail: "time is required"},
		{kind: "unknown_action", subject: subjects.Lifecycle("acme"), data: pb(&keytrailv1.LifecycleEvent{
			EventId: id("unknown_action"), Time: timestamppb.New(time.Now().Add(-time.Minute)), Project: "acme",
			KeyId: "key_a", Action: keytrailv1.Action(99), Actor: "alice",
		}), reason: "unknown_action", detail: "action 99"},
		{kind: "time_far_future", subject: acme, data: pb(usage("time_far_future", func(e *keytrailv1.UsageEvent) { e.Time = timestamppb.New(time.Now().AddDate(10, 0, 0)) })), reason: "time_out_of_range", detail: "after the ingester's clock"},
		{kind: "time_before_2000", subject: acme, data: pb(usage("time_before_2000", func(e *keytrailv1.UsageEvent) {
			e.Time = timestamppb.New(time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC))
		})), reason: "time_out_of_range", detail: "before 2000"},
		{kind: "oversize", subject: acme, data: pb(usage("oversize", func(e *keytrailv1.UsageEvent) { e.RequestId = strings.Repeat("r", 70<<10) })), reason: "oversize", detail: "at most 65536"},
		{kind: "negative_cost", subject: acme, data: pb(usage("negative_cost", func(e *keytrailv1.UsageEvent) { e.CostMicros = -1 })), reason: "negative_cost", detail: "cost_micros -1"},
		{kind: "status_out_of_range", subject: acme, data: pb(usage("status_out_of_range", func(e *keytrailv1.UsageEvent) { e.StatusCode = 42 })), reason: "invalid_field", detail: "status_code 42"},
		{kind: "control_character", subject: acme, data: pb(usage("control_character", func(e *keytrailv1.UsageEvent) { e.Endpoint = "/v1/chat\x1b[2J" })), reason: "invalid_field", detail: "endpoint contains control character"},
		{kind: "white_space_key", subject: acme, data: pb(usage("white_space_key", func(e *keytrailv1.UsageEvent) { e.KeyId = "key a" })), reason: "invalid_field", detail: "key_id contains white space"},
		{kind: "duplicate_id_other_content", subject: acme, msgID: fmt.Sprintf("replay-%d", round), data: pb(forged), reason: "duplicate_event_id", detail: "different content"},
		{kind: "bad_content_type", subject: acme, contentType: "text/plain", data: pb(usage("bad_content_type", nil)), reason: "bad_content_type", detail: "text/plain"},
		{kind: "project_mismatch", subject: acme, data: pb(usage("project_mismatch", func(e *keytrailv1.UsageEvent) { e.Project = "globex" })), reason: "project_mismatch", detail: `project "globex"`},
		{kind: "bad_subject", subject: acme + ".extra", data: pb(usage("bad_subject", nil)), reason: "bad_subject", detail: "<prefix>.<kind>.<project>"},
	}
}

func poisonUsage(id string, at time.Time) *keytrailv1.UsageEvent {
	return &keytrailv1.UsageEvent{
		EventId: id, Time: timestamppb.New(at), Project: "acme", KeyId: "key_a", Service: "billing",
		GatewayInstance: "gw-1", Method: "POST", Endpoint: "/v1/chat/completions", Model: "gpt-4o", Provider: "openai",
		StatusCode: 200, LatencyMs: 120, InputTokens: 100, OutputTokens: 50, CostMicros: 2500,
		ClientIp: "10.0.0.7", RequestId: "req-" + id,
	}
}

// Fault: 19 kinds of poison (not protobuf, not JSON, a JSON string for a number, invalid
// UTF-8, missing event_id / key_id / time, unknown action, time 10 years ahead, time before
// 2000, a 70 KiB payload, negative cost, status 42, a control character, white space in
// key_id, an event id reused with other content under another Nats-Msg-Id, Content-Type
// text/plain, project not matching the subject, a subject with an extra token), each
// published between valid events, in 3 rounds. Each round also repeats a stored event
// under another Nats-Msg-Id (same content: a quiet duplicate, not poison).
// Load: 3 rounds x 19 poison = 57 poison messages, 3 x (4 + 19 x 4) = 240 valid usage
// events (4 before the first poison of a round and 4 after each), 3 valid lifecycle events,
// 3 exact duplicates.
// Expect: exactly the 57 poison messages in the dead-letter stream, each with its exact
// Keytrail-Reason, a detail naming the field, the original subject, stream sequence and
// payload; keytrail_ingest_events_dead_lettered_total per reason exactly (undecodable 12,
// missing_field 9, invalid_field 9, time_out_of_range 6, and 3 each for unknown_action,
// oversize, negative_cost, duplicate_event_id, bad_content_type, project_mismatch,
// bad_subject); keytrail_ingest_duplicates_dropped_total{usage} 3; storage (the memory
// sink: what is tested here is the ingester's validation and routing) holds 240 usage rows
// of 240 distinct events and 3 lifecycle rows, none of them poison, and the events stream is
// fully acknowledged.
func TestPoisonIsDeadLetteredWithItsReasonAndValidEventsAroundItAreStored(t *testing.T) {
	t.Parallel()
	const rounds, validPerGap = 3, 4
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	st := memsink.NewStorage()
	reg := prometheus.NewRegistry()
	poisonRunIngester(t, js, memsink.New(st), ingest.NewMetrics(reg))
	subjects := js.Streams.Subjects
	ctx := context.Background()

	publishRaw := func(subject, msgID, contentType, kind string, data []byte) uint64 {
		t.Helper()
		msg := nats.NewMsg(subject)
		msg.Data = data
		msg.Header.Set(nats.MsgIdHdr, msgID)
		if contentType != "" {
			msg.Header.Set(event.ContentTypeHeader, contentType)
		}
		if kind != "" {
			msg.Header.Set(poisonKindHeader, kind)
		}
		ack, err := js.JS.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatalf("publish %s: %v", msgID, err)
		}
		if ack.Duplicate {
			t.Fatalf("publish %s: the stream dropped it as a duplicate", msgID)
		}
		return ack.Sequence
	}

	type sent struct {
		poisonMessage
		seq uint64
	}
	poison := map[string]sent{} // by "round/kind"
	wantReasons := map[string]float64{}
	var validUsage, validLifecycle uint64
	base := time.Now().Add(-30 * time.Minute)
	for round := 1; round <= rounds; round++ {
		var last *keytrailv1.UsageEvent
		publishValid := func(n int) {
			for range n {
				e := poisonUsage(fmt.Sprintf("valid-%d-%d", round, validUsage), base.Add(time.Duration(validUsage)*time.Second))
				b, _ := proto.Marshal(e)
				publishRaw(subjects.Usage("acme"), e.EventId, "", "", b)
				validUsage++
				last = e
			}
		}
		publishValid(validPerGap)
		for _, p := range poisonKinds(t, subjects, round, last) {
			msgID := p.msgID
			if msgID == "" {
				msgID = fmt.Sprintf("poison-msg-%d-%s", round, p.kind)
			}
			seq := publishRaw(p.subject, msgID, p.contentType, p.kind, p.data)
			poison[fmt.Sprintf("%d/%s", round, p.kind)] = sent{p, seq}
			wantReasons[p.reason]++
			publishValid(validPerGap)
		}
		// The same stored event again under another message id: dropped quietly.
		b, _ := proto.Marshal(last)
		publishRaw(subjects.Usage("acme"), fmt.Sprintf("again-%d", round), "", "", b)
		lc := &keytrailv1.LifecycleEvent{
			EventId: fmt.Sprintf("valid-lc-%d", round), Time: timestamppb.New(base), Project: "acme", KeyId: "key_a",
			Action: keytrailv1.Action_ACTION_CREATED, Actor: "alice", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER,
		}
		b, _ = proto.Marshal(lc)
		publishRaw(subjects.Lifecycle("acme"), lc.EventId, "", "", b)
		validLifecycle++
	}
	if want := uint64(rounds * (validPerGap + 19*validPerGap)); validUsage != want || len(poison) != rounds*19 {
		t.Fatalf("published %d valid usage events and %d poison, want %d and %d", validUsage, len(poison), want, rounds*19)
	}

	testenv.Eventually(t, 30*time.Second, func() error {
		u, _ := st.Count(memsink.UsageTable)
		l, _ := st.Count(memsink.LifecycleTable)
		if uint64(u) != validUsage || uint64(l) != validLifecycle {
			return fmt.Errorf("storage holds %d usage and %d lifecycle events, want %d and %d", u, l, validUsage, validLifecycle)
		}
		return nil
	})
	js.AwaitAcknowledged(t, 10*time.Second)
	if _, n := st.Count(memsink.UsageTable); uint64(n) != validUsage {
		t.Errorf("distinct usage ids %d, want %d", n, validUsage)
	}
	for _, r := range st.Rows(memsink.UsageTable) {
		if strings.HasPrefix(r.ID(), "poison-") || r.Record.Event.Usage.GetCostMicros() != 2500 {
			t.Errorf("poison or forged row stored: %s cost %d", r.ID(), r.Record.Event.Usage.GetCostMicros())
		}
	}

	// Every poison message is in the dead-letter stream, once, with its reason.
	dl, err := js.JS.Stream(ctx, js.Streams.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := dl.CachedInfo().State.Msgs; n != uint64(len(poison)) {
		t.Errorf("dead-letter stream holds %d messages, want %d", n, len(poison))
	}
	seen := map[string]bool{}
	for seq := uint64(1); seq <= dl.CachedInfo().State.LastSeq; seq++ {
		raw, err := dl.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		var found *sent
		for key, p := range poison {
			if strconv.FormatUint(p.seq, 10) == raw.Header.Get(ingest.HeaderStreamSeq) {
				p := p
				found = &p
				seen[key] = true
			}
		}
		if found == nil {
			t.Errorf("unexpected dead letter %s %v", raw.Subject, raw.Header)
			continue
		}
		p := found.poisonMessage
		kind := "usage"
		if strings.HasPrefix(p.subject, subjects.Prefix+".lifecycle.") {
			kind = "lifecycle"
		}
		if p.kind == "bad_subject" {
			kind = "unknown"
		}
		if got := raw.Header.Get(ingest.HeaderReason); got != p.reason {
			t.Errorf("%s: reason %q, want %q", p.kind, got, p.reason)
		}
		if got := raw.Header.Get(ingest.HeaderDetail); !strings.Contains(got, p.detail) {
			t.Errorf("%s: detail %q does not mention %q", p.kind, got, p.detail)
		}
		if raw.Subject != subjects.DeadLetter(kind) || raw.Header.Get(ingest.HeaderOriginalSubject) != p.subject ||
			raw.Header.Get(poisonKindHeader) != p.kind || !bytes.Equal(raw.Data, p.data) {
			t.Errorf("%s: dead letter on %s, original subject %q, kind header %q, payload equal %v",
				p.kind, raw.Subject, raw.Header.Get(ingest.HeaderOriginalSubject), raw.Header.Get(poisonKindHeader), bytes.Equal(raw.Data, p.data))
		}
	}
	for key := range poison {
		if !seen[key] {
			t.Errorf("poison %s was not dead-lettered", key)
		}
	}

	// The metrics count every dead letter by its reason, and nothing else.
	gotReasons := poisonCounters(t, reg, "keytrail_ingest_events_dead_lettered_total", "reason")
	if fmt.Sprint(gotReasons) != fmt.Sprint(wantReasons) {
		t.Errorf("dead letters by reason %v, want %v", gotReasons, wantReasons)
	}
	inserted := poisonCounters(t, reg, "keytrail_ingest_events_inserted_total", "kind")
	duplicates := poisonCounters(t, reg, "keytrail_ingest_duplicates_dropped_total", "kind")
	if inserted["usage"] != float64(validUsage) || inserted["lifecycle"] != float64(validLifecycle) || fmt.Sprint(duplicates) != fmt.Sprintf("map[usage:%d]", rounds) {
		t.Errorf("inserted %v, duplicates dropped %v; want usage %d, lifecycle %d, %d usage duplicates", inserted, duplicates, validUsage, validLifecycle, rounds)
	}

	reasons := make([]string, 0, len(gotReasons))
	for r, n := range gotReasons {
		reasons = append(reasons, fmt.Sprintf("%s=%v", r, n))
	}
	sort.Strings(reasons)
	rows, distinct := st.Count(memsink.UsageTable)
	t.Logf("final: %d valid usage and %d lifecycle events stored (%d rows of %d distinct events), %d poison dead-lettered: %s; %v duplicates dropped",
		validUsage, validLifecycle, rows, distinct, len(poison), strings.Join(reasons, " "), duplicates["usage"])
}

// poisonRunIngester runs an ingester on sink with the given metrics until the test ends.
func poisonRunIngester(t *testing.T, js *testenv.JetStream, sink ingest.Sink, metrics *ingest.Metrics) {
	t.Helper()
	testenv.RunIngester(t, ingest.Config{
		JetStream: js.JS, Streams: js.Streams, Sink: sink, Metrics: metrics,
		BatchSize: 1000, FlushInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
}

// poisonCounters reads a counter vector from the registry as label value -> count.
func poisonCounters(t *testing.T, reg *prometheus.Registry, name, label string) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
