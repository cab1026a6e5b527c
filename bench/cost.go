package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"

	"github.com/google/pprof/profile"
)

var nan = math.NaN()

// Units of the cost table.
const (
	UnitMicrosPerEvent = "µs/event"
	UnitCPUPerMillion  = "CPU-s/1M rows"
	UnitShare          = "%"
)

// CostRow is one line of the cost table: what one stage of the ingest path costs, beside
// what the same work costs done directly with the client libraries (the raw baseline).
type CostRow struct {
	Stage string `json:"stage"`
	// Value is NaN (null in JSON) when it could not be measured (the note says why).
	Value         float64 `json:"value"`
	Unit          string  `json:"unit"`
	Baseline      string  `json:"baseline,omitempty"`
	BaselineValue float64 `json:"baseline_value,omitempty"`
	Note          string  `json:"note,omitempty"`
}

// MarshalJSON writes NaN values as null.
func (r CostRow) MarshalJSON() ([]byte, error) {
	type plain CostRow
	out := struct {
		plain
		Value         any `json:"value"`
		BaselineValue any `json:"baseline_value,omitempty"`
	}{plain: plain(r), Value: r.Value}
	if math.IsNaN(r.Value) {
		out.Value = nil
	}
	if r.Baseline != "" && !math.IsNaN(r.BaselineValue) {
		out.BaselineValue = r.BaselineValue
	}
	return json.Marshal(out)
}

func (r *Report) cost(rows ...CostRow) { r.Costs = append(r.Costs, rows...) }

// writeCosts prints the cost table.
func (r *Report) writeCosts(w io.Writer) {
	if len(r.Costs) == 0 {
		return
	}
	fmt.Fprintln(w, "cost per event, CPU time of each process (one run):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "stage\tkeytrail\traw baseline\traw\tnote")
	for _, c := range r.Costs {
		base := ""
		if c.Baseline != "" {
			base = formatCost(c.BaselineValue, c.Unit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Stage, formatCost(c.Value, c.Unit), c.Baseline, base, c.Note)
	}
	tw.Flush()
	fmt.Fprintln(w)
}

func formatCost(v float64, unit string) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	switch unit {
	case UnitMicrosPerEvent:
		if v < 10 {
			return fmt.Sprintf("%.2f µs", v)
		}
		return fmt.Sprintf("%.1f µs", v)
	case UnitCPUPerMillion:
		return fmt.Sprintf("%.1f CPU-s/1M", v)
	case UnitShare:
		return fmt.Sprintf("%.0f%%", v)
	case UnitRate:
		return count(int(math.Round(v))) + "/s"
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// Stages of the ingester, as the CPU profile of the drain shows them. A sample belongs to
// the innermost frame of its stack that matches a stage: the work a stage calls (allocation
// and the GC assists it pays for, protobuf, hashing) is that stage's cost. Samples of the
// background garbage collector belong to no call and are a stage of their own.
type stage struct {
	name string
	// match reports whether a function (full name) is where this stage's work happens.
	match func(fn string) bool
}

func prefix(ps ...string) func(string) bool {
	return func(fn string) bool {
		for _, p := range ps {
			if strings.HasPrefix(fn, p) {
				return true
			}
		}
		return false
	}
}

const (
	stageNATS   = "NATS client: fetch, parse, ack"
	stageInsert = "insert: clickhouse-go encode and send"
)

// ingestStages are matched in this order at each frame, innermost frame first.
var ingestStages = []stage{
	{stageNATS, prefix("github.com/nats-io/")},
	{stageInsert, prefix("github.com/ClickHouse/", "github.com/keytrail/keytrail/ingest/chsink.")},
	{"decode", prefix(kt+"event/decode.UsageWire", kt+"event/decode.Usage", kt+"event.Encoding.Unmarshal", kt+"event/decode.Event", kt+"event.Subjects.Parse", kt+"event.ParseContentType")},
	{"validate", prefix(kt+"event/decode.(*UsageFields).Validate", kt+"event/decode.Validate", kt+"event/decode.check")},
	{"redact (secret scan)", prefix(kt+"event/decode.(*UsageFields).Redact", kt+"event.Redact", kt+"event.LooksLikeSecret", kt+"event.redact")},
	{"content hash", prefix(kt+"ingest.contentHash", "github.com/cespare/xxhash")},
	{"column build", prefix(kt+"ingest.(*UsageRows)", kt+"ingest.(*textColumn)")},
	{"ingester bookkeeping (take, recent ids, batches, metrics)", prefix(kt+"ingest.", "github.com/prometheus/")},
	{"garbage collection (background)", prefix("runtime.gcBgMarkWorker")},
}

// kt prefixes keytrail's own functions.
const kt = "github.com/keytrail/keytrail/"

const stageOther = "other (runtime, scheduler, harness)"

// stageShares splits a CPU profile's samples into the ingest stages: the share of CPU time
// of each, in ingestStages order, then stageOther.
func stageShares(data []byte) (map[string]float64, error) {
	p, err := profile.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	// The CPU profile's second sample value is nanoseconds.
	vi := len(p.SampleType) - 1
	total := 0.0
	byStage := map[string]float64{}
	for _, s := range p.Sample {
		v := float64(s.Value[vi])
		total += v
		byStage[stageOf(s)] += v
	}
	if total == 0 {
		return nil, fmt.Errorf("the profile has no samples")
	}
	for k := range byStage {
		byStage[k] /= total
	}
	return byStage, nil
}

func stageOf(s *profile.Sample) string {
	for _, loc := range s.Location {
		// Inlined calls are listed innermost first within a location.
		for _, line := range loc.Line {
			if line.Function == nil {
				continue
			}
			for _, st := range ingestStages {
				if st.match(line.Function.Name) {
					return st.name
				}
			}
		}
	}
	return stageOther
}

// Stages of the cost table the CPU ceilings add up.
const (
	costPublishClient = "publish: client (gateway) CPU"
	costPublishServer = "publish: nats-server CPU"
	costDeliver       = "nats-server: deliver and ack (drain)"
	costIngester      = "ingester process, total (drain)"
	costClickHouse    = "ClickHouse server (drain, merges included)"
)

// addCeilings adds, when the publish and drain phases both ran, the rates the machine's
// cores allow at the cost table's CPU per event: every process of the pipeline shares the
// same cores, so no rate can exceed cores / (sum of their CPU per event). The same sum over
// the raw baselines is what the client libraries and servers alone would allow: a target
// above that is out of reach of any ingester on this machine.
func (r *Report) addCeilings() {
	byStage := map[string]CostRow{}
	for _, c := range r.Costs {
		byStage[strings.TrimSpace(c.Stage)] = c
	}
	get := func(stage string, raw bool) float64 {
		c, ok := byStage[stage]
		if !ok {
			return nan
		}
		if raw {
			if c.Baseline == "" {
				return nan
			}
			return c.BaselineValue
		}
		return c.Value
	}
	// CPU-s per 1M rows is µs per row: every stage below is µs per event.
	insertClientRaw := get(stageInsert, true)
	drainKT := get(costDeliver, false) + get(costIngester, false) + get(costClickHouse, false)
	drainRaw := get(costDeliver, true) + get(costIngester, true) + insertClientRaw + get(costClickHouse, true)
	e2eKT := get(costPublishClient, false) + get(costPublishServer, false) + drainKT
	e2eRaw := get(costPublishClient, true) + get(costPublishServer, true) + drainRaw
	if math.IsNaN(e2eKT) && math.IsNaN(drainKT) {
		return
	}
	cores := float64(r.Machine.CPUs)
	ceiling := func(figure, parts string, kt, raw float64) {
		if math.IsNaN(kt) || kt <= 0 {
			return
		}
		row := Row{Figure: figure, Value: cores / kt * 1e6, Unit: UnitRate,
			Note: fmt.Sprintf("%g cores / %.1f µs of CPU per event (%s); raw %.1f µs", cores, kt, parts, raw)}
		if !math.IsNaN(raw) && raw > 0 {
			row.Baseline, row.BaselineValue = "the same with raw clients and servers alone", cores/raw*1e6
			row.Ratio = row.Value / row.BaselineValue
		}
		r.add(row)
	}
	ceiling("drain ceiling: cores / CPU per event", "deliver and ack, ingester, ClickHouse", drainKT, drainRaw)
	ceiling("end-to-end ceiling: cores / CPU per event", "publish client and server, deliver and ack, ingester, ClickHouse", e2eKT, e2eRaw)
}
