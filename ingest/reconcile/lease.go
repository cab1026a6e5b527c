package reconcile

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Locker serializes repairs of one database across processes. Lock returns once this
// process holds the lock, with a context that ends if it loses it, and the function that
// releases it.
type Locker interface {
	Lock(ctx context.Context) (context.Context, func(), error)
}

// LeaseBucket is the JetStream key-value bucket NATSLease keeps its leases in.
const LeaseBucket = "KEYTRAIL_RECONCILE"

// NATSLease is a Locker on a JetStream key-value bucket: one key per ClickHouse database,
// created only if absent (an atomic compare-and-set), refreshed while held and deleted on
// release. The bucket's TTL frees the lease of a process that died holding it.
//
// A holder that cannot refresh the lease in time loses it: its context is cancelled, so its
// next statement fails. A repair insert already sent when that happens still commits; the
// TTL is many times the refresh period, so that takes a stall of tens of seconds.
type NATSLease struct {
	kv      jetstream.KeyValue
	key     string
	owner   []byte
	ttl     time.Duration
	refresh time.Duration
	poll    time.Duration
}

// LeaseConfig configures a NATSLease.
type LeaseConfig struct {
	JetStream jetstream.JetStream
	// Database names what is locked: the ClickHouse database the repairs write.
	Database string
	// TTL is how long a lease outlives its holder's last refresh (default 30s); it is
	// refreshed every TTL/4.
	TTL time.Duration
}

// Validate reports every problem with the configuration at once.
func (c LeaseConfig) Validate() error {
	var errs []error
	if c.JetStream == nil {
		errs = append(errs, errors.New("reconcile lease: jetstream is required"))
	}
	if c.Database == "" {
		errs = append(errs, errors.New("reconcile lease: database is required"))
	}
	if c.TTL < 0 {
		errs = append(errs, errors.New("reconcile lease: ttl must not be negative"))
	}
	return errors.Join(errs...)
}

// NewNATSLease creates (or reuses) the bucket and returns the lease of cfg.Database.
func NewNATSLease(ctx context.Context, cfg LeaseConfig) (*NATSLease, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = 30 * time.Second
	}
	kv, err := cfg.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: LeaseBucket, Description: "keytrail: who is repairing the rollups of a ClickHouse database",
		History: 1, TTL: cfg.TTL, Storage: jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("reconcile lease: key-value bucket %s: %w", LeaseBucket, err)
	}
	// Database names may hold characters keys may not: the key is a digest of the name.
	sum := sha256.Sum256([]byte(cfg.Database))
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &NATSLease{
		kv: kv, key: "db-" + hex.EncodeToString(sum[:12]), owner: []byte(hex.EncodeToString(id[:])),
		ttl: cfg.TTL, refresh: cfg.TTL / 4, poll: 100 * time.Millisecond,
	}, nil
}

// Lock waits until no other process holds the lease, then takes it.
func (l *NATSLease) Lock(ctx context.Context) (context.Context, func(), error) {
	var rev uint64
	for {
		var err error
		if rev, err = l.kv.Create(ctx, l.key, l.owner); err == nil {
			break
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, nil, err
		}
		t := time.NewTimer(l.poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-t.C:
		}
	}
	held, lose := context.WithCancel(ctx)
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(l.refresh)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(context.Background(), l.refresh)
			next, err := l.kv.Update(rctx, l.key, l.owner, rev)
			cancel()
			if err != nil {
				lose()
				return
			}
			rev = next
		}
	}()
	release := func() {
		close(done)
		<-stopped
		lose()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Only our own revision: if the lease was lost and taken, it is not ours to delete.
		_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev))
	}
	return held, release, nil
}
