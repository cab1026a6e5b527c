package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/internal/storage"
)

//go:embed *.sql
var files embed.FS

// Migration is one numbered schema file, rendered for one Target.
type Migration struct {
	Version    uint32
	Name       string
	Statements []string
}

var fileName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// All returns the embedded migrations in version order, rendered for a single server.
func All() ([]Migration, error) {
	return Load(Target{})
}

// Load returns the embedded migrations in version order, rendered for the target.
func Load(target Target) ([]Migration, error) {
	if err := target.Validate(); err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration file %q is not named NNNN_name.sql", e.Name())
		}
		version, _ := strconv.ParseUint(m[1], 10, 32)
		body, err := fs.ReadFile(files, e.Name())
		if err != nil {
			return nil, err
		}
		sql, err := target.render(e.Name(), string(body))
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: uint32(version), Name: m[2], Statements: SplitStatements(sql)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i := 1; i < len(out); i++ {
		if out[i].Version == out[i-1].Version {
			return nil, fmt.Errorf("two migrations with version %04d", out[i].Version)
		}
	}
	return out, nil
}

// SplitStatements drops `--` comment lines and splits on semicolons that end a line.
func SplitStatements(sql string) []string {
	var stmts []string
	var cur strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteString("\n")
		if strings.HasSuffix(trimmed, ";") {
			// A template that renders to nothing for this target leaves a lone ";".
			if stmt := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(cur.String()), ";")); stmt != "" {
				stmts = append(stmts, stmt)
			}
			cur.Reset()
		}
	}
	if rest := strings.TrimSpace(cur.String()); rest != "" {
		stmts = append(stmts, rest)
	}
	return stmts
}

const createVersionTable = `CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime('UTC')
)
ENGINE = MergeTree()
ORDER BY version`

// Config says where Run applies the migrations.
type Config struct {
	// Conn is the connection the schema is applied over (with a Cluster, any server of it).
	Conn driver.Conn
	// Cluster, when set, renders and applies the cluster schema (see doc.go).
	Cluster *storage.Cluster
	// Last is the newest version to apply; 0 applies every migration.
	Last uint32
	// Guard, when set, runs before every statement; an error stops the run there. keytrail
	// checks it still holds the migrations lease.
	Guard func(context.Context) error
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	if c.Conn == nil {
		return errors.New("migrations: a connection is required")
	}
	return nil
}

// Apply runs every migration not yet recorded in schema_migrations of the connection's
// database, and returns the versions it applied.
func Apply(ctx context.Context, conn driver.Conn) ([]uint32, error) {
	return Run(ctx, Config{Conn: conn})
}

// ApplyUpTo is Apply for the migrations up to and including version last: the schema of an
// older release, for tests of what a later migration does to existing data. last 0 applies
// every migration, like Apply.
func ApplyUpTo(ctx context.Context, conn driver.Conn, last uint32) ([]uint32, error) {
	return Run(ctx, Config{Conn: conn, Last: last})
}

// Run applies the migrations that schema_migrations does not record yet and returns the
// versions it applied. Two processes must not run it at once (a backfill would count twice):
// callers hold a lock around it (keytrail takes a NATS KV lease, package lease).
func Run(ctx context.Context, cfg Config) ([]uint32, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	last := cfg.Last
	if last == 0 {
		last = math.MaxUint32
	}
	target := Target{}
	if cfg.Cluster != nil {
		target = Target{Cluster: cfg.Cluster.Name, Database: cfg.Cluster.Database}
	}
	all, err := Load(target)
	if err != nil {
		return nil, err
	}
	if err := ensureLedger(ctx, cfg); err != nil {
		return nil, err
	}
	applied, err := appliedVersions(ctx, cfg.Conn)
	if err != nil {
		return nil, err
	}
	var pending []Migration
	for _, m := range all {
		if !applied[m.Version] && m.Version <= last {
			pending = append(pending, m)
		}
	}
	if len(pending) > 0 && cfg.Cluster != nil {
		// ON CLUSTER DDL waits minutes for a server that is down before it fails.
		if err := cfg.Cluster.Unreachable(ctx); err != nil {
			return nil, fmt.Errorf("migrations %s need every server of cluster %s: %w", versions(pending), cfg.Cluster.Name, err)
		}
	}
	var done []uint32
	for _, m := range pending {
		for i, stmt := range m.Statements {
			if cfg.Guard != nil {
				if err := cfg.Guard(ctx); err != nil {
					return done, fmt.Errorf("migration %04d_%s before statement %d: %w", m.Version, m.Name, i+1, err)
				}
			}
			if err := exec(ctx, cfg, stmt); err != nil {
				return done, fmt.Errorf("migration %04d_%s statement %d: %w", m.Version, m.Name, i+1, err)
			}
		}
		if err := record(ctx, cfg, m); err != nil {
			return done, err
		}
		done = append(done, m.Version)
	}
	return done, nil
}

func versions(ms []Migration) string {
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%04d", m.Version))
	}
	return strings.Join(parts, ", ")
}

// exec runs one statement. On a cluster, a backfill runs on one server of every shard (each
// copies its own shard's rows; the copy replicates), the rest ON CLUSTER from any server.
func exec(ctx context.Context, cfg Config, stmt string) error {
	if cfg.Cluster == nil || !IsBackfill(stmt) {
		return cfg.Conn.Exec(ctx, stmt)
	}
	// A backfill file starts by dropping what it fills, so a re-run starts over; block
	// deduplication would instead drop a copied block equal to an earlier one (two equal
	// unmerged rollup parts), losing counts.
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_deduplicate": 0}))
	for _, s := range cfg.Cluster.Shards {
		if err := onShard(ctx, s, stmt); err != nil {
			return err
		}
	}
	return nil
}

// onShard runs stmt on the first server of the shard that answers.
func onShard(ctx context.Context, s *storage.Shard, stmt string) error {
	var errs []error
	for _, r := range s.Replicas {
		if err := r.Conn.Ping(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Name(), err))
			continue
		}
		if err := r.Conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", r.Name(), err)
		}
		return nil
	}
	return fmt.Errorf("no server of shard %d answers: %w", s.Num, errors.Join(errs...))
}

// ensureLedger creates schema_migrations. On a cluster every server holds the whole ledger (a
// replicated table with one ZooKeeper path for all shards), so a process reads it from
// whichever server it is connected to; it is created ON CLUSTER only when missing, because ON
// CLUSTER waits for every server.
func ensureLedger(ctx context.Context, cfg Config) error {
	if cfg.Cluster == nil {
		if err := cfg.Conn.Exec(ctx, createVersionTable); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		return nil
	}
	var n uint64
	if err := cfg.Conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'schema_migrations'").Scan(&n); err != nil {
		return fmt.Errorf("look for schema_migrations: %w", err)
	}
	if n > 0 {
		return nil
	}
	if err := cfg.Cluster.Unreachable(ctx); err != nil {
		return fmt.Errorf("creating the migration ledger needs every server of cluster %s: %w", cfg.Cluster.Name, err)
	}
	c := cfg.Cluster
	create := strings.Replace(createVersionTable, "schema_migrations", c.Database+".schema_migrations ON CLUSTER "+c.Name, 1)
	create = strings.Replace(create, "ENGINE = MergeTree()",
		fmt.Sprintf("ENGINE = ReplicatedMergeTree('%s/all/%s/schema_migrations', '{replica}')", ZooKeeperPrefix, c.Database), 1)
	if err := cfg.Conn.Exec(ctx, create); err != nil {
		return fmt.Errorf("create schema_migrations on cluster %s: %w", c.Name, err)
	}
	return nil
}

func appliedVersions(ctx context.Context, conn driver.Conn) (map[uint32]bool, error) {
	rows, err := conn.Query(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read schema_migrations: %w", err)
	}
	defer rows.Close()
	applied := map[uint32]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	return applied, rows.Err()
}

// record inserts the version row through a column-named batch: the only INSERT form that
// works with ClickHouse 18.16 over the native protocol. On a cluster the insert returns only
// once every server holds the row (a quorum of all of them; migrations run with every server
// up), so the next process reads it wherever it connects.
func record(ctx context.Context, cfg Config, m Migration) error {
	if cfg.Cluster != nil {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_quorum": len(cfg.Cluster.Replicas())}))
	}
	batch, err := cfg.Conn.PrepareBatch(ctx, "INSERT INTO schema_migrations (version, name, applied_at)")
	if err != nil {
		return fmt.Errorf("record migration %04d: %w", m.Version, err)
	}
	if err := batch.Append(m.Version, m.Name, time.Now().UTC()); err != nil {
		return fmt.Errorf("record migration %04d: %w", m.Version, err)
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("record migration %04d: %w", m.Version, err)
	}
	return nil
}
