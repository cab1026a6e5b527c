// Anomalies and new callers: the 5-minute buckets that stand out from their key's own history
// (GET /v1/anomalies), each drawn with its series around the flagged bucket (GET
// /v1/keys/{key}/usage, the same 5-minute rollup the scan reads), and the callers new to a key
// (GET /v1/new-callers).
import { useMemo, useState } from "preact/hooks";
import { api } from "../api.js";
import { chosenRange, enumLabel, int, lastRange, money, rangeOptions } from "../format.js";
import { Badge, Chart, ErrorBox, Filters, KeyLink, Loading, navigate, Section, Select, Time, toSeconds, useData } from "../ui.jsx";
import { NewCallerTable } from "./key.jsx";

const ANOMALY_RANGES = rangeOptions("30m", "1h", "6h", "24h");
const CALLER_RANGES = rangeOptions("30m", "1h", "24h", "7d", "30d");
// How much of the series to draw around a flagged bucket.
const BEFORE = 2 * 3600e3;
const AFTER = 3600e3;
// How many of the highest-scored anomalies are opened with their chart.
const OPENED = 3;

const metricOf = {
  ANOMALY_METRIC_REQUESTS: { label: "requests", value: (r, e, c) => r, fmt: (v) => int(Math.round(v)) },
  ANOMALY_METRIC_ERROR_RATE: { label: "error rate", value: (r, e, c) => (r ? e / r : null), fmt: (v) => (v * 100).toFixed(1) + "%" },
  ANOMALY_METRIC_COST: { label: "cost", value: (r, e, c) => c, fmt: (v) => money(Math.round(v)) },
};

// seriesValues sums the services of a usage answer per bucket and turns them into the metric.
function seriesValues(d, metric) {
  const n = d.bucket_starts.length;
  const sum = (field) => Array.from({ length: n }, (_, i) => d.series.reduce((acc, s) => acc + Number(s[field][i]), 0));
  const r = sum("requests"), e = sum("errors"), c = sum("cost_micros");
  return r.map((_, i) => metricOf[metric].value(r[i], e[i], c[i]));
}

function AnomalySeries({ a }) {
  const m = metricOf[a.metric];
  const flagged = Date.parse(a.bucket_start);
  const width = parseFloat(a.bucket_width) * 1e3 || 300e3;
  const state = useData(
    (signal) =>
      api(
        "/v1/keys/" + encodeURIComponent(a.key_id) + "/usage",
        {
          project: a.project,
          service: a.service,
          start_time: new Date(flagged - BEFORE).toISOString(),
          end_time: new Date(Math.min(flagged + AFTER, Date.now() + 60e3)).toISOString(),
          bucket: "300s",
        },
        { signal },
      ),
    [a.project, a.key_id, a.service, a.bucket_start],
  );
  const chart = useMemo(() => {
    const d = state.data;
    if (!d) return null;
    const values = seriesValues(d, a.metric);
    const xs = d.bucket_starts.map(toSeconds);
    const scale = a.metric === "ANOMALY_METRIC_COST" ? 1e-6 : a.metric === "ANOMALY_METRIC_ERROR_RATE" ? 100 : 1;
    const at = d.bucket_starts.findIndex((b) => Date.parse(b) === flagged);
    return {
      xs,
      at: at >= 0 ? values[at] : null,
      series: [
        { label: m.label, values: values.map((v) => (v == null ? null : v * scale)) },
        { label: "baseline median", values: xs.map(() => a.expected * scale), color: "#64748b", dash: [4, 4] },
      ],
    };
  }, [state.data]);
  if (state.error) return <ErrorBox error={state.error} what="the series" />;
  if (!chart) return <Loading what="the series" />;
  return (
    <>
      <Chart xs={chart.xs} series={chart.series} height={180} highlight={[flagged / 1e3, (flagged + width) / 1e3]} test="anomaly-chart" />
      <p class="muted">
        Series from GET /v1/keys/{a.key_id}/usage?project={a.project}{a.service ? "&service=" + a.service : ""}, 5-minute buckets; the flagged bucket (shaded) reads{" "}
        <span data-test="anomaly-series-value">{chart.at == null ? "—" : m.fmt(chart.at)}</span>.
      </p>
    </>
  );
}

// AnomalyRows is one anomaly in the list: its numbers, and below them (opened) how the score
// was computed and the series around the flagged bucket.
function AnomalyRows({ a, open: initiallyOpen }) {
  const m = metricOf[a.metric] || { label: a.metric, fmt: String };
  const [open, setOpen] = useState(initiallyOpen);
  return (
    <tbody data-test="anomaly" data-project={a.project} data-key={a.key_id} data-service={a.service} data-metric={a.metric} data-bucket={a.bucket_start}>
      <tr class={"anomaly-row" + (open ? " open" : "")} onClick={() => setOpen(!open)} data-test="anomaly-toggle">
        <td><button class="link" aria-expanded={open}>{open ? "▾" : "▸"}</button></td>
        <td><KeyLink id={a.key_id} project={a.project} /></td>
        <td>{a.service || <span class="muted">all services</span>}</td>
        <td><Badge kind="bad">{m.label}</Badge></td>
        <td><Time t={a.bucket_start} /></td>
        <td class="num" data-test="anomaly-observed">{m.fmt(a.observed)}</td>
        <td class="num">{m.fmt(a.expected)}</td>
        <td class="num" data-test="anomaly-score">{a.score.toFixed(1)}</td>
      </tr>
      {open ? (
        <tr class="anomaly-detail">
          <td />
          <td colspan="7">
            <div class="method" data-test="anomaly-method">
              {a.project} · {int(a.requests)} requests in the bucket · {a.method}
            </div>
            <AnomalySeries a={a} />
          </td>
        </tr>
      ) : null}
    </tbody>
  );
}

export function AnomaliesPage({ params }) {
  const rangeName = params.range || "30m";
  const callerRange = params.callers || "1h";
  const range = useMemo(() => chosenRange(rangeName, params.from, params.to), [rangeName, params.from, params.to]);
  const cRange = useMemo(() => lastRange(callerRange), [callerRange]);
  const [draft, setDraft] = useState({ project: params.project || "", key: params.key || "", sensitivity: params.sensitivity || "", min_requests: params.min_requests || "" });
  const set = (p) => navigate("anomalies", "", { ...params, ...p });
  const anomalies = useData(
    (signal) =>
      api(
        "/v1/anomalies",
        { start_time: range.start, end_time: range.end, project: params.project, key_id: params.key, sensitivity: params.sensitivity, min_requests: params.min_requests },
        { signal },
      ),
    [range, params.project, params.key, params.sensitivity, params.min_requests],
  );
  const callers = useData(
    (signal) => api("/v1/new-callers", { start_time: cRange.start, end_time: cRange.end, project: params.project, key_id: params.key }, { signal }),
    [cRange, params.project, params.key],
  );
  return (
    <>
      <div class="page-head">
        <h1>Anomalies and new callers</h1>
      </div>
      <Filters onApply={() => set(draft)}>
        <Select label="anomalies in" value={rangeName} options={ANOMALY_RANGES} onChange={(v) => set({ range: v, from: "", to: "" })} test="anomaly-range" />
        <Select label="new callers in" value={callerRange} options={CALLER_RANGES} onChange={(v) => set({ callers: v })} test="caller-range" />
        {[
          ["project", "project"],
          ["key", "key"],
          ["sensitivity", "sensitivity (6)"],
          ["min_requests", "min requests (50)"],
        ].map(([f, label]) => (
          <label class="field">
            <span>{label}</span>
            <input size="12" value={draft[f]} onInput={(e) => setDraft({ ...draft, [f]: e.currentTarget.value.trim() })} />
          </label>
        ))}
      </Filters>
      <Section title="Anomalies" what="anomalies" state={anomalies}>
        {(d) =>
          d.anomalies.length === 0 ? (
            <p class="muted" data-test="anomalies-empty">No bucket stands out in this range.</p>
          ) : (
            <>
              <p class="muted">
                {int(d.anomalies.length)} flagged buckets, highest score first. Open one for how its score was computed and its series
                around the bucket.
              </p>
              <div class="table-wrap">
                <table data-test="anomalies" class="anomalies">
                  <thead>
                    <tr>
                      <th />
                      <th>key</th>
                      <th>service</th>
                      <th>metric</th>
                      <th>bucket (UTC)</th>
                      <th class="num">observed</th>
                      <th class="num">baseline median</th>
                      <th class="num">score</th>
                    </tr>
                  </thead>
                  {d.anomalies.map((a, i) => (
                    <AnomalyRows a={a} open={i < OPENED} key={[a.project, a.key_id, a.service, a.metric, a.bucket_start].join("\n")} />
                  ))}
                </table>
              </div>
            </>
          )
        }
      </Section>
      <Section title="New callers" what="new callers" state={callers}>
        {(d) => <NewCallerTable callers={d.callers} showKey empty="No service or client IP used a key for the first time in this range." />}
      </Section>
    </>
  );
}
