package chreader_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/query/chreader"
)

func waitMutations(t *testing.T, db *testenv.Database) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() error {
		if n := testenv.QueryUint64(t, db.Conn, "SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0", db.Name); n != 0 {
			return fmt.Errorf("%d mutations running", n)
		}
		return nil
	})
}

func TestAuditVerifyFindsDeletedAndAlteredRows(t *testing.T) {
	t.Parallel()
	db := testenv.ClickHouse(t)
	var events []any
	for i := 0; i < 6; i++ {
		events = append(events, lifecycle(fmt.Sprintf("e%d", i), fmt.Sprintf("key_%d", i), keytrailv1.Action_ACTION_CREATED, "alice", ago(time.Duration(60-i)*time.Minute)))
	}
	testenv.Insert(t, db, events[:3]...)
	testenv.Insert(t, db, events[3:]...) // a second batch continues the chain from storage
	other := lifecycle("o1", "key_x", keytrailv1.Action_ACTION_CREATED, "bob", ago(time.Hour))
	other.Project = "globex"
	testenv.Insert(t, db, other)

	rd := chreader.NewReader(db.Conn, func() time.Time { return rotationEnd })
	got, err := rd.VerifyAuditTrail(context.Background(), "", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Project != "acme" || got[0].Rows != 6 || got[0].FirstSeq != 1 || got[0].LastSeq != 6 || got[0].Break != nil ||
		got[1].Project != "globex" || got[1].Rows != 1 || got[1].Break != nil || len(got[0].HeadHash) != 64 {
		t.Fatalf("intact chains: %+v", got)
	}

	if err := db.Conn.Exec(context.Background(), "ALTER TABLE lifecycle_events UPDATE actor = 'mallory' WHERE event_id = 'e4'"); err != nil {
		t.Fatal(err)
	}
	waitMutations(t, db)
	got, err = rd.VerifyAuditTrail(context.Background(), "acme", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if b := got[0].Break; b == nil || b.Seq != 5 || b.EventID != "e4" || b.Problem != "content does not match its content hash: the row was altered" {
		t.Errorf("altered row: %+v", got[0].Break)
	}

	if err := db.Conn.Exec(context.Background(), "ALTER TABLE lifecycle_events DELETE WHERE event_id = 'e1'"); err != nil {
		t.Fatal(err)
	}
	waitMutations(t, db)
	got, err = rd.VerifyAuditTrail(context.Background(), "acme", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if b := got[0].Break; b == nil || b.Seq != 2 || b.EventID != "e2" || b.Problem != "chain sequence jumps from 1 to 3: rows are missing" {
		t.Errorf("deleted row: %+v", got[0].Break)
	}
	// A range after the deletion still checks its first link against the row before it.
	got, err = rd.VerifyAuditTrail(context.Background(), "acme", ago(57*time.Minute), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].FirstSeq != 4 || got[0].Rows != 3 || got[0].Break == nil || got[0].Break.Seq != 5 {
		t.Errorf("range after the deletion: %+v (break %+v)", got[0], got[0].Break)
	}
}
