package testenv_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/internal/testenv"
)

// A pid is only signalled when its command line says whose it is.
func TestProcessMatches(t *testing.T) {
	self := os.Getpid()
	if !testenv.ProcessMatches(self, os.Args[0]) {
		t.Errorf("this test process (%d, %s) does not match itself", self, os.Args[0])
	}
	if testenv.ProcessMatches(self, "clickhouse-server") {
		t.Error("this test process matches clickhouse-server")
	}
	if testenv.ProcessMatches(self, os.Args[0], "--config-file=/nowhere/etc/config.xml") {
		t.Error("this test process matches an argument it was not given")
	}
	if testenv.ProcessMatches(1<<22+1, "nats-server") { // above any pid_max
		t.Error("a pid that cannot exist matches")
	}
}

// A nats-server process killed with SIGKILL comes back on the same URL with the messages
// JetStream acknowledged before the kill.
func TestNATSServerSurvivesKill(t *testing.T) {
	ctx := context.Background()
	srv := testenv.StartNATSServer(t, testenv.NATSServerConfig{})
	url, firstPID := srv.URL, srv.PID()
	_, js := testenv.Connect(t, url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if _, err := js.Publish(ctx, "t.x", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	srv.Kill()
	if srv.PID() != 0 {
		t.Fatalf("pid %d still running after Kill", srv.PID())
	}
	srv.Start()
	if srv.URL != url || srv.PID() == firstPID {
		t.Errorf("restarted on %s as pid %d; want %s and a new pid (was %d)", srv.URL, srv.PID(), url, firstPID)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		s, err := js.Stream(ctx, "T")
		if err != nil {
			return err
		}
		if n := s.CachedInfo().State.Msgs; n != 100 {
			t.Fatalf("stream holds %d messages after the kill, want 100", n)
		}
		return nil
	})
}
