package chreader

import (
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/query/budget"
)

func TestClusterSQL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"SELECT 1 FROM t WHERE k IN (SELECT k FROM u)", "SELECT 1 FROM t WHERE k GLOBAL IN (SELECT k FROM u)"},
		{"WHERE (p, k) IN\n  (\n    SELECT p, k FROM u)", "WHERE (p, k) GLOBAL IN\n  (\n    SELECT p, k FROM u)"},
		{"WHERE k NOT IN (SELECT k FROM u)", "WHERE k GLOBAL NOT IN (SELECT k FROM u)"},
		{"FROM (SELECT 1)\nANY LEFT JOIN\n(SELECT 2) USING (k)", "FROM (SELECT 1)\nGLOBAL ANY LEFT JOIN\n(SELECT 2) USING (k)"},
		{"FROM a INNER JOIN b USING (k)", "FROM a GLOBAL INNER JOIN b USING (k)"},
		{"FROM a JOIN b USING (k)", "FROM a GLOBAL JOIN b USING (k)"},
		// Lists of bound values and what is GLOBAL already stay as they are.
		{"WHERE key_id IN (?, ?) AND project = ?", "WHERE key_id IN (?, ?) AND project = ?"},
		{"WHERE k GLOBAL IN (SELECT k FROM u)", "WHERE k GLOBAL IN (SELECT k FROM u)"},
		{"SELECT key_id, minIf(x, y) FROM t WHERE has(?, project)", "SELECT key_id, minIf(x, y) FROM t WHERE has(?, project)"},
	}
	for _, tt := range tests {
		if got := ClusterSQL(tt.in); got != tt.want {
			t.Errorf("ClusterSQL(%q)\n got %q\nwant %q", tt.in, got, tt.want)
		}
	}
}

// The builders whose SQL has a subquery inside IN or JOIN, in their cluster form: exactly those
// places become GLOBAL and nothing else changes. Their single-server text is what the builder
// tests above assert; every other builder's text has no subquery IN or JOIN, so it runs on a
// cluster as it is (the multi-node test in internal/clustertest compares every answer).
func TestBuildersOnACluster(t *testing.T) {
	now := time.Date(2026, 3, 2, 0, 30, 0, 250e6, time.UTC)
	r := Range{Start: now.Add(-time.Hour), End: now}
	tests := []struct {
		name    string
		q       Query
		globals []string
	}{
		{"anomaly scan", AnomalyScan(AnomalySpec{FirstBucket: anomFirst, End: anomFirst.Add(time.Hour), BaselineBuckets: 288, Metrics: allMetrics,
			Sensitivity: 6, MinRequests: 50, Project: "acme", Limit: 1001}),
			[]string{"WHERE key_id GLOBAL IN (SELECT key_id FROM usage_key_hourly WHERE"}},
		{"anomaly service names", AnomalyServiceNames([]string{"key_1"}), []string{"WHERE key_id GLOBAL IN (SELECT arrayJoin(?))"}},
		{"budget spend as of now", BudgetSpendNow(BudgetFilter{KeyID: "key_a"}, budget.Day, now.Add(-72*time.Hour), now),
			[]string{"AND (project, key_id) GLOBAL IN\n      (\n          SELECT project, key_id\n          FROM lifecycle_events", "AND (project, key_id) GLOBAL IN\n      (\n          SELECT project, key_id\n          FROM lifecycle_events"}},
		{"new callers", NewCallers(NewCallersSpec{Range: r, Limit: 1001}), []string{")\nGLOBAL ANY LEFT JOIN\n(\n    SELECT project, key_id, minMerge(first_seen_ms) AS key_first_ms"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := ClusterSQL(tt.q.SQL)
			if strings.Contains(tt.q.SQL, "GLOBAL") {
				t.Errorf("the single-server text already has GLOBAL:\n%s", tt.q.SQL)
			}
			if strings.ReplaceAll(cluster, "GLOBAL ", "") != tt.q.SQL {
				t.Errorf("the cluster text differs by more than GLOBAL:\n%s", cluster)
			}
			if n := strings.Count(cluster, "GLOBAL "); n != len(tt.globals) {
				t.Errorf("%d GLOBALs, want %d:\n%s", n, len(tt.globals), cluster)
			}
			rest := cluster
			for _, g := range tt.globals {
				i := strings.Index(rest, g)
				if i < 0 {
					t.Fatalf("cluster text lacks %q:\n%s", g, cluster)
				}
				rest = rest[i+len(g):]
			}
		})
	}
}
