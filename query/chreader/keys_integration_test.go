package chreader_test

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/chreader"
)

// TestKeyLastUsedAtSearchesBackExactly checks the state of one key at a past instant, whose
// last use per service is found by searching back from the instant in growing windows (an
// hour, a day, a month, then all history), against the exact expected times and against the
// whole-history query that does not search.
func TestKeyLastUsedAtSearchesBackExactly(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	at := time.Date(2026, 11, 1, 12, 0, 0, 250_000_000, time.UTC)
	day := 24 * time.Hour
	testenv.Insert(t, db,
		use("u1", "key_a", "settled", at.Add(-40*day), 200),      // last use before at: from the all-time spans
		use("u2", "key_a", "busy", at.Add(-10*time.Minute), 200), // found in the first hour
		use("u3", "key_a", "busy", at.Add(5*time.Minute), 200),
		use("u4", "key_a", "daily", at.Add(-2*day), 200), // found in the month window
		use("u5", "key_a", "daily", at.Add(time.Hour), 200),
		use("u6", "key_a", "ancient", at.Add(-60*day), 500), // found only in all history
		use("u7", "key_a", "ancient", at.Add(day), 200),
		use("u8", "key_a", "later", at.Add(time.Hour), 200), // first used after at: none
		use("u9", "key_a", "edge", at, 200),                 // at the instant itself: counts
		use("u10", "key_a", "edge", at.Add(time.Millisecond), 200),
		use("u11", "key_b", "busy", at.Add(-time.Minute), 200), // another key: not counted
	)
	testenv.WaitForEvents(t, db, 11, 0, 10*time.Second)

	rd := chreader.NewReader(db.Conn, func() time.Time { return at.Add(2 * day) })
	k, err := rd.Key(context.Background(), chreader.KeyRequest{KeyID: "key_a", At: at})
	if err != nil {
		t.Fatal(err)
	}
	want := []chreader.ServiceUse{
		{Service: "ancient", LastUsedAt: at.Add(-60 * day)},
		{Service: "busy", LastUsedAt: at.Add(-10 * time.Minute)},
		{Service: "daily", LastUsedAt: at.Add(-2 * day)},
		{Service: "edge", LastUsedAt: at},
		{Service: "settled", LastUsedAt: at.Add(-40 * day)},
	}
	if !reflect.DeepEqual(k.Services, want) {
		t.Errorf("services %+v\nwant %+v", k.Services, want)
	}
	if !k.LastUsedAt.Equal(at) {
		t.Errorf("last used %v, want %v", k.LastUsedAt, at)
	}

	// The whole-history query gives the same answer.
	q := chreader.KeyLastUsedAt(chreader.KeyUseFilter{KeyID: "key_a"}, at)
	rows, err := db.Conn.Query(context.Background(), q.SQL, q.Args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var whole []chreader.ServiceUse
	for rows.Next() {
		var key, service, project string
		var ms int64
		if err := rows.Scan(&key, &service, &project, &ms); err != nil {
			t.Fatal(err)
		}
		whole = append(whole, chreader.ServiceUse{Service: service, LastUsedAt: time.UnixMilli(ms).UTC()})
	}
	if !reflect.DeepEqual(whole, want) {
		t.Errorf("whole-history query %+v\nwant %+v", whole, want)
	}
}
