package auditchain

import "testing"

func chainOf(n int) []Row {
	head := GenesisHead
	var rows []Row
	for i := 0; i < n; i++ {
		var r Row
		r, head = head.Next(Entry{EventID: string(rune('a' + i)), EventTimeMs: int64(i), Project: "acme", KeyID: "k", Action: "created", Actor: "alice"})
		rows = append(rows, r)
	}
	return rows
}

func TestVerifyFindsTheFirstBreak(t *testing.T) {
	if b := Verify(GenesisHead, chainOf(5)); b != nil {
		t.Fatalf("intact chain broken: %+v", b)
	}
	deleted := chainOf(5)
	deleted = append(deleted[:2], deleted[3:]...)
	if b := Verify(GenesisHead, deleted); b == nil || b.Seq != 3 || b.EventID != "d" {
		t.Errorf("deleted row: %+v", b)
	}
	altered := chainOf(5)
	altered[1].Actor = "mallory"
	if b := Verify(GenesisHead, altered); b == nil || b.Seq != 2 || b.Problem != "content does not match its content hash: the row was altered" {
		t.Errorf("altered row: %+v", b)
	}
	rehashed := chainOf(5)
	rehashed[1].Actor = "mallory"
	rehashed[1].ContentHash = ContentHash(rehashed[1].Entry)
	if b := Verify(GenesisHead, rehashed); b == nil || b.Seq != 2 || b.Problem != "chain hash does not match prev_hash and content hash" {
		t.Errorf("altered and rehashed row: %+v", b)
	}
	// Verifying a later range starts from the head before it.
	rows := chainOf(5)
	if b := Verify(Head{Seq: rows[1].Seq, Hash: rows[1].ChainHash}, rows[2:]); b != nil {
		t.Errorf("sub-range: %+v", b)
	}
}

func TestContentHashIsCanonical(t *testing.T) {
	if ContentHash(Entry{EventID: "e", Scopes: nil}) != ContentHash(Entry{EventID: "e", Scopes: []string{}}) {
		t.Error("nil and empty lists must hash alike (ClickHouse returns empty arrays)")
	}
	if ContentHash(Entry{Actor: "ab", Reason: "c"}) == ContentHash(Entry{Actor: "a", Reason: "bc"}) {
		t.Error("field boundaries must be part of the hash")
	}
	amount := int64(0)
	if ContentHash(Entry{BudgetAmountMicros: &amount}) == ContentHash(Entry{}) {
		t.Error("a zero budget differs from no budget")
	}
}
