package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Units of a figure.
const (
	UnitRate = "events/s"
	UnitMs   = "ms"
	UnitMB   = "MB"
)

// Row is one line of the result: a figure, the baseline it is judged against, and its target.
type Row struct {
	Figure string `json:"figure"`
	// Value is NaN (null in JSON) when the figure is not available (NA says why).
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Baseline names what the figure is compared with; empty when nothing.
	Baseline      string  `json:"baseline,omitempty"`
	BaselineValue float64 `json:"baseline_value,omitempty"`
	// Ratio is figure/baseline for rates, baseline/figure for latencies (so higher is better
	// for both); 0 when there is no baseline.
	Ratio float64 `json:"ratio,omitempty"`
	// Target in words, and whether it was met (nil: no target or not measurable).
	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
	NA     string `json:"not_available,omitempty"`
	Note   string `json:"note,omitempty"`
	// Samples is the number of timed calls or probes behind a percentile.
	Samples    int `json:"samples,omitempty"`
	RawSamples int `json:"raw_samples,omitempty"`
}

// MarshalJSON writes NaN values as null.
func (r Row) MarshalJSON() ([]byte, error) {
	type plain Row
	out := struct {
		plain
		Value any `json:"value"`
	}{plain: plain(r), Value: r.Value}
	if math.IsNaN(r.Value) {
		out.Value = nil
	}
	return json.Marshal(out)
}

// Machine describes where the figures were taken.
type Machine struct {
	CPUs        int    `json:"cpus"`
	MemoryMB    int    `json:"memory_mb"`
	GoVersion   string `json:"go_version"`
	ClickHouse  string `json:"clickhouse"`
	Description string `json:"description"`
}

// Report is everything a run produced.
type Report struct {
	Date    time.Time `json:"date"`
	Scale   float64   `json:"scale"`
	Sizes   Sizes     `json:"sizes"`
	Machine Machine   `json:"machine"`
	Rows    []Row     `json:"rows"`
	// Costs is the cost table: CPU per event and per stage beside the raw baselines.
	Costs []CostRow `json:"costs,omitempty"`
	// Notes are facts of the run worth keeping with the figures (event sizes, load time, ...).
	Notes []string `json:"notes"`
	// Errors are phases that failed; their rows are missing.
	Errors []string `json:"errors,omitempty"`
}

func (r *Report) add(rows ...Row) { r.Rows = append(r.Rows, rows...) }

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteTable prints the header and the table.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "keytrail benchmarks  scale %g  %s  %s\n", r.Scale, r.Date.UTC().Format("2006-01-02 15:04 MST"), r.Machine.Description)
	s := r.Sizes
	fmt.Fprintf(w, "sizes: drain %s, end-to-end %s, latency %d s at %s/s, RSS backlog %s, history %s events over %d days (%d keys, %d services), %d calls per answer\n\n",
		count(s.DrainEvents), count(s.E2EEvents), s.LatencyWaves, count(s.LatencyRate), count(s.RSSBacklog), count(s.QueryEvents), s.HistoryDays, s.Keys, s.Services, s.Calls)
	r.writeCosts(w)
	if len(r.Costs) > 0 {
		fmt.Fprintln(w, "targets:")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\tbaseline\tbaseline value\tratio\ttarget\tmet?")
	for _, row := range r.Rows {
		value, ratio, baseValue := "n/a", "", ""
		if !math.IsNaN(row.Value) {
			value = format(row.Value, row.Unit)
		}
		if row.Baseline != "" && row.BaselineValue != 0 {
			baseValue = format(row.BaselineValue, row.Unit)
		}
		if row.Ratio != 0 && !math.IsNaN(row.Value) {
			ratio = fmt.Sprintf("%.2fx", row.Ratio)
			if row.Ratio >= 10 {
				ratio = fmt.Sprintf("%.0fx", row.Ratio)
			}
		}
		met := ""
		switch {
		case row.Met == nil && row.Target != "":
			met = "n/a"
		case row.Met != nil && *row.Met:
			met = "yes"
		case row.Met != nil:
			met = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", row.Figure, value, row.Baseline, baseValue, ratio, row.Target, met)
	}
	tw.Flush()
	if len(r.Notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range r.Notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
	for _, row := range r.Rows {
		if row.NA != "" {
			fmt.Fprintf(w, "- %s: n/a: %s\n", row.Figure, row.NA)
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w)
		for _, e := range r.Errors {
			fmt.Fprintln(w, "FAILED: "+e)
		}
	}
}

func format(v float64, unit string) string {
	switch unit {
	case UnitRate:
		return count(int(math.Round(v))) + "/s"
	case UnitReqRate:
		return fmt.Sprintf("%.0f req/s", v)
	case UnitMs:
		if v >= 1000 {
			return fmt.Sprintf("%.2f s", v/1000)
		}
		if v >= 100 {
			return fmt.Sprintf("%.0f ms", v)
		}
		return fmt.Sprintf("%.1f ms", v)
	case UnitMB:
		return fmt.Sprintf("%.0f MB", v)
	case UnitMicrosPerEvent, UnitCPUPerMillion:
		return formatCost(v, unit)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// count prints 1234567 as 1.23M, 25000 as 25.0k.
func count(n int) string {
	switch {
	case n >= 1_000_000:
		return strings.TrimSuffix(fmt.Sprintf("%.2f", float64(n)/1e6), ".00") + "M"
	case n >= 1_000:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func met(ok bool) *bool { return &ok }

// percentile is the nearest-rank percentile (p in (0, 100]) of durations, in ms. With 50
// samples p99 is the slowest.
func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return math.NaN()
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return float64(s[max(rank, 1)-1]) / float64(time.Millisecond)
}
