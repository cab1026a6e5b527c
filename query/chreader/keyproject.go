package chreader

import (
	"context"
	"fmt"
	"strings"
)

// A key is (project, key_id): nothing makes key ids unique across projects. The per-key
// answers take an optional project; without one, the key id must be known in only one of
// the projects looked at, and keyProject is the one rule they share for that.

// KeyProjects lists the projects in which a key id is known (a lifecycle event or a request),
// only among projects when it is not nil.
func KeyProjects(keyID string, projects []string) Query {
	filter := ""
	args := []any{keyID}
	if projects != nil {
		filter = " AND has(?, project)"
		args = append(args, projects)
	}
	args = append(args, args...)
	return Query{
		SQL: `SELECT project
FROM
(
    SELECT project FROM lifecycle_events WHERE key_id = ?` + filter + `
    UNION ALL
    SELECT project FROM key_service_totals WHERE key_id = ?` + filter + `
)
GROUP BY project
ORDER BY project`,
		Args: args,
	}
}

// keyProject is the project of a key id asked about without one: the only project among
// projects (nil: every project) where the key id is known, or "" when none knows it. When
// several do, the answer would mix different keys: an InvalidError naming them (and only
// them, so a caller never learns of a project it may not read).
func (rd *Reader) keyProject(ctx context.Context, keyID string, projects []string) (string, error) {
	q := KeyProjects(keyID, projects)
	rows, err := rd.conn.Query(ctx, q.SQL, q.Args...)
	if err != nil {
		return "", fmt.Errorf("query projects of a key: %w", err)
	}
	defer rows.Close()
	var found []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			return "", fmt.Errorf("scan projects of a key: %w", err)
		}
		found = append(found, p)
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("read projects of a key: %w", err)
	}
	switch len(found) {
	case 0:
		return "", nil
	case 1:
		return found[0], nil
	}
	return "", ambiguousKey(keyID, found)
}

// ambiguousKey is the error for a key id asked about without a project that exists in
// several of the projects the caller may read (and only those are named).
func ambiguousKey(keyID string, projects []string) error {
	return &InvalidError{Field: "project", Reason: fmt.Sprintf("key %q exists in projects %s; pass one of them", keyID, strings.Join(projects, ", "))}
}
