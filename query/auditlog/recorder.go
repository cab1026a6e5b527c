package auditlog

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/internal/retry"
)

// Record is one API call.
type Record struct {
	Time      time.Time
	Principal string
	Role      string
	Method    string
	// Request is the request message as JSON (callers redact it with RedactMessage; Record
	// redacts what is left with event.RedactText).
	Request  string
	Code     string
	Duration time.Duration
	Peer     string
}

// ErrBacklogFull is returned by Record when calls cannot be recorded.
var ErrBacklogFull = errors.New("query audit log backlog is full")

// ErrClosed is returned by Record after Close.
var ErrClosed = errors.New("query audit log is closed")

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
		errs = append(errs, errors.New("auditlog: connection is required"))
	}
	if c.Capacity < 0 || c.FlushInterval < 0 || c.EnqueueTimeout < 0 {
		errs = append(errs, errors.New("auditlog: sizes and durations must not be negative"))
	}
	return errors.Join(errs...)
}

// Recorder queues records and writes them in batches.
type Recorder struct {
	cfg   Config
	queue chan Record
	done  chan struct{}
	// abandoned ends when Close gives up waiting (abandon), so a write retrying against an
	// unreachable ClickHouse stops instead of outliving the Recorder.
	abandoned context.Context
	abandon   context.CancelFunc
	// mu guards closed: Record holds it shared while sending, Close exclusively while
	// closing the queue, so a late Record gets ErrClosed instead of a send on a closed
	// channel (a panic).
	mu     sync.RWMutex
	closed bool
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
	abandoned, abandon := context.WithCancel(context.Background())
	r := &Recorder{cfg: cfg, queue: make(chan Record, cfg.Capacity), done: make(chan struct{}), abandoned: abandoned, abandon: abandon}
	go r.run()
	return r, nil
}

// Record queues a record, waiting up to EnqueueTimeout for room. Secret-shaped words of its
// request are replaced by their fingerprints first (event.RedactText), whatever the caller did.
// Method is not: it is a method the server serves (some names are long enough to look
// random to the detector), or a path the caller redacted with RedactPath.
func (r *Recorder) Record(ctx context.Context, rec Record) error {
	rec.Request, _ = event.RedactText(rec.Request)
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return ErrClosed
	}
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

// Close stops accepting records and writes the queued ones (bounded by ctx: when ctx ends
// first, the records still unwritten are dropped and counted in the log).
func (r *Recorder) Close(ctx context.Context) error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.queue)
	}
	r.mu.Unlock()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.abandon()
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
				if !r.write(batch) {
					return
				}
				batch = batch[:0]
			}
		case <-ticker.C:
			if !r.write(batch) {
				return
			}
			batch = batch[:0]
		}
	}
}

// write stores a batch, retrying until ClickHouse takes it. While it retries the queue
// fills, and once full, calls are refused: that is the fail-closed guarantee. It gives up
// (false) only when Close stopped waiting; the records not stored are then logged as dropped.
func (r *Recorder) write(batch []Record) bool {
	if len(batch) == 0 {
		return true
	}
	err := retry.Do(r.abandoned, retry.Policy{First: 100 * time.Millisecond, Max: 5 * time.Second}, func(int) error {
		return r.insert(batch)
	}, func(attempt int, err error, _ time.Duration) {
		r.cfg.Logger.Warn("writing query audit records failed; retrying", "records", len(batch), "attempt", attempt, "error", err)
	})
	if err != nil {
		// Only abandoning ends the retries, and that happens only after Close closed the
		// queue, so its length is final.
		r.cfg.Logger.Error("query audit records dropped: closed before ClickHouse took them", "records", len(batch)+len(r.queue))
		return false
	}
	return true
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
