package migrations

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/template"

	"github.com/keytrail/keytrail/internal/storage"
)

// Target is the kind of ClickHouse the migrations are rendered for. The zero Target is a
// single server: the schema keytrail has always had. With a Cluster, the same files render
// to the cluster schema (see doc.go): replicated tables on every server, Distributed tables
// under the single-server names for reads, and ON CLUSTER DDL.
type Target struct {
	// Cluster is the ClickHouse cluster (remote_servers entry); empty for a single server.
	Cluster string
	// Database holds the tables; required with a Cluster. ON CLUSTER DDL resolves a table
	// name without a database in each server's default database, not the one of the server
	// that received it, so every name a cluster statement refers to is qualified.
	Database string
}

// Local, Ingest and the other suffixes name a table X's companions in cluster mode.
const (
	// LocalSuffix: X_local is the replicated table holding a shard's rows of X; X itself is
	// the Distributed table over every shard's X_local.
	LocalSuffix = "_local"
	// IngestSuffix: X_ingest is the Null table the ingester writes X's rows to on each
	// shard. Its materialized views fill X_local and every rollup (see doc.go for why).
	IngestSuffix = "_ingest"
	// InsertTagColumn is the column every rollup of a cluster has and a single server's do
	// not (see doc.go).
	InsertTagColumn = "insert_tag"
)

// ZooKeeperPrefix is where the replicated tables of a cluster keep their state in ZooKeeper:
// <prefix>/<shard>/<database>/<table>, and <prefix>/all/<database>/<table> for tables every
// server holds in full (the migration ledger).
const ZooKeeperPrefix = "/clickhouse/tables"

var clusterIdentifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// Validate reports every problem with the target at once.
func (t Target) Validate() error {
	var errs []error
	if t.Cluster != "" {
		if !clusterIdentifier.MatchString(t.Cluster) {
			errs = append(errs, fmt.Errorf("migrations: cluster %q must be a plain identifier", t.Cluster))
		}
		if !clusterIdentifier.MatchString(t.Database) {
			errs = append(errs, fmt.Errorf("migrations: cluster mode needs a database name that is a plain identifier, got %q", t.Database))
		}
	}
	return errors.Join(errs...)
}

// IsCluster reports whether the target is a cluster.
func (t Target) IsCluster() bool { return t.Cluster != "" }

func (t Target) render(name, body string) (string, error) {
	tmpl, err := template.New(name).Option("missingkey=error").Funcs(t.funcs()).Parse(body)
	if err != nil {
		return "", fmt.Errorf("migration %s: %w", name, err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, nil); err != nil {
		return "", fmt.Errorf("migration %s: %w", name, err)
	}
	return b.String(), nil
}

var engineCall = regexp.MustCompile(`^([A-Za-z]*)MergeTree\((.*)\)$`)

// funcs are the template functions of the migration files. For a single server each renders
// the plain name or nothing, so the files read as the schema they always were.
func (t Target) funcs() template.FuncMap {
	cluster := t.IsCluster()
	q := func(table string) string { return t.Database + "." + table }
	on := " ON CLUSTER " + t.Cluster
	return template.FuncMap{
		// CREATE TABLE IF NOT EXISTS {{create "x"}}: the table that stores rows.
		"create": func(table string) string {
			if !cluster {
				return table
			}
			return q(table+LocalSuffix) + on
		},
		// ENGINE = {{engine "x" "SummingMergeTree()"}}: its replicated engine on a cluster.
		"engine": func(table, engine string) (string, error) {
			if !cluster {
				return engine, nil
			}
			m := engineCall.FindStringSubmatch(engine)
			if m == nil {
				return "", fmt.Errorf("engine %q of %s is not a MergeTree family engine", engine, table)
			}
			args := fmt.Sprintf("'%s/{shard}/%s/%s', '{replica}'", ZooKeeperPrefix, t.Database, table+LocalSuffix)
			if strings.TrimSpace(m[2]) != "" {
				args += ", " + m[2]
			}
			return "Replicated" + m[1] + "MergeTree(" + args + ")", nil
		},
		// {{distributed "x"}}; after a CREATE: the Distributed table reads go through, under
		// the single-server name. Rows are placed by storage.ShardingKey unless a key is given.
		"distributed": func(table string, key ...string) (string, error) {
			if !cluster {
				return "", nil
			}
			shardBy := storage.ShardingKey
			switch len(key) {
			case 0:
			case 1:
				shardBy = key[0]
			default:
				return "", fmt.Errorf("distributed %s: at most one sharding key", table)
			}
			return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s%s AS %s ENGINE = Distributed(%s, %s, %s, %s)",
				q(table), on, q(table+LocalSuffix), t.Cluster, t.Database, table+LocalSuffix, shardBy), nil
		},
		// {{ingest_input "x"}}; after a CREATE: the Null table the ingester writes and the
		// view that copies its rows into x_local.
		"ingest_input": func(table string) string {
			if !cluster {
				return ""
			}
			return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s%s AS %s ENGINE = Null;\n", q(table+IngestSuffix), on, q(table+LocalSuffix)) +
				fmt.Sprintf("CREATE MATERIALIZED VIEW IF NOT EXISTS %s%s TO %s AS SELECT * FROM %s",
					q(table+IngestSuffix+"_mv"), on, q(table+LocalSuffix), q(table+IngestSuffix))
		},
		// CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "v"}} TO {{to "x"}} AS SELECT ...
		// {{insert_tag}} FROM {{from "usage_events"}}.
		"view": func(view string) string {
			if !cluster {
				return view
			}
			return q(view) + on
		},
		"to": func(table string) string {
			if !cluster {
				return table
			}
			return q(table + LocalSuffix)
		},
		"from": func(table string) string {
			if !cluster {
				return table
			}
			return q(table + IngestSuffix)
		},
		// The last select item of a view, and the last column of its target table.
		"insert_tag": func() string {
			if !cluster {
				return ""
			}
			return ",\n    toString(max(stream_seq)) AS " + InsertTagColumn
		},
		"insert_tag_column": func() string {
			if !cluster {
				return ""
			}
			return ",\n    " + InsertTagColumn + " String"
		},
		// {{drop_table "x"}}; and {{drop_view "v"}};
		"drop_table": func(table string) string {
			if !cluster {
				return "DROP TABLE IF EXISTS " + table
			}
			return "DROP TABLE IF EXISTS " + q(table) + on + ";\nDROP TABLE IF EXISTS " + q(table+LocalSuffix) + on
		},
		"drop_view": func(view string) string {
			if !cluster {
				return "DROP TABLE IF EXISTS " + view
			}
			return "DROP TABLE IF EXISTS " + q(view) + on
		},
		// INSERT INTO {{local "x"}} ... SELECT ... FROM {{local "y"}}: a backfill, which a
		// cluster runs on one server of every shard, from that shard's rows.
		"local": func(table string) string {
			if !cluster {
				return table
			}
			return table + LocalSuffix
		},
	}
}

// IsBackfill reports whether a rendered statement copies data (INSERT ... SELECT), which a
// cluster runs on one server of each shard rather than ON CLUSTER.
func IsBackfill(stmt string) bool {
	return strings.HasPrefix(strings.ToUpper(strings.TrimSpace(stmt)), "INSERT")
}
