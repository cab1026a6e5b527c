// Spend and budgets: cost, tokens and requests per key, service, model or project per hour,
// day or month (GET /v1/spend), and every budgeted key's use of its budget (GET /v1/budgets).
import { useMemo, useState } from "preact/hooks";
import { allPages, ambiguousProjects, api } from "../api.js";
import { chosenRange, enumLabel, int, money, rangeOptions } from "../format.js";
import { Badge, Chart, Filters, href, KeyLink, navigate, Section, Select, Table, Time, toSeconds, useData } from "../ui.jsx";
import { budgetText, KeyChooser } from "./key.jsx";

const GROUPS = [
  ["key", "key"],
  ["service", "service"],
  ["model", "model"],
  ["project", "project"],
];
const GRANULARITIES = [
  ["hour", "per hour"],
  ["day", "per day"],
  ["month", "per month"],
];
const SPEND_RANGES = rangeOptions("24h", "7d", "30d", "90d", "365d");
const MAX_ROWS = 10000;
const CHART_GROUPS = 8;
const TABLE_ROWS = 100;

const groupField = { key: "key_id", service: "service", model: "model", project: "project" };
const budgetKind = { BUDGET_STATUS_OK: "ok", BUDGET_STATUS_NEAR: "warn", BUDGET_STATUS_OVER: "bad" };

function SpendReport({ group, gran, rangeName, from, to, filters, withProject }) {
  const range = useMemo(() => chosenRange(rangeName, from, to), [rangeName, from, to]);
  const state = useData(
    (signal) =>
      allPages(
        "/v1/spend",
        {
          group_by: "SPEND_DIMENSION_" + group.toUpperCase(),
          granularity: "GRANULARITY_" + gran.toUpperCase(),
          start_time: range.start,
          end_time: range.end,
          project: filters.project,
          key_id: filters.key,
          service: filters.service,
          model: filters.model,
          page_size: 1000,
        },
        "rows",
        MAX_ROWS,
        { signal },
      ),
    [group, gran, range, filters.project, filters.key, filters.service, filters.model],
  );
  const chart = useMemo(() => {
    const d = state.data;
    if (!d || !d.rows.length) return null;
    const field = groupField[group];
    // Every bucket of the range, empty ones too, so the time axis is the range asked for.
    const starts = bucketStarts(gran, range.start, range.end);
    const index = new Map(starts.map((t, i) => [t, i]));
    const totals = new Map();
    for (const r of d.rows) totals.set(r[field], (totals.get(r[field]) || 0) + Number(r.cost_micros));
    const top = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, CHART_GROUPS).map(([g]) => g);
    const series = top.map((g) => ({ label: g || "(none)", values: starts.map(() => 0) }));
    const other = { label: "other", values: starts.map(() => 0), color: "#94a3b8" };
    for (const r of d.rows) {
      const i = index.get(Date.parse(r.bucket_start));
      if (i === undefined) continue;
      const v = Number(r.cost_micros) / 1e6;
      const at = top.indexOf(r[field]);
      (at >= 0 ? series[at] : other).values[i] += v;
    }
    if (totals.size > CHART_GROUPS) series.push(other);
    // The last bucket is drawn whole: the axis runs to its end.
    const step = starts.length > 1 ? starts[starts.length - 1] - starts[starts.length - 2] : 3600e3;
    return { xs: starts.map((t) => t / 1e3), xRange: [starts[0] / 1e3, (starts[starts.length - 1] + step) / 1e3], series };
  }, [state.data, group, gran, range]);
  // The table: newest bucket first, biggest spend first within it.
  const [all, setAll] = useState(false);
  const rows = useMemo(
    () => (state.data ? [...state.data.rows].sort((a, b) => Date.parse(b.bucket_start) - Date.parse(a.bucket_start) || Number(b.cost_micros) - Number(a.cost_micros)) : []),
    [state.data],
  );

  // A key filter without a project, on a key id several projects know, would add up
  // different keys: the API refuses it, naming them, and the page offers them.
  if (ambiguousProjects(state.error)) return <KeyChooser id={filters.key} error={state.error} open={withProject} />;
  return (
    <Section title={"Spend per " + group + " " + GRANULARITIES.find(([g]) => g === gran)[1]} what="spend" state={state}>
      {(d) => (
        <>
          <p class="totals">
            Total <strong data-test="spend-total-cost">{money(d.last.total_cost_micros)}</strong> over{" "}
            <strong data-test="spend-total-requests">{int(d.last.total_requests)}</strong> requests
            {d.truncated ? " (table shows the first " + int(MAX_ROWS) + " rows)" : ""}.
          </p>
          {chart ? (
            <Chart xs={chart.xs} xRange={chart.xRange} series={chart.series} points={chart.xs.length <= 60} test="spend-chart" yFmt={(v) => (v == null ? "—" : v.toFixed(2))} />
          ) : null}
          <Table
            head={["bucket (UTC)", group, { text: "requests", cls: "num" }, { text: "input tokens", cls: "num" }, { text: "output tokens", cls: "num" }, { text: "cost", cls: "num" }]}
            test="spend-table"
            empty="No spend in this range."
          >
            {(all ? rows : rows.slice(0, TABLE_ROWS)).map((r) => (
              <tr data-bucket={r.bucket_start} data-group={r[groupField[group]]} data-project={r.project}>
                <td><Time t={r.bucket_start} /></td>
                <td>{group === "key" ? <KeyLink id={r.key_id} project={r.project} /> : r[groupField[group]]}</td>
                <td class="num" data-test="requests">{int(r.requests)}</td>
                <td class="num">{int(r.input_tokens)}</td>
                <td class="num">{int(r.output_tokens)}</td>
                <td class="num" data-test="cost">{r.cost}</td>
              </tr>
            ))}
          </Table>
          {!all && rows.length > TABLE_ROWS ? (
            <button class="secondary" onClick={() => setAll(true)}>
              Show all {int(rows.length)} rows
            </button>
          ) : null}
        </>
      )}
    </Section>
  );
}

// bucketStarts lists the UTC buckets (ms) of a granularity that cover [start, end), as the
// API widens a range to whole buckets.
function bucketStarts(gran, startISO, endISO) {
  const start = new Date(startISO);
  const end = Date.parse(endISO);
  let t;
  if (gran === "month") t = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), 1);
  else if (gran === "day") t = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate());
  else t = Math.floor(start.getTime() / 3600e3) * 3600e3;
  const out = [];
  while (t < end && out.length < 10000) {
    out.push(t);
    if (gran === "month") {
      const d = new Date(t);
      t = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
    } else t += gran === "day" ? 86400e3 : 3600e3;
  }
  return out;
}

function Budgets({ project, alertingOnly }) {
  const state = useData((signal) => api("/v1/budgets", { project, only_alerting: alertingOnly ? "true" : "" }, { signal }), [project, alertingOnly]);
  return (
    <Section title="Budgets" what="budgets" state={state}>
      {(d) =>
        d.budgets.length === 0 ? (
          <p class="muted" data-test="budgets-empty">No key {alertingOnly ? "is near or over" : "has"} a budget.</p>
        ) : (
          <div class="budgets" data-test="budgets">
            {d.budgets.map((b) => {
              const p = b.current?.percent_used || 0;
              return (
                <div class="budget" data-key={b.key_id} data-project={b.project}>
                  <div class="budget-head">
                    <KeyLink id={b.key_id} project={b.project} /> <span class="muted">{b.project}</span>
                    <Badge kind={budgetKind[b.status] || "muted"} test="budget-status">{enumLabel(b.status, "BUDGET_STATUS_").toUpperCase()}</Badge>
                  </div>
                  <div class={"bar bar-" + (budgetKind[b.status] || "muted")} title={p.toFixed(2) + "% used"}>
                    <div style={{ width: Math.min(p, 100) + "%" }} />
                  </div>
                  <div class="budget-foot">
                    <span data-test="budget-spent">{money(b.current?.cost_micros)}</span> of {budgetText(b.budget)} ·{" "}
                    <span data-test="budget-percent">{p.toFixed(1)}%</span> · period from <Time t={b.current?.period_start} />
                    {b.previous?.length ? (
                      <span class="muted">
                        {" "}· before: {b.previous.map((q) => q.percent_used.toFixed(0) + "%").join(", ")}
                      </span>
                    ) : null}
                  </div>
                </div>
              );
            })}
          </div>
        )
      }
    </Section>
  );
}

export function SpendPage({ params }) {
  const group = params.group || "key";
  const gran = params.gran || "day";
  const rangeName = params.range || "30d";
  const filters = { project: params.project || "", key: params.key || "", service: params.service || "", model: params.model || "" };
  const [draft, setDraft] = useState(filters);
  const set = (p) => navigate("spend", "", { ...params, ...p });
  return (
    <>
      <div class="page-head">
        <h1>Spend and budgets</h1>
      </div>
      <Filters onApply={() => set(draft)}>
        <Select label="group by" value={group} options={GROUPS} onChange={(v) => set({ group: v })} test="spend-group" />
        <Select label="bucket" value={gran} options={GRANULARITIES} onChange={(v) => set({ gran: v })} test="spend-gran" />
        <Select label="range" value={rangeName} options={SPEND_RANGES} onChange={(v) => set({ range: v, from: "", to: "" })} test="spend-range" />
        {["project", "key", "service", "model"].map((f) => (
          <label class="field">
            <span>{f}</span>
            <input size="14" value={draft[f]} data-test={"spend-" + f} onInput={(e) => setDraft({ ...draft, [f]: e.currentTarget.value.trim() })} />
          </label>
        ))}
      </Filters>
      <SpendReport
        group={group}
        gran={gran}
        rangeName={rangeName}
        from={params.from}
        to={params.to}
        filters={filters}
        withProject={(project) => href("spend", "", { ...params, project })}
      />
      <Budgets project={filters.project} alertingOnly={params.alerting === "1"} />
    </>
  );
}
