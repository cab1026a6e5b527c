package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/internal/testenv"
)

func TestParseConfig(t *testing.T) {
	for _, name := range []string{"KEYTRAIL_NATS_URL", "KEYTRAIL_RATE", "KEYTRAIL_HISTORY", "KEYTRAIL_DURATION", "KEYTRAIL_SEED", "KEYTRAIL_JSON", "KEYTRAIL_SUBJECT_PREFIX"} {
		t.Setenv(name, "")
	}
	t.Setenv("KEYTRAIL_RATE", "50")
	t.Setenv("KEYTRAIL_JSON", "true")
	t.Setenv("KEYTRAIL_SUBJECT_PREFIX", "kt")
	c, err := parseConfig([]string{"--rate", "75", "--duration", "1m"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{NATSURL: "nats://127.0.0.1:4222", Rate: 75, Duration: time.Minute, Seed: 1, JSON: true, SubjectPrefix: "kt"}
	if c != want {
		t.Errorf("config %+v, want %+v", c, want)
	}
	t.Setenv("KEYTRAIL_RATE", "fast")
	t.Setenv("KEYTRAIL_SEED", "x")
	t.Setenv("KEYTRAIL_JSON", "")
	t.Setenv("KEYTRAIL_SUBJECT_PREFIX", "")
	if _, err := parseConfig([]string{"--json=maybe"}); err == nil || err.Error() != `invalid value "maybe" for -json (env KEYTRAIL_JSON): want true or false (or 1 or 0)
invalid value "fast" for -rate (env KEYTRAIL_RATE): want a number
invalid value "x" for -seed (env KEYTRAIL_SEED): want a whole number` {
		t.Errorf("malformed values: %v", err)
	}
	t.Setenv("KEYTRAIL_RATE", "")
	t.Setenv("KEYTRAIL_SEED", "")
	if _, err := parseConfig([]string{"--rate", "0", "--history", "200h", "--duration", "-1s", "--subject-prefix", ""}); err == nil ||
		err.Error() != `invalid value "0" for -rate (env KEYTRAIL_RATE): want a positive number of events per second
invalid value "200h0m0s" for -history (env KEYTRAIL_HISTORY): want a duration from 0 to 168h (7 days)
invalid value "-1s" for -duration (env KEYTRAIL_DURATION): want 0 (until interrupted) or a positive duration
-subject-prefix (env KEYTRAIL_SUBJECT_PREFIX) is required` {
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

	logs := &testenv.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), []string{"--nats-url", srv.ClientURL(), "--duration", "4s", "--rate", "300", "--seed", "5"}, logs)
	}()
	testenv.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(logs.String(), "waiting for keytrail to create the events stream") {
			return fmt.Errorf("no waiting message; log:\n%s", logs)
		}
		return nil
	})

	_, js := testenv.Connect(t, srv.ClientURL())
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
