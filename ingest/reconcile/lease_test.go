package reconcile_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/ingest/broker"
	"github.com/keytrail/keytrail/ingest/reconcile"
	"github.com/keytrail/keytrail/internal/testenv"
)

// Two processes' leases on one database exclude each other; a lease on another database
// does not wait; a lease whose holder died (never released, never refreshed) frees itself
// after its TTL.
func TestNATSLeaseExcludesAcrossHolders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	lease := func(db string) *reconcile.NATSLease {
		l, err := reconcile.NewNATSLease(ctx, reconcile.LeaseConfig{JetStream: js.JS, Database: db, TTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b, other := lease("keytrail"), lease("keytrail"), lease("keytrail_staging")

	heldA, releaseA, err := a.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2500*time.Millisecond) // past the TTL: a's refreshes keep it
	_, _, err = b.Lock(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second holder's Lock while the first holds it: %v, want deadline exceeded", err)
	}
	if heldA.Err() != nil {
		t.Fatalf("first holder lost the lease while refreshing it: %v", heldA.Err())
	}
	_, releaseOther, err := other.Lock(ctx)
	if err != nil {
		t.Fatalf("a lease on another database: %v", err)
	}
	releaseOther()
	releaseA()
	if heldA.Err() == nil {
		t.Error("the holder's context is still live after release")
	}
	_, releaseB, err := b.Lock(ctx)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	releaseB()

	// A holder that died: its key is there and nobody refreshes it.
	kv, err := js.JS.KeyValue(ctx, reconcile.LeaseBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Fatalf("keys left after every release: %v", keys)
	}
	_, releaseA, err = a.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ = kv.Keys(ctx)
	if len(keys) != 1 {
		t.Fatalf("lease keys %v, want one", keys)
	}
	dead := keys[0]
	releaseA()
	if _, err := kv.Create(ctx, dead, []byte("dead-holder")); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	_, releaseB, err = b.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	releaseB()
	if waited := time.Since(started); waited < 500*time.Millisecond {
		t.Errorf("took a dead holder's lease after %s, before its 1s TTL", waited)
	}
}
