package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest/broker"
)

// syncBuffer is the simulator's log, read by the test while the simulator writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func noEnv(string) (string, bool) { return "", false }

func TestParseConfig(t *testing.T) {
	env := map[string]string{"KEYTRAIL_RATE": "50", "KEYTRAIL_JSON": "true", "KEYTRAIL_SUBJECT_PREFIX": "kt"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	c, err := parseConfig([]string{"--rate", "75", "--duration", "1m"}, lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NATSURL: "nats://127.0.0.1:4222", Rate: 75, Duration: time.Minute, Seed: 1, JSON: true, SubjectPrefix: "kt"}
	if c != want {
		t.Errorf("config %+v, want %+v", c, want)
	}
	env = map[string]string{"KEYTRAIL_RATE": "fast", "KEYTRAIL_SEED": "x"}
	if _, err := parseConfig(nil, lookup); err == nil || !strings.Contains(err.Error(), "KEYTRAIL_RATE") || !strings.Contains(err.Error(), "KEYTRAIL_SEED") {
		t.Errorf("malformed environment: %v", err)
	}
	if _, err := parseConfig([]string{"--rate", "0", "--duration", "-1s", "--subject-prefix", ""}, noEnv); err == nil ||
		err.Error() != "rate 0 must be positive\nduration -1s must not be negative\nsubject-prefix is required" {
		t.Errorf("invalid flags: %v", err)
	}
}

// The simulator starts before keytrail's stream exists, says it is waiting, publishes once
// the stream appears, and flushes on the way out: what it reports acknowledged is stored.
func TestRunWaitsForStreamThenPublishes(t *testing.T) {
	srv, err := broker.RunEmbedded(broker.EmbeddedConfig{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })

	logs := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"--nats-url", srv.ClientURL(), "--duration", "4s", "--rate", "300", "--seed", "5"}, noEnv, logs)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "waiting for keytrail to create the events stream") {
		if time.Now().After(deadline) {
			t.Fatalf("no waiting message; log:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	streams := broker.DefaultStreamConfig()
	if err := broker.EnsureStreams(context.Background(), js, streams); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("simulator did not stop; log:\n%s", logs)
	}

	out := logs.String()
	for _, want := range []string{"events stream found", "rotation_old_key=key_acme_0007", "forgotten_job=legacy-export-cron"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	m := regexp.MustCompile(`msg="simulator stopped" sent=(\d+) acked=(\d+) duplicates=(\d+) retried=\d+ failed=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no final stats in log:\n%s", out)
	}
	sent, _ := strconv.Atoi(m[1])
	acked, _ := strconv.Atoi(m[2])
	dups, _ := strconv.Atoi(m[3])
	if sent < 262 || acked != sent || dups != 0 || m[4] != "0" {
		t.Errorf("final stats %s", m[0])
	}
	s, err := js.Stream(context.Background(), streams.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(info.State.Msgs); got != m[2] {
		t.Errorf("stream holds %s messages, simulator reported %s acknowledged", got, m[2])
	}
}
