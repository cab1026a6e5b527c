package queryaudit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Record is one API call.
type Record struct {
	Time      time.Time
	Principal string
	Role      string
	Method    string
	// Request is the request message as JSON; requests carry filters, never secrets.
	Request  string
	Code     string
	Duration time.Duration
	Peer     string
}

// ErrBacklogFull is returned by Record when calls cannot be recorded.
var ErrBacklogFull = errors.New("query audit log backlog is full")

// Config configures a Recorder.
type Config struct {
	Conn driver.Conn
	// Capacity is how many records may wait for ClickHouse (default 10000).
	Capacity      int
	FlushInterval time.Duration // default 1s
	// EnqueueTimeout is how long a call waits for room in a full queue (default 1s).
	EnqueueTimeout time.Duration
	Logger         *slog.Logger
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Conn == nil {
		errs = append(errs, errors.New("queryaudit: connection is required"))
	}
	if c.Capacity < 0 || c.FlushInterval < 0 || c.EnqueueTimeout < 0 {
		errs = append(errs, errors.New("queryaudit: sizes and durations must not be negative"))
	}
	return errors.Join(errs...)
}

// Recorder queues records and writes them in batches.
type Recorder struct {
	cfg    Config
	queue  chan Record
	done   chan struct{}
	closed sync.Once
}

// New starts a Recorder; Close stops it.
func New(cfg Config) (*Recorder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = 10_000
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.EnqueueTimeout == 0 {
		cfg.EnqueueTimeout = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Recorder{cfg: cfg, queue: make(chan Record, cfg.Capacity), done: make(chan struct{})}
	go r.run()
	return r, nil
}

// Record queues a record, waiting up to EnqueueTimeout for room.
func (r *Recorder) Record(ctx context.Context, rec Record) error {
	select {
	case r.queue <- rec:
		return nil
	default:
	}
	t := time.NewTimer(r.cfg.EnqueueTimeout)
	defer t.Stop()
	select {
	case r.queue <- rec:
		return nil
	case <-t.C:
		return ErrBacklogFull
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops accepting records and writes the queued ones (bounded by ctx).
func (r *Recorder) Close(ctx context.Context) error {
	r.closed.Do(func() { close(r.queue) })
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Recorder) run() {
	defer close(r.done)
	ticker := time.NewTicker(r.cfg.FlushInterval)
	defer ticker.Stop()
	var batch []Record
	for {
		select {
		case rec, ok := <-r.queue:
			if !ok {
				r.write(batch)
				return
			}
			batch = append(batch, rec)
			if len(batch) >= 1000 {
				r.write(batch)
				batch = batch[:0]
			}
		case <-ticker.C:
			r.write(batch)
			batch = batch[:0]
		}
	}
}

// write stores a batch, retrying until ClickHouse takes it. While it retries the queue
// fills, and once full, calls are refused: that is the fail-closed guarantee.
func (r *Recorder) write(batch []Record) {
	if len(batch) == 0 {
		return
	}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := r.insert(batch)
		if err == nil {
			return
		}
		r.cfg.Logger.Warn("writing query audit records failed; retrying", "records", len(batch), "attempt", attempt, "error", err)
		time.Sleep(backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (r *Recorder) insert(batch []Record) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := r.cfg.Conn.PrepareBatch(ctx, "INSERT INTO query_audit_log (time, time_ms, principal, role, method, request, code, duration_ms, peer)")
	if err != nil {
		return err
	}
	for _, rec := range batch {
		t := rec.Time.UTC()
		if err := b.Append(t.Truncate(time.Second), t.UnixMilli(), rec.Principal, rec.Role, rec.Method, rec.Request, rec.Code, uint32(rec.Duration.Milliseconds()), rec.Peer); err != nil {
			_ = b.Abort()
			return err
		}
	}
	return b.Send()
}
