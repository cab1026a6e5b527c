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

// Two processes' repair leases on one database exclude each other; a lease on another
// database does not wait; release ends the holder's context and leaves no key behind; a
// lease whose holder died (never released, never renewed) frees itself after its TTL.
func TestRepairLeaseExcludesAcrossHolders(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	lease := func(db string) *broker.LeaseKey {
		l, err := broker.OpenLease(ctx, broker.LeaseConfig{JetStream: js.JS, Name: reconcile.LeaseName(db), TTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	a, b, other := lease("keytrail"), lease("keytrail"), lease("keytrail_staging")

	heldA, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2500*time.Millisecond) // past the TTL: a's renewals keep it
	_, err = b.Acquire(short)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second holder's Acquire while the first holds it: %v, want deadline exceeded", err)
	}
	select {
	case <-heldA.Done():
		t.Fatal("first holder lost the lease while renewing it")
	default:
	}
	heldOther, err := other.Acquire(ctx)
	if err != nil {
		t.Fatalf("a lease on another database: %v", err)
	}
	release := func(l *broker.Lease) {
		t.Helper()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	release(heldOther)
	release(heldA)
	select {
	case <-heldA.Done():
	default:
		t.Error("the holder's lease is still live after release")
	}
	heldB, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	release(heldB)

	kv, err := js.JS.KeyValue(ctx, broker.DefaultLeaseBucket)
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
	// A holder that died: its key is there and nobody renews it.
	if _, err := kv.Create(ctx, reconcile.LeaseName("keytrail"), []byte("dead-holder")); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	heldB, err = b.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release(heldB)
	if waited := time.Since(started); waited < 500*time.Millisecond {
		t.Errorf("took a dead holder's lease after %s, before its 1s TTL", waited)
	}
}

// A reconciler given its database's lease checks only while holding it: while another
// process holds it the check waits, and runs once it is released.
func TestCheckHoldsTheRepairLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	js := testenv.NewJetStream(t, broker.DefaultStreamConfig())
	db := testenv.ClickHouse(t)
	open := func() *broker.LeaseKey {
		l, err := broker.OpenLease(ctx, broker.LeaseConfig{JetStream: js.JS, Name: reconcile.LeaseName(db.Name), TTL: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	r, _ := newReconciler(t, db, func(c *reconcile.Config) { c.Lease = open() })
	start := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	evs := events("held", start, time.Minute, 10)
	withViewsDetached(t, db, []string{"usage_key_hourly"}, evs)
	scope := reconcile.Scope{Days: []time.Time{start}, Keys: []string{"key_0", "key_1", "key_2", "key_3", "key_4"}}

	other, err := open().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	rep, err := r.Check(short, scope)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || rep.Repaired() != 0 {
		t.Fatalf("check while another process holds the lease: %d repaired, error %v; want none, deadline exceeded", rep.Repaired(), err)
	}
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err = r.Check(ctx, scope)
	if err != nil {
		t.Fatal(err)
	}
	expect([]string{"usage_key_hourly"}, evs).check(t, rep)
}
