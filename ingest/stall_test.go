package ingest_test

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/memsink"
	"github.com/keytrail/keytrail/internal/testenv"
)

// gauge reads a gauge of the registry.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// Fault: storage refuses every insert while three events wait (stall timeout 300 ms), then
// accepts them again.
// Expect: an idle ingester is never stalled, however long it idles; with the backlog and no
// progress, Stalled names the backlog and keytrail_ingest_stalled is 1; once storage accepts
// the events they are stored, Stalled is nil and the gauge 0.
func TestStalledIngesterIsReported(t *testing.T) {
	t.Parallel()
	e := newMemEnv(t, broker.DefaultStreamConfig(), func(cfg *ingest.Config) {
		cfg.StallTimeout = 300 * time.Millisecond
		cfg.MaxBackoff = 50 * time.Millisecond
	})
	idleSince := float64(time.Now().UnixNano()) / 1e9
	testenv.Eventually(t, 10*time.Second, func() error {
		if at := gauge(t, e.reg, "keytrail_ingest_last_progress_timestamp_seconds"); at < idleSince+0.6 {
			return fmt.Errorf("last progress at %.3f, want idle progress recorded after %.3f", at, idleSince+0.6)
		}
		return nil
	})
	if err := e.ing.Stalled(); err != nil || gauge(t, e.reg, "keytrail_ingest_stalled") != 0 {
		t.Fatalf("idle ingester: stalled %v, gauge %v", err, gauge(t, e.reg, "keytrail_ingest_stalled"))
	}

	e.sink.Fail(memsink.UsageTable, math.MaxInt, memsink.Refuse)
	e.publishValid(t, "s1", "s2", "s3")
	testenv.Eventually(t, 10*time.Second, func() error {
		if err := e.ing.Stalled(); err == nil || !strings.Contains(err.Error(), "3 messages waiting and nothing acknowledged") {
			return fmt.Errorf("stalled: %v", err)
		}
		return nil
	})
	if g := gauge(t, e.reg, "keytrail_ingest_stalled"); g != 1 {
		t.Errorf("keytrail_ingest_stalled = %v while stalled", g)
	}

	e.sink.Heal()
	e.waitDrained(t)
	e.waitStored(t, 3, 0)
	testenv.Eventually(t, 10*time.Second, func() error {
		if err := e.ing.Stalled(); err != nil {
			return err
		}
		if g := gauge(t, e.reg, "keytrail_ingest_stalled"); g != 0 {
			return fmt.Errorf("keytrail_ingest_stalled = %v", g)
		}
		return nil
	})
	if !strings.Contains(e.logs.String(), "ingestion stalled") || !strings.Contains(e.logs.String(), "ingestion resumed") {
		t.Errorf("log:\n%s", e.logs.String())
	}
}
