package memsink_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keytrail/keytrail/ingest"
	"github.com/keytrail/keytrail/ingest/memsink"
)

// The programmed faults do what they say, to the inserts of the table they name, as often
// as they say.
func TestProgrammedFaults(t *testing.T) {
	ctx := context.Background()
	st := memsink.NewStorage()
	s := memsink.New(st)
	u := func(id string, seq uint64) ingest.Record { return usage(id, "key_a", at, seq, seq) }

	s.Fail(memsink.LifecycleTable, 1, memsink.Refuse) // not hit by usage inserts
	s.Fail("", 2, memsink.Refuse)
	s.Fail(memsink.UsageTable, 1, memsink.CommitThenFail)
	for i, want := range []error{memsink.ErrRefused, memsink.ErrRefused, memsink.ErrReplyLost, nil} {
		if err := s.Write(ctx, ingest.RowsOf([]ingest.Record{u("u1", 1)})); !errors.Is(err, want) {
			t.Fatalf("write %d: %v, want %v", i+1, err, want)
		}
	}
	// Committed twice: the reply-lost insert and the next one (the sink did not know).
	if n := st.TimesStored(memsink.UsageTable, "u1"); n != 2 {
		t.Errorf("u1 stored %d times, want 2", n)
	}
	if err := s.Write(ctx, ingest.RowsOf([]ingest.Record{lifecycle("l1", "acme", "alice", at, 2)})); !errors.Is(err, memsink.ErrRefused) {
		t.Errorf("lifecycle write: %v, want the lifecycle fault", err)
	}
	if got := fmt.Sprint(s.Inserts()); got != "[{usage_events 1 refused} {usage_events 1 refused} {usage_events 1 committed, reported failed} {usage_events 1 stored} {lifecycle_events 1 refused}]" {
		t.Errorf("inserts %s", got)
	}

	s.FailChecks(1)
	if _, err := s.Classify(ctx, []ingest.Record{u("u1", 1)}); !errors.Is(err, memsink.ErrCheckFailed) {
		t.Errorf("first check: %v", err)
	}
	if p, err := s.Classify(ctx, []ingest.Record{u("u1", 1), u("u2", 2)}); err != nil || fmt.Sprint(p) != fmt.Sprint([]ingest.Presence{ingest.AlreadyStored, ingest.NotStored}) {
		t.Errorf("second check: %v %v", p, err)
	}
	if got := fmt.Sprint(s.Checks()); got != "[{1 true} {2 false}]" {
		t.Errorf("checks %s", got)
	}

	// A held insert whose caller gives up still commits once released; a check waits for it.
	gate := s.Hold(memsink.UsageTable)
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.Write(cctx, ingest.RowsOf([]ingest.Record{u("u3", 3)})) }()
	<-gate.Reached()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned write: %v", err)
	}
	if n := st.TimesStored(memsink.UsageTable, "u3"); n != 0 {
		t.Fatalf("u3 stored %d times before the release", n)
	}
	checked := make(chan []ingest.Presence, 1)
	go func() {
		p, _ := memsink.New(st).Classify(ctx, []ingest.Record{u("u3", 3)})
		checked <- p
	}()
	gate.Release()
	if p := <-checked; fmt.Sprint(p) != fmt.Sprint([]ingest.Presence{ingest.AlreadyStored}) {
		t.Errorf("check after the release: %v", p)
	}
	if last := s.Inserts()[len(s.Inserts())-1]; last.Outcome != memsink.Abandoned {
		t.Errorf("last insert %v", last)
	}

	// Heal drops what was not used.
	s.Fail("", 5, memsink.Refuse)
	s.FailChecks(5)
	s.Heal()
	if err := s.Write(ctx, ingest.RowsOf([]ingest.Record{u("u4", 4)})); err != nil {
		t.Errorf("write after Heal: %v", err)
	}
	if _, err := s.Classify(ctx, []ingest.Record{u("u4", 4)}); err != nil {
		t.Errorf("check after Heal: %v", err)
	}
}
