package broker_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/keytrail/keytrail/ingest/broker"
)

// Provision tries again while JetStream leaves a request unanswered, and gives up at once on
// an error another attempt cannot fix.
func TestProvisionRetriesOnlyWhatAnAnswerCanFix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	calls := 0
	err := broker.Provision(ctx, "stream X", func(context.Context) error {
		calls++
		if calls < 3 {
			return nats.ErrTimeout
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("two time-outs, then success: %d calls, error %v; want 3 calls, no error", calls, err)
	}

	invalid := errors.New("invalid stream config")
	calls = 0
	err = broker.Provision(ctx, "stream X", func(context.Context) error {
		calls++
		return invalid
	})
	if !errors.Is(err, invalid) || calls != 1 || err.Error() != "stream X (attempt 1): invalid stream config" {
		t.Errorf("an invalid configuration: %d calls, error %v; want 1 call, %q", calls, err, "stream X (attempt 1): invalid stream config")
	}

	cancelled, cancel := context.WithCancel(ctx)
	calls = 0
	err = broker.Provision(cancelled, "stream X", func(context.Context) error {
		calls++
		cancel()
		return nats.ErrTimeout
	})
	if !errors.Is(err, nats.ErrTimeout) || calls != 1 {
		t.Errorf("a time-out after the caller gave up: %d calls, error %v; want 1 call, the time-out", calls, err)
	}
}
