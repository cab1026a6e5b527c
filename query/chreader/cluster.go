package chreader

import (
	"context"
	"regexp"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// On a ClickHouse cluster every table a query names is a Distributed table under the same
// name as on a single server, so every builder's SQL runs there unchanged but for one shape:
// a subquery that reads another Distributed table, inside IN or JOIN, is refused in a
// distributed query (Code 288, "Double-distributed IN/JOIN subqueries is denied"), and the
// setting that would run it shard-locally (distributed_product_mode='local') answers wrongly
// whenever the subquery's rows live on other shards than the outer rows. GLOBAL runs the
// subquery once, on the server that received the query, over every shard, and ships its
// result to the shards: the same answer as on one server. ClusterSQL adds it.

var (
	// " IN (SELECT", " NOT IN (SELECT", with any white space between.
	subqueryIn = regexp.MustCompile(`(\s)((?:NOT\s+)?IN\s*\(\s*SELECT\b)`)
	// "ANY LEFT JOIN", "LEFT JOIN", "INNER JOIN", "JOIN".
	join = regexp.MustCompile(`(\s)((?:(?:ANY|ALL)\s+)?(?:(?:LEFT|RIGHT|INNER|FULL)\s+)?JOIN\b)`)
)

// ClusterSQL is a query's form for a cluster: every IN or JOIN over a subquery made GLOBAL.
// IN over a list (IN (?, ?)) is left alone. The builders write keywords in upper case, so
// column values (bound as arguments, never in the text) cannot be mistaken for them.
func ClusterSQL(sql string) string {
	sql = subqueryIn.ReplaceAllString(sql, "${1}GLOBAL $2")
	sql = join.ReplaceAllString(sql, "${1}GLOBAL $2")
	// A builder that already wrote GLOBAL keeps one.
	return strings.ReplaceAll(sql, "GLOBAL GLOBAL ", "GLOBAL ")
}

// ClusterConn wraps the connection a Reader queries a cluster through, rewriting every query
// with ClusterSQL.
func ClusterConn(conn driver.Conn) driver.Conn { return clusterConn{conn} }

type clusterConn struct{ driver.Conn }

func (c clusterConn) Query(ctx context.Context, query string, args ...any) (driver.Rows, error) {
	return c.Conn.Query(ctx, ClusterSQL(query), args...)
}

func (c clusterConn) QueryRow(ctx context.Context, query string, args ...any) driver.Row {
	return c.Conn.QueryRow(ctx, ClusterSQL(query), args...)
}

func (c clusterConn) Select(ctx context.Context, dest any, query string, args ...any) error {
	return c.Conn.Select(ctx, dest, ClusterSQL(query), args...)
}
