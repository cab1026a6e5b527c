package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/internal/flagenv"
	"github.com/keytrail/keytrail/internal/retry"
	"github.com/keytrail/keytrail/publisher"
	"github.com/keytrail/keytrail/services/simulator/simulate"
)

const (
	// tickEvery is the length of one slice of simulated time; short enough that events are
	// published within a fraction of a second of their timestamps.
	tickEvery     = 100 * time.Millisecond
	progressEvery = 5 * time.Second
	streamPoll    = 2 * time.Second
	// closeTimeout bounds the final flush, so a dead NATS cannot hold the process forever.
	closeTimeout = 15 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "simulator:", err)
		os.Exit(1)
	}
}

// Config is everything the simulator can be told. Each flag has an environment variable
// (KEYTRAIL_ + the flag name in upper case with - as _); the flag wins when both are given.
type Config struct {
	NATSURL       string
	Rate          float64
	History       time.Duration
	Duration      time.Duration
	Seed          int64
	JSON          bool
	SubjectPrefix string
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, fmt.Errorf("%s is required", flagenv.Ref(envPrefix, "nats-url")))
	}
	if !(c.Rate > 0) {
		errs = append(errs, flagenv.Invalid(envPrefix, "rate", fmt.Sprint(c.Rate), "a positive number of events per second"))
	}
	if c.History < 0 || c.History > 7*24*time.Hour { // simulate.Config's bound
		errs = append(errs, flagenv.Invalid(envPrefix, "history", c.History.String(), "a duration from 0 to 168h (7 days)"))
	}
	if c.Duration < 0 {
		errs = append(errs, flagenv.Invalid(envPrefix, "duration", c.Duration.String(), "0 (until interrupted) or a positive duration"))
	}
	if c.SubjectPrefix == "" {
		errs = append(errs, fmt.Errorf("%s is required", flagenv.Ref(envPrefix, "subject-prefix")))
	}
	return errors.Join(errs...)
}

func parseConfig(args []string) (Config, error) {
	fs := flag.NewFlagSet("simulator", flag.ContinueOnError)
	var c Config
	fs.StringVar(&c.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server keytrail listens on")
	fs.Float64Var(&c.Rate, "rate", 200, "usage events per second outside the spike")
	fs.DurationVar(&c.History, "history", 0, "publish this much ordinary traffic from before now first, so anomalies and new callers have a baseline (the story then starts now)")
	fs.DurationVar(&c.Duration, "duration", 0, "how long to run; 0 runs until interrupted")
	fs.Int64Var(&c.Seed, "seed", 1, "seed of the scenario's traffic")
	fs.BoolVar(&c.JSON, "json", false, "publish protojson instead of protobuf binary")
	fs.StringVar(&c.SubjectPrefix, "subject-prefix", event.DefaultSubjectPrefix, "first token of every keytrail subject")
	if err := flagenv.Parse(fs, args, envPrefix); err != nil {
		return Config{}, err
	}
	return c, c.Validate()
}

// envPrefix starts the environment variable of every flag: -rate is KEYTRAIL_RATE.
const envPrefix = "KEYTRAIL"

func run(ctx context.Context, args []string, stdout io.Writer) error {
	cfg, err := parseConfig(args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stdout, nil))
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}

	// 1. NATS. RetryOnFailedConnect lets the simulator start before the server; the stream
	// wait below reports that it is not reachable yet.
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("keytrail-simulator"),
		nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil { // nil when we close the connection ourselves
				log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Info("nats reconnected") }))
	if err != nil {
		return fmt.Errorf("connect nats %s: %w", cfg.NATSURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	subjects := event.Subjects{Prefix: cfg.SubjectPrefix}

	// 2. keytrail's stream.
	if err := waitForStream(ctx, nc, cfg.NATSURL, js, subjects, log); err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before the events stream appeared")
			return nil
		}
		return err
	}

	// 3. The publisher and the scenario, which starts now.
	encoding := event.EncodingProto
	if cfg.JSON {
		encoding = event.EncodingJSON
	}
	pub, err := publisher.New(publisher.Config{JetStream: js, Subjects: subjects, Encoding: encoding, Logger: log})
	if err != nil {
		return err
	}
	sc, err := simulate.New(simulate.Config{Seed: cfg.Seed, Start: time.Now(), Rate: cfg.Rate, History: cfg.History})
	if err != nil {
		return err
	}
	logNotable(log, sc, cfg)

	// 4. Publish until interrupted or the duration ends, then flush what was accepted.
	loopErr := publishLoop(ctx, sc, pub, log)
	closeCtx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	closeErr := pub.Close(closeCtx)
	s := pub.Stats()
	log.Info("simulator stopped", "sent", s.Accepted, "acked", s.Acked, "duplicates", s.Duplicates,
		"retried", s.Retried, "failed", s.Failed)
	return errors.Join(loopErr, closeErr)
}

// waitForStream polls until a stream listens on the usage subjects. Asking by subject rather
// than by stream name keeps the simulator independent of how keytrail names its streams.
func waitForStream(ctx context.Context, nc *nats.Conn, url string, js jetstream.JetStream, subjects event.Subjects, log *slog.Logger) error {
	probe := subjects.Usage("simulator")
	var name string
	err := retry.Do(ctx, retry.Policy{First: streamPoll, Max: streamPoll}, func(int) error {
		reqCtx, cancel := context.WithTimeout(ctx, streamPoll)
		defer cancel()
		var err error
		name, err = js.StreamNameBySubject(reqCtx, probe)
		return err
	}, func(attempt int, err error, _ time.Duration) {
		// Say it at once, then every half minute: enough to be noticed, not to flood.
		switch {
		case attempt%15 != 1:
		case !nc.IsConnected():
			log.Warn("waiting for the NATS server; start keytrail or point --nats-url at its NATS",
				"nats_url", url, "status", nc.Status().String())
		default:
			log.Warn("waiting for keytrail to create the events stream; start keytrail (the simulator never creates streams)",
				"subject", probe, "error", err)
		}
	})
	if err != nil {
		return err // only ctx ends the wait
	}
	log.Info("events stream found", "stream", name, "subject", probe)
	return nil
}

// logNotable tells the user, in one line, which keys and services to ask keytrail about.
func logNotable(log *slog.Logger, sc *simulate.Scenario, cfg Config) {
	n := sc.Notable()
	log.Info("simulating gateway traffic; notable keys and services follow",
		"seed", cfg.Seed, "rate", cfg.Rate, "start", sc.Start().UTC().Format(time.RFC3339),
		"rotation_old_key", n.RotationOldKey, "rotation_new_key", n.RotationNewKey,
		"rotation_moved", strings.Join(n.RotationMovedServices, ","),
		"rotation_mixed", strings.Join(n.RotationMixedServices, ","),
		"rotation_pending", strings.Join(n.RotationPendingServices, ","),
		"disabled_key", n.DisabledKey, "forgotten_job", n.ForgottenJobService,
		"spike_key", n.SpikeKey, "spike_from", n.SpikeStart.UTC().Format(time.TimeOnly), "spike_until", n.SpikeEnd.UTC().Format(time.TimeOnly),
		"new_caller_key", n.NewCallerKey, "new_caller", n.NewCallerService, "new_caller_from", n.NewCallerFrom.UTC().Format(time.TimeOnly),
		"over_budget_key", n.OverBudgetKey, "budget_micros_per_day", n.BudgetMicros,
		"expiring_key", n.ExpiringKey, "expires_at", n.ExpiresAt.UTC().Format(time.TimeOnly), "expired_caller", n.ExpiredCaller,
		"scopes_changed_key", n.ScopesChangedKey)
}

// publishLoop publishes each slice of simulated time as real time passes. A slow server
// makes publishing block (the publisher's in-flight bound); the next slice is then simply
// longer, so the simulator catches up instead of drifting from the clock.
func publishLoop(ctx context.Context, sc *simulate.Scenario, pub *publisher.Publisher, log *slog.Logger) error {
	tick := time.NewTicker(tickEvery)
	defer tick.Stop()
	progress := time.NewTicker(progressEvery)
	defer progress.Stop()
	last := sc.Start()
	if h := sc.History(); h > 0 {
		// Backfill in slices so memory stays bounded however long the history is.
		from := last.Add(-h)
		log.Info("publishing history", "from", from.UTC().Format(time.RFC3339), "until", last.UTC().Format(time.RFC3339))
		for from.Before(last) {
			to := from.Add(10 * time.Second)
			if to.After(last) {
				to = last
			}
			if err := publishSlice(ctx, sc, pub, from, to); err != nil || ctx.Err() != nil {
				return err
			}
			from = to
		}
		log.Info("history published", "events", pub.Stats().Accepted)
	}
	var lastSent uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-progress.C:
			s := pub.Stats()
			log.Info("progress", "elapsed", time.Since(sc.Start()).Round(time.Second),
				"sent", s.Accepted, "acked", s.Acked, "failed", s.Failed, "retried", s.Retried, "in_flight", s.InFlight,
				"per_second", float64(s.Accepted-lastSent)/progressEvery.Seconds())
			lastSent = s.Accepted
		case now := <-tick.C:
			if err := publishSlice(ctx, sc, pub, last, now); err != nil || ctx.Err() != nil {
				return err
			}
			last = now
		}
	}
}

// publishSlice publishes the scenario's events in [from, to).
func publishSlice(ctx context.Context, sc *simulate.Scenario, pub *publisher.Publisher, from, to time.Time) error {
	for _, e := range sc.Tick(from, to) {
		var err error
		if e.Kind == event.KindLifecycle {
			err = pub.PublishLifecycle(ctx, e.Lifecycle)
		} else {
			err = pub.PublishUsage(ctx, e.Usage)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("publish %s: %w", e.ID(), err)
		}
	}
	return nil
}
