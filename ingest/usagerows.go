package ingest

import (
	"slices"
	"strings"
	"time"
	"unsafe"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	"github.com/keytrail/keytrail/event/decode"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Text columns of UsageRows, in the order of UsageRows.Text.
const (
	UsageEventID = iota
	UsageProject
	UsageKeyID
	UsageService
	UsageGatewayInstance
	UsageMethod
	UsageEndpoint
	UsageModel
	UsageProvider
	UsageClientIP
	UsageRequestID
	usageTextColumns
)

// UsageRows hold usage events column by column from the moment the ingester takes them
// until they are stored: each text column's bytes in one buffer, the numbers in slices. A row
// costs its bytes and a few offsets, no allocation once the buffers have grown, and nothing
// the garbage collector has to scan. (Holding the decoded messages instead cost about three
// times the memory and most of the ingester's GC time, which bounded the batch size.)
//
// Rows are in stream order. A UsageRows is used by one goroutine at a time.
type UsageRows struct {
	text [usageTextColumns]textColumn
	// TimeMs is the event time in Unix milliseconds (the stored precision).
	TimeMs                    []int64
	StatusCode                []uint16
	LatencyMs                 []uint32
	InputTokens, OutputTokens []uint64
	CostMicros                []int64
	ContentHash               []uint64
	StreamSeq                 []uint64
}

// textColumn is strings end to end in one buffer; row i is buf[end[i-1]:end[i]].
type textColumn struct {
	buf []byte
	end []uint32
}

func (c *textColumn) append(s string) {
	c.buf = append(c.buf, s...)
	c.end = append(c.end, uint32(len(c.buf)))
}

// at is row i as a view into the buffer: valid until the column is reset or compacted.
func (c *textColumn) at(i int) string {
	start := uint32(0)
	if i > 0 {
		start = c.end[i-1]
	}
	if c.end[i] == start {
		return ""
	}
	return unsafe.String(&c.buf[start], int(c.end[i]-start))
}

func (c *textColumn) reset() {
	c.buf, c.end = c.buf[:0], c.end[:0]
}

// keep compacts the column to the rows whose keep is true.
func (c *textColumn) keep(keep []bool) {
	var w, start uint32
	out := c.end[:0]
	for i, end := range c.end {
		if keep[i] {
			w += uint32(copy(c.buf[w:], c.buf[start:end]))
			out = append(out, w)
		}
		start = end
	}
	c.buf, c.end = c.buf[:w], out
}

func (c *textColumn) bytes() int { return cap(c.buf) + 4*cap(c.end) }

// Len is the number of rows.
func (u *UsageRows) Len() int { return len(u.StreamSeq) }

// Append adds a usage event's fields as a row (the text is copied).
func (u *UsageRows) Append(f *decode.UsageFields, contentHash, streamSeq uint64) {
	for col, s := range [usageTextColumns]string{
		f.EventID, f.Project, f.KeyID, f.Service, f.GatewayInstance, f.Method, f.Endpoint,
		f.Model, f.Provider, f.ClientIP, f.RequestID,
	} {
		u.text[col].append(s)
	}
	u.TimeMs = append(u.TimeMs, f.Time().UnixMilli())
	// Validation bounds the status to 100-599.
	u.StatusCode = append(u.StatusCode, uint16(f.StatusCode))
	u.LatencyMs = append(u.LatencyMs, f.LatencyMs)
	u.InputTokens = append(u.InputTokens, f.InputTokens)
	u.OutputTokens = append(u.OutputTokens, f.OutputTokens)
	u.CostMicros = append(u.CostMicros, f.CostMicros)
	u.ContentHash = append(u.ContentHash, contentHash)
	u.StreamSeq = append(u.StreamSeq, streamSeq)
}

// Text is row i of a text column (UsageEventID ... UsageRequestID), as a view into the
// rows' buffer: copy it to keep it past the next Reset.
func (u *UsageRows) Text(col, i int) string { return u.text[col].at(i) }

// TextColumn appends rows [lo, hi) of a text column to dst as views (see Text), for
// handing a column to a driver that copies it.
func (u *UsageRows) TextColumn(col, lo, hi int, dst []string) []string {
	c := &u.text[col]
	for i := lo; i < hi; i++ {
		dst = append(dst, c.at(i))
	}
	return dst
}

// Event is row i as a usage event (its time to the millisecond, as stored).
func (u *UsageRows) Event(i int) *keytrailv1.UsageEvent {
	text := func(col int) string { return strings.Clone(u.Text(col, i)) }
	return &keytrailv1.UsageEvent{
		EventId: text(UsageEventID), Time: timestamppb.New(time.UnixMilli(u.TimeMs[i])),
		Project: text(UsageProject), KeyId: text(UsageKeyID), Service: text(UsageService),
		GatewayInstance: text(UsageGatewayInstance), Method: text(UsageMethod), Endpoint: text(UsageEndpoint),
		Model: text(UsageModel), Provider: text(UsageProvider), StatusCode: uint32(u.StatusCode[i]),
		LatencyMs: u.LatencyMs[i], InputTokens: u.InputTokens[i], OutputTokens: u.OutputTokens[i],
		CostMicros: u.CostMicros[i], ClientIp: text(UsageClientIP), RequestId: text(UsageRequestID),
	}
}

// Keep drops the rows whose keep is false (len(keep) == Len()).
func (u *UsageRows) Keep(keep []bool) {
	for col := range u.text {
		u.text[col].keep(keep)
	}
	u.TimeMs = keepRows(u.TimeMs, keep)
	u.StatusCode = keepRows(u.StatusCode, keep)
	u.LatencyMs = keepRows(u.LatencyMs, keep)
	u.InputTokens = keepRows(u.InputTokens, keep)
	u.OutputTokens = keepRows(u.OutputTokens, keep)
	u.CostMicros = keepRows(u.CostMicros, keep)
	u.ContentHash = keepRows(u.ContentHash, keep)
	u.StreamSeq = keepRows(u.StreamSeq, keep)
}

func keepRows[T any](s []T, keep []bool) []T {
	out := s[:0]
	for i, v := range s {
		if keep[i] {
			out = append(out, v)
		}
	}
	return out
}

// Grow makes room for n more rows' numbers and offsets (the text grows as it comes): sized
// once to a batch, the slices are not regrown, which would briefly hold them twice.
func (u *UsageRows) Grow(n int) {
	for col := range u.text {
		u.text[col].end = slices.Grow(u.text[col].end, n)
	}
	u.TimeMs, u.StatusCode, u.LatencyMs = slices.Grow(u.TimeMs, n), slices.Grow(u.StatusCode, n), slices.Grow(u.LatencyMs, n)
	u.InputTokens, u.OutputTokens = slices.Grow(u.InputTokens, n), slices.Grow(u.OutputTokens, n)
	u.CostMicros, u.ContentHash, u.StreamSeq = slices.Grow(u.CostMicros, n), slices.Grow(u.ContentHash, n), slices.Grow(u.StreamSeq, n)
}

// Reset empties the rows and keeps their buffers for the next batch.
func (u *UsageRows) Reset() {
	for col := range u.text {
		u.text[col].reset()
	}
	u.TimeMs, u.StatusCode, u.LatencyMs = u.TimeMs[:0], u.StatusCode[:0], u.LatencyMs[:0]
	u.InputTokens, u.OutputTokens, u.CostMicros = u.InputTokens[:0], u.OutputTokens[:0], u.CostMicros[:0]
	u.ContentHash, u.StreamSeq = u.ContentHash[:0], u.StreamSeq[:0]
}

// Bytes is the memory the rows' buffers take (capacity, not length).
func (u *UsageRows) Bytes() int {
	n := 0
	for col := range u.text {
		n += u.text[col].bytes()
	}
	return n + 8*(cap(u.TimeMs)+cap(u.InputTokens)+cap(u.OutputTokens)+cap(u.CostMicros)+cap(u.ContentHash)+cap(u.StreamSeq)) +
		2*cap(u.StatusCode) + 4*cap(u.LatencyMs)
}

// RowsOf sorts records into Rows, usage records into columns, keeping their order: for
// writing crafted events through a Sink (tests, loaders).
func RowsOf(records []Record) *Rows {
	rows := &Rows{Usage: &UsageRows{}}
	for _, r := range records {
		switch r.Event.Kind {
		case event.KindUsage:
			f := decode.FieldsOf(r.Event.Usage)
			rows.Usage.Append(&f, r.ContentHash, r.StreamSeq)
		case event.KindLifecycle:
			rows.Lifecycle = append(rows.Lifecycle, r)
		}
	}
	return rows
}

// Records are the rows as records, in stream order (usage events made with UsageRows.Event):
// for sinks that keep records (the cluster's, test doubles), not for the hot path.
func (r *Rows) Records() []Record {
	out := make([]Record, 0, r.Len())
	lc, u := r.Lifecycle, r.Usage
	for i := 0; len(lc) > 0 || i < u.Len(); {
		if i < u.Len() && (len(lc) == 0 || u.StreamSeq[i] < lc[0].StreamSeq) {
			out = append(out, Record{Event: event.Event{Kind: event.KindUsage, Usage: u.Event(i)}, StreamSeq: u.StreamSeq[i], ContentHash: u.ContentHash[i]})
			i++
			continue
		}
		out = append(out, lc[0])
		lc = lc[1:]
	}
	return out
}
