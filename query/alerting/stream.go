package alerting

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
)

// Stream defaults.
const (
	// StreamName is the alerts stream.
	StreamName = "KEYTRAIL_ALERTS"
	// DefaultMaxAge is how long alerts are kept.
	DefaultMaxAge = 30 * 24 * time.Hour
	// DefaultDuplicateWindow is how long JetStream remembers alert ids. It must cover at
	// least twice the scan window (an alert re-derived by the next scans or after a restart
	// is dropped); a day also covers restarts during a long episode. Alerts are few, so the
	// id memory is small.
	DefaultDuplicateWindow = 24 * time.Hour
)

// StreamConfig describes the alerts stream.
type StreamConfig struct {
	// Prefix is the first subject token (event.DefaultSubjectPrefix unless configured).
	Prefix          string
	MaxAge          time.Duration
	DuplicateWindow time.Duration
	// Replicas for clustered NATS; 1 for a single server.
	Replicas int
}

// DefaultStreamConfig is the stream the single-process run uses.
func DefaultStreamConfig(prefix string) StreamConfig {
	return StreamConfig{Prefix: prefix, MaxAge: DefaultMaxAge, DuplicateWindow: DefaultDuplicateWindow, Replicas: 1}
}

// Validate reports every problem at once.
func (c StreamConfig) Validate() error {
	var errs []error
	if err := validPrefix(c.Prefix); err != nil {
		errs = append(errs, err)
	}
	if c.MaxAge <= 0 || c.DuplicateWindow <= 0 {
		errs = append(errs, errors.New("alerts stream: max age and duplicate window must be positive"))
	}
	if c.DuplicateWindow > c.MaxAge {
		errs = append(errs, errors.New("alerts stream: duplicate window must not exceed max age"))
	}
	if c.Replicas < 1 {
		errs = append(errs, errors.New("alerts stream: replicas must be at least 1"))
	}
	return errors.Join(errs...)
}

// Subject is where a project's alerts are published: <prefix>.alerts.<project>, the project
// mapped to one subject token as for events.
func Subject(prefix, project string) string {
	subjects := event.Subjects{Prefix: prefix}
	// Reuse the event contract's project-to-token mapping, so a project named "a.b" maps the
	// same way on every keytrail subject.
	token := strings.TrimPrefix(subjects.Usage(project), prefix+".usage.")
	return prefix + ".alerts." + token
}

// Filter is the subject filter of every alert.
func Filter(prefix string) string { return prefix + ".alerts.>" }

// EnsureStream creates or updates the alerts stream with the defaults: subjects
// <prefix>.alerts.>, file storage, limits retention (alerts are kept 30 days whoever read
// them, so several consumers can each follow them), 24 h duplicate window. Safe to call from
// every process at start-up.
func EnsureStream(ctx context.Context, js jetstream.JetStream, prefix string) error {
	return EnsureStreamConfig(ctx, js, DefaultStreamConfig(prefix))
}

// EnsureStreamConfig is EnsureStream with explicit settings.
func EnsureStreamConfig(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "keytrail alerts: one keytrail.v1.AlertEvent per anomaly episode or new caller; Nats-Msg-Id is the alert id",
		Subjects:    []string{Filter(c.Prefix)},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      c.MaxAge,
		Duplicates:  c.DuplicateWindow,
		MaxMsgSize:  1 << 20,
		Replicas:    c.Replicas,
	}); err != nil {
		return fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	return nil
}

func validPrefix(p string) error {
	if p == "" || strings.ContainsAny(p, "*> \t\r\n") || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..") {
		return fmt.Errorf("alerts: subject prefix %q must be non-empty subject tokens without wildcards", p)
	}
	return nil
}
