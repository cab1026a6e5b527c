package auditchain

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// Genesis is the prev_hash of a project's first row.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Entry is the stored content of one lifecycle row, in the form both the writer and the
// verifier can build: the ingester from the decoded event, the verifier from the row.
type Entry struct {
	EventID            string
	EventTimeMs        int64
	Project            string
	KeyID              string
	Action             string
	NewKeyID           string
	Actor              string
	ActorType          string
	Reason             string
	ExpiresAtUnix      *int64
	BudgetAmountMicros *int64
	BudgetPeriod       string
	Scopes             []string
	AttributeKeys      []string
	AttributeValues    []string
	ChangeFields       []string
	ChangeBefore       []string
	ChangeAfter        []string
}

// ContentHash is the hex sha256 of the entry's canonical encoding: a JSON array of the
// fields in a fixed order (JSON escapes every string unambiguously, so no two different
// entries encode alike).
func ContentHash(e Entry) string {
	opt := func(p *int64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatInt(*p, 10)
	}
	nonNil := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	b, _ := json.Marshal([]any{
		"v1", e.EventID, e.EventTimeMs, e.Project, e.KeyID, e.Action, e.NewKeyID, e.Actor, e.ActorType,
		e.Reason, opt(e.ExpiresAtUnix), opt(e.BudgetAmountMicros), e.BudgetPeriod, nonNil(e.Scopes),
		nonNil(e.AttributeKeys), nonNil(e.AttributeValues), nonNil(e.ChangeFields), nonNil(e.ChangeBefore), nonNil(e.ChangeAfter),
	})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Link is the chain hash of a row: sha256 over the previous chain hash and the row's
// content hash.
func Link(prevHash, contentHash string) string {
	sum := sha256.Sum256([]byte(prevHash + contentHash))
	return hex.EncodeToString(sum[:])
}

// Head is where a project's chain currently ends.
type Head struct {
	Seq  uint64
	Hash string
}

// GenesisHead is the head of an empty chain.
var GenesisHead = Head{Seq: 0, Hash: Genesis}

// Next extends the chain by one entry.
func (h Head) Next(e Entry) (Row, Head) {
	content := ContentHash(e)
	link := Link(h.Hash, content)
	r := Row{Entry: e, Seq: h.Seq + 1, ContentHash: content, PrevHash: h.Hash, ChainHash: link}
	return r, Head{Seq: r.Seq, Hash: link}
}

// Row is an entry with its place in the chain, as stored.
type Row struct {
	Entry
	Seq         uint64
	ContentHash string
	PrevHash    string
	ChainHash   string
}

// Break describes the first place a chain does not hold.
type Break struct {
	Seq     uint64
	EventID string
	Problem string
}

// Verify checks rows of one project, which must be ordered by Seq, starting after prev (the
// head just before the first row; GenesisHead when verifying from the start). It returns the
// first break, or nil when every row holds.
func Verify(prev Head, rows []Row) *Break {
	for _, r := range rows {
		switch {
		case r.Seq != prev.Seq+1:
			return &Break{Seq: prev.Seq + 1, EventID: r.EventID, Problem: fmt.Sprintf("chain sequence jumps from %d to %d: rows are missing", prev.Seq, r.Seq)}
		case r.PrevHash != prev.Hash:
			return &Break{Seq: r.Seq, EventID: r.EventID, Problem: "prev_hash does not match the previous row's chain hash"}
		case ContentHash(r.Entry) != r.ContentHash:
			return &Break{Seq: r.Seq, EventID: r.EventID, Problem: "content does not match its content hash: the row was altered"}
		case Link(r.PrevHash, r.ContentHash) != r.ChainHash:
			return &Break{Seq: r.Seq, EventID: r.EventID, Problem: "chain hash does not match prev_hash and content hash"}
		}
		prev = Head{Seq: r.Seq, Hash: r.ChainHash}
	}
	return nil
}

// SortedAttributes flattens a map into key and value arrays sorted by key (ClickHouse 18.16
// has no Map type), so equal maps store and hash identically.
func SortedAttributes(m map[string]string) ([]string, []string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	values := make([]string, len(keys))
	for i, k := range keys {
		values[i] = m[k]
	}
	return keys, values
}
