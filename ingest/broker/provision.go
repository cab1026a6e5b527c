package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/internal/retry"
)

// Provisioning calls (create or update a stream, a consumer, a key-value bucket) are retried
// when they time out or JetStream is briefly unavailable. On a NATS cluster several keytrail
// processes starting together create the same streams at once, and nats-server (2.15) then
// creates the stream but may answer none of the concurrent requests (measured: four
// concurrent creates of one R3 stream all timed out after 20 s, the stream existed); a
// leader election at start-up answers "temporarily unavailable". A retry finds the stream
// there and succeeds.
const (
	provisionAttempt = 10 * time.Second
	provisionBudget  = 2 * time.Minute
)

// Provision runs fn, retrying it with backoff while it fails for want of an answer (a time
// out, "JetStream system temporarily unavailable"), within provisionBudget or until ctx ends.
// Other errors (an invalid configuration) return at once.
func Provision(ctx context.Context, what string, fn func(context.Context) error) error {
	deadline := time.Now().Add(provisionBudget)
	attempts := 0
	err := retry.Do(ctx, retry.Policy{First: 250 * time.Millisecond, Max: 2 * time.Second}, func(attempt int) error {
		attempts = attempt
		actx, cancel := context.WithTimeout(ctx, provisionAttempt)
		defer cancel()
		err := fn(actx)
		if err != nil && (!retryable(ctx, err) || time.Now().After(deadline)) {
			return retry.Permanent(err)
		}
		return err
	}, nil)
	if err != nil {
		return fmt.Errorf("%s (attempt %d): %w", what, attempts, err)
	}
	return nil
}

func retryable(parent context.Context, err error) bool {
	if parent.Err() != nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}
