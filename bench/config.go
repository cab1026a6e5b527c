package bench

import (
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strings"
)

// Phases, in the order they run.
const (
	PhasePublish = "publish" // the publisher package against raw nats.go async publishing
	PhaseDrain   = "drain"   // drain rate, the cost table, and the raw baselines
	PhaseBlocks  = "blocks"  // ClickHouse's cost per row by insert block size
	PhaseE2E     = "e2e"     // publishers and ingester together: sustained rate
	PhaseLatency = "latency" // publish-to-queryable latency at a fixed rate
	PhaseRSS     = "rss"     // peak RSS of a separate ingester process with a backlog
	PhaseQuery   = "query"   // API answers against raw-table queries over a loaded history
	PhaseLoad    = "load"    // open-loop load on a `keytrail -role query` process: sustainable rate, 3x it
)

// AllPhases is every phase in run order.
var AllPhases = []string{PhasePublish, PhaseDrain, PhaseBlocks, PhaseE2E, PhaseLatency, PhaseRSS, PhaseQuery, PhaseLoad}

// Config configures a run.
type Config struct {
	// Scale multiplies every size (1 = the sizes of the issue: 1M-event drain, 10M backlog,
	// 100M-event history). Cardinalities (keys, services, projects) and call counts do not scale.
	Scale float64
	// ClickHouseAddr is the native-protocol address of the ClickHouse to use (host:port).
	ClickHouseAddr string
	// Database is the dedicated database each phase recreates and drops; it must not be one
	// anybody else uses.
	Database string
	// RepoDir is the module root: `go build ./services/keytrail` runs there.
	RepoDir string
	// Phases to run (default all), by name.
	Phases []string
	// ProfileDir, when set, receives CPU profiles of the in-process ingest phases.
	ProfileDir string
	// IngestBatch, when set, replaces the ingester's default batch size in every ingest phase
	// (the RSS phase passes it, and a max ack pending of twice it, to keytrail): for comparing
	// batch sizes, not for the reference run.
	IngestBatch int
	// KeepHistory keeps the query phase's loaded history between runs, in its own database
	// (Database + "_history"), and reuses it when it holds a history of the same size: the
	// 100M-event load takes most of an hour, the timings a fraction of that. A reused
	// database gets the migrations added since it was loaded, as an upgraded deployment does.
	KeepHistory bool
	// LoadFlags are passed to the keytrail process of the load phase that runs with
	// admission (e.g. -query-max-inflight 4), to compare settings.
	LoadFlags []string
	// Log receives progress lines; the result table goes to the caller.
	Log io.Writer
}

// historySuffix names the kept history's database: Database + historySuffix.
const historySuffix = "_history"

var databaseName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.IngestBatch < 0 || c.IngestBatch > 1_000_000 {
		errs = append(errs, fmt.Errorf("bench: ingest batch %d must be in [0, 1000000]", c.IngestBatch))
	}
	if !(c.Scale > 0) || math.IsInf(c.Scale, 0) || c.Scale > 10 {
		errs = append(errs, fmt.Errorf("bench: scale %v must be in (0, 10]", c.Scale))
	}
	if c.ClickHouseAddr == "" {
		errs = append(errs, errors.New("bench: clickhouse address is required"))
	}
	if !databaseName.MatchString(c.Database) || len(c.Database)+len(historySuffix) > 63 {
		errs = append(errs, fmt.Errorf("bench: database %q must be a plain lower-case identifier", c.Database))
	}
	// The database is dropped without asking: refuse names that belong to the service or tests.
	if c.Database == "keytrail" || c.Database == "default" || c.Database == "system" || strings.HasPrefix(c.Database, "kt_test_") {
		errs = append(errs, fmt.Errorf("bench: database %q is not a dedicated benchmark database", c.Database))
	}
	if c.RepoDir == "" {
		errs = append(errs, errors.New("bench: repo dir is required"))
	}
	for _, p := range c.Phases {
		if !slices.Contains(AllPhases, p) {
			errs = append(errs, fmt.Errorf("bench: unknown phase %q (phases: %s)", p, strings.Join(AllPhases, ", ")))
		}
	}
	if c.Log == nil {
		errs = append(errs, errors.New("bench: log writer is required"))
	}
	return errors.Join(errs...)
}

func (c Config) runs(phase string) bool {
	return len(c.Phases) == 0 || slices.Contains(c.Phases, phase)
}

// Sizes are the sizes of one run, Scale applied.
type Sizes struct {
	PublishEvents int // events of each publish run (4 runs: raw, package, package, raw)
	DrainEvents   int // backlog the in-process ingester drains (and the baselines read)
	E2EEvents     int // events published while the ingester runs
	LatencyWaves  int // 1-second waves at LatencyRate
	LatencyRate   int // events per second of the latency test (a condition, never scaled)
	RSSBacklog    int // backlog the separate ingester process drains
	QueryEvents   int // usage events of the loaded history
	QueryChunk    int // rows per INSERT ... SELECT of the load
	Calls         int // timed calls per answer, API and raw each
	InsertBatch   int // rows per batch of the raw insert baseline
	IngestBatch   int // the ingester's batch size (the binary's default)
	HistoryDays   int
	Keys          int
	Services      int
	Projects      int
	RawCallBudget float64 // seconds of raw-query calls per answer before stopping early (at least MinRawCalls)
}

// MinRawCalls is the fewest timed raw-table calls per answer, however slow they are.
const MinRawCalls = 10

// SizesFor applies the scale. Floors keep a small run long enough to measure a rate
// (a drain shorter than a few flush intervals measures start-up, not throughput).
func SizesFor(scale float64) Sizes {
	n := func(full, floor int) int { return max(int(math.Round(float64(full)*scale)), floor) }
	return Sizes{
		PublishEvents: n(500_000, 100_000),
		DrainEvents:   n(1_000_000, 200_000),
		E2EEvents:     n(2_000_000, 200_000),
		LatencyWaves:  n(60, 10),
		LatencyRate:   20_000,
		RSSBacklog:    n(10_000_000, 200_000),
		QueryEvents:   n(100_000_000, 1_000_000),
		QueryChunk:    10_000_000,
		Calls:         50,
		InsertBatch:   100_000,
		IngestBatch:   100_000,
		HistoryDays:   30,
		Keys:          fleetKeys,
		Services:      fleetServices,
		Projects:      fleetProjects,
		RawCallBudget: 120,
	}
}
