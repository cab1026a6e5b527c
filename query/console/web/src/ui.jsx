// Components and hooks every page uses: the hash router, data loading with its loading and
// error states, UTC times, badges and the chart.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import { exact, utc } from "./format.js";

// ---- routing: #/page/arg?param=value ----

export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/search";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "search", arg: parts[1] || "", params: Object.fromEntries(new URLSearchParams(query)) };
}

export function href(page, arg = "", params = {}) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "")).toString();
  return "#/" + page + (arg ? "/" + encodeURIComponent(arg) : "") + (q ? "?" + q : "");
}

export function navigate(page, arg, params) {
  location.hash = href(page, arg, params);
}

export function useRoute() {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const on = () => setRoute(parseHash());
    addEventListener("hashchange", on);
    return () => removeEventListener("hashchange", on);
  }, []);
  return route;
}

// ---- data ----

// useData runs load (which gets an AbortSignal) whenever deps change and keeps the last
// answer, the error, and whether a load is running.
export function useData(load, deps) {
  const [state, setState] = useState({ loading: true, data: null, error: null });
  useEffect(() => {
    const ctl = new AbortController();
    setState((s) => ({ loading: true, data: s.data, error: null }));
    load(ctl.signal).then(
      (data) => !ctl.signal.aborted && setState({ loading: false, data, error: null }),
      (error) => !ctl.signal.aborted && error.name !== "AbortError" && setState({ loading: false, data: null, error }),
    );
    return () => ctl.abort();
  }, deps);
  return state;
}

const errorTitles = {
  auth: "Not signed in: the server refused the credentials (401). The token may have expired or be wrong.",
  forbidden: "Not allowed (403): these credentials may not read this.",
  notfound: "Not found (404).",
  invalid: "The server refused the query (400).",
  ratelimited: "Too many requests (429): wait a moment and reload.",
  unreachable: "The keytrail server cannot be reached: it may be down, or the network is.",
  server: "The server failed to answer.",
};

export function ErrorBox({ error, what }) {
  return (
    <div class="error" role="alert" data-test="error" data-kind={error.kind || "server"}>
      <strong>{what ? "Could not load " + what + ". " : ""}{errorTitles[error.kind] || errorTitles.server}</strong>
      <div class="error-detail">{error.status ? "HTTP " + error.status + ": " : ""}{error.message}</div>
    </div>
  );
}

export function Loading({ what }) {
  return <p class="loading" data-test="loading">Loading {what}…</p>;
}

// Section shows a titled block with its loading and error states; children render only
// with data.
export function Section({ title, state, what, children, actions }) {
  return (
    <section class="card">
      <div class="card-head">
        <h2>{title}</h2>
        {actions}
      </div>
      {state.error ? <ErrorBox error={state.error} what={what || title.toLowerCase()} /> : null}
      {state.loading && !state.data ? <Loading what={what || title.toLowerCase()} /> : null}
      {state.data ? <div class={state.loading ? "stale" : ""}>{children(state.data)}</div> : null}
    </section>
  );
}

// Time shows an instant in UTC to the second; the title holds it exactly, to the millisecond.
export function Time({ t, empty = "—" }) {
  if (!t) return <span class="muted">{empty}</span>;
  return (
    <time datetime={t} title={exact(t)}>
      {utc(t)}
    </time>
  );
}

export function Badge({ kind, children, test }) {
  return <span class={"badge badge-" + kind} data-test={test}>{children}</span>;
}

// KeyLink opens a key's page. A key is (project, key_id): every link names the project of the
// row it comes from, so the page shows that project's key even when another project the
// caller may read has a key of the same id.
export const KeyLink = ({ id, project }) =>
  id ? (
    <a href={href("key", id, { project })} data-project={project || undefined}>
      {id}
    </a>
  ) : (
    <span class="muted">—</span>
  );

// pinProject writes the project a page resolved into its address without loading it again,
// so a bookmark or a shared link names the key exactly.
export function pinProject(page, arg, params, project) {
  if (project && !params.project) history.replaceState(null, "", href(page, arg, { ...params, project }));
}

// Filters is a page's form of filters, applied on submit.
export function Filters({ onApply, children }) {
  return (
    <form
      class="card filters"
      onSubmit={(e) => {
        e.preventDefault();
        onApply();
      }}
    >
      {children}
      <button type="submit">Apply</button>
    </form>
  );
}

export function Select({ label, value, options, onChange, test }) {
  return (
    <label class="field">
      <span>{label}</span>
      <select value={value} data-test={test} onChange={(e) => onChange(e.currentTarget.value)}>
        {options.map(([v, text]) => (
          <option value={v}>{text}</option>
        ))}
      </select>
    </label>
  );
}

export function Table({ head, children, test, empty }) {
  const rows = [].concat(children).filter(Boolean);
  if (rows.length === 0) return <p class="muted" data-test={test ? test + "-empty" : undefined}>{empty || "Nothing in this range."}</p>;
  return (
    <div class="table-wrap">
      <table data-test={test}>
        <thead>
          <tr>
            {head.map((h) => (
              <th class={typeof h === "object" ? h.cls : ""}>{typeof h === "object" ? h.text : h}</th>
            ))}
          </tr>
        </thead>
        <tbody>{rows}</tbody>
      </table>
    </div>
  );
}

// ---- charts ----

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569"];

const utcDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
const pad = (n) => String(n).padStart(2, "0");

// xTicks labels the time axis in UTC, 24-hour: times of day, dates where the day changes or
// the ticks are days apart, months when they are months apart.
function xTicks(u, splits, _axis, _space, incr) {
  return splits.map((ts) => {
    const d = new Date(ts * 1e3);
    const date = d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
    const time = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    if (incr >= 28 * 86400) return date.slice(0, 7);
    if (incr >= 86400) return date.slice(5);
    return time === "00:00" ? date.slice(5) : time;
  });
}

// Chart draws a uPlot time chart as wide as its container. xs are Unix seconds, series
// [{label, values, color?, dash?, fill?}]; yFmt formats the axis and the legend.
export function Chart({ xs, series, height = 240, yFmt, yRange, xRange, points, test, highlight }) {
  const box = useRef(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const fmt = yFmt || ((v) => (v == null ? "—" : Number(v).toLocaleString("en-US")));
    const opts = {
      width: Math.max(el.clientWidth, 200),
      height,
      tzDate: utcDate,
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: xRange ? { time: true, range: xRange } : { time: true }, y: yRange ? { range: yRange } : {} },
      axes: [
        { values: xTicks },
        { values: (_, ticks) => ticks.map(fmt), size: 60 },
      ],
      series: [
        { label: "time (UTC)", value: (_, v) => (v == null ? "—" : new Date(v * 1e3).toISOString().slice(0, 16).replace("T", " ")) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: s.width || 1.5,
          dash: s.dash,
          fill: s.fill,
          points: { show: !!points, size: 6 },
          value: (_, v) => fmt(v),
        })),
      ],
      hooks: highlight
        ? {
            draw: [
              (u) => {
                const x0 = u.valToPos(highlight[0], "x", true);
                const x1 = u.valToPos(highlight[1], "x", true);
                u.ctx.save();
                u.ctx.fillStyle = "rgba(220, 38, 38, 0.12)";
                u.ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height);
                u.ctx.restore();
              },
            ],
          }
        : {},
    };
    const plot = new uPlot(opts, [xs, ...series.map((s) => s.values)], el);
    const ro = new ResizeObserver(() => plot.setSize({ width: Math.max(el.clientWidth, 200), height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.destroy();
    };
  }, [xs, series, height]);
  return <div class="chart" ref={box} data-test={test} />;
}

export const toSeconds = (iso) => Date.parse(iso) / 1e3;
