// Key: the key's state now or at a chosen instant, its lifecycle timeline, the services
// using it, their usage over time and the callers new to it.
import { useEffect, useMemo, useState } from "preact/hooks";
import { ambiguousProjects, api } from "../api.js";
import { enumLabel, int, lastRange, money, parseUTC, rangeOptions, shownUTC, utc } from "../format.js";
import { Badge, Chart, ErrorBox, href, KeyLink, navigate, pinProject, Section, Select, Table, Time, toSeconds, useData } from "../ui.jsx";
import { statusKind, statusText } from "./search.jsx";

const RANGE_OPTIONS = rangeOptions("1h", "6h", "24h", "7d", "30d");

const METRICS = [
  ["requests", "requests"],
  ["errors", "errors (status ≥ 400)"],
  ["cost_micros", "cost"],
];

export const budgetText = (b) =>
  b && b.amount_micros && b.amount_micros !== "0" ? money(b.amount_micros) + " per " + enumLabel(b.period, "BUDGET_PERIOD_") : "none";

function Field({ label, children, test }) {
  return (
    <div class="kv">
      <dt>{label}</dt>
      <dd data-test={test}>{children}</dd>
    </div>
  );
}

const keyPath = (id) => "/v1/keys/" + encodeURIComponent(id);

// KeyChooser answers a key id that several projects the caller may read know, asked about
// without a project (the API's 400 names them): one row per project, with that project's key
// state (GET /v1/keys/{key_id}?project=), each opening the page asked for with its project.
export function KeyChooser({ id, error, at, open }) {
  const projects = ambiguousProjects(error);
  const state = useData(
    (signal) =>
      Promise.all(
        projects.map((project) =>
          api(keyPath(id), { project, at }, { signal }).then(
            (d) => ({ project, key: d.key }),
            (err) => {
              if (err.name === "AbortError") throw err;
              return { project, err };
            },
          ),
        ),
      ),
    [id, projects.join("\n"), at],
  );
  return (
    <Section title={"Which " + id + "?"} what="the keys of this id" state={state}>
      {(rows) => (
        <>
          <p data-test="key-chooser-why">
            A key is (project, key_id): <span class="mono">{id}</span> names a key in each of {int(projects.length)} projects you may
            read. Choose one.
          </p>
          <Table head={["project", "status", "last used (UTC)", ""]} test="key-chooser">
            {rows.map((r) => (
              <tr data-project={r.project}>
                <td>
                  <a href={open(r.project)} data-test="key-choice">{r.project}</a>
                </td>
                {r.err ? (
                  <td colspan="3"><ErrorBox error={r.err} /></td>
                ) : (
                  <>
                    <td><Badge kind={statusKind(r.key.status)}>{statusText(r.key.status)}</Badge></td>
                    <td><Time t={r.key.last_used_at} empty="never" /></td>
                    <td>{r.key.replaced_by_key_id ? "replaced by " + r.key.replaced_by_key_id : ""}</td>
                  </>
                )}
              </tr>
            ))}
          </Table>
        </>
      )}
    </Section>
  );
}

function KeyState({ id, at, setAt, state }) {
  const [draft, setDraft] = useState(shownUTC(at));
  const [bad, setBad] = useState(false);
  return (
    <Section
      title={at ? "State at " + utc(at) + " UTC" : "State now"}
      what="the key's state"
      state={state}
      actions={
        <form
          class="inline"
          onSubmit={(e) => {
            e.preventDefault();
            const t = parseUTC(draft);
            setBad(t === null);
            if (t !== null) setAt(t);
          }}
        >
          <label class="field">
            <span>{bad ? "not a time: YYYY-MM-DD HH:MM:SS.mmm" : "at (UTC), e.g. 2026-11-22 10:31:05.250"}</span>
            <input size="24" placeholder="now" value={draft} data-test="key-at" onInput={(e) => setDraft(e.currentTarget.value)} />
          </label>
          <button type="submit">Show</button>
          {at ? (
            <button
              type="button"
              class="secondary"
              onClick={() => {
                setDraft("");
                setAt("");
              }}
            >
              Now
            </button>
          ) : null}
        </form>
      }
    >
      {({ key: k }) => (
        <>
          <dl class="kvs">
            <Field label="status" test="key-status">
              <Badge kind={statusKind(k.status)}>{statusText(k.status)}</Badge> <span class="muted">since</span> <Time t={k.status_since} />
            </Field>
            <Field label="project" test="key-project">{k.project}</Field>
            <Field label="created">
              <Time t={k.created_at} /> {k.created_by ? <span class="muted">by {k.created_by}</span> : null}
            </Field>
            <Field label="expires"><Time t={k.expires_at} empty="never" /></Field>
            <Field label="scopes">{k.scopes?.length ? k.scopes.join(", ") : <span class="muted">none</span>}</Field>
            <Field label="budget" test="key-budget">{budgetText(k.budget)}</Field>
            <Field label="replaces"><KeyLink id={k.replaces_key_id} project={k.project} /></Field>
            <Field label="replaced by"><KeyLink id={k.replaced_by_key_id} project={k.project} /></Field>
            <Field label="last event"><Time t={k.last_event_at} /></Field>
            <Field label="last used" test="key-last-used"><Time t={k.last_used_at} empty="never" /></Field>
            <Field label="as of"><Time t={k.as_of} /></Field>
          </dl>
          <p class="links">
            {k.replaced_by_key_id ? (
              <a href={href("rotation", id, { project: k.project })} data-test="key-rotation-link">Rotation {id} → {k.replaced_by_key_id}</a>
            ) : null}
            {k.replaces_key_id ? <a href={href("rotation", k.replaces_key_id, { project: k.project })}>Rotation {k.replaces_key_id} → {id}</a> : null}
            <a href={href("spend", "", { key: id, project: k.project, group: "service", gran: "hour", range: "24h" })}>Spend of this key</a>
            <a href={href("audit", "", { key: id, project: k.project })}>Audit trail of this key</a>
          </p>
        </>
      )}
    </Section>
  );
}

// changesText is what a lifecycle event changed, in a line.
function changesText(e) {
  const parts = (e.changes || []).map((c) => c.field + ": " + (c.before || "∅") + " → " + (c.after || "∅"));
  if (e.new_key_id) parts.push("new key " + e.new_key_id);
  if (e.expires_at) parts.push("expires " + utc(e.expires_at));
  if (e.budget?.amount_micros && e.budget.amount_micros !== "0") parts.push("budget " + budgetText(e.budget));
  if (e.action === "ACTION_CREATED" && e.scopes?.length) parts.push("scopes " + e.scopes.join(","));
  return parts.join("; ");
}

function ActionBadge({ action }) {
  const kind = { ACTION_DISABLED: "bad", ACTION_DELETED: "bad", ACTION_EXPIRED: "warn", ACTION_ROTATED: "info", ACTION_CREATED: "ok", ACTION_ENABLED: "ok" }[action] || "muted";
  return <Badge kind={kind}>{enumLabel(action, "ACTION_")}</Badge>;
}

const actorText = (e) => (e.actor || "?") + (e.actor_type && e.actor_type !== "ACTOR_TYPE_UNSPECIFIED" ? " (" + enumLabel(e.actor_type, "ACTOR_TYPE_") + ")" : "");

// EventRow is one lifecycle event as a table row: time, (project and key,) action, actor,
// changes, reason.
export function EventRow({ e, withKey }) {
  return (
    <tr data-event={e.event_id} data-action={e.action}>
      <td><Time t={e.time} /></td>
      {withKey ? <td>{e.project}</td> : null}
      {withKey ? <td><KeyLink id={e.key_id} project={e.project} /></td> : null}
      <td><ActionBadge action={e.action} /></td>
      <td>{actorText(e)}</td>
      <td>{changesText(e)}</td>
      <td>{e.reason}</td>
    </tr>
  );
}

function Timeline({ id, project }) {
  const state = useData((signal) => api("/v1/audit/events", { key_id: id, project, page_size: 200 }, { signal }), [id, project]);
  return (
    <Section title="Lifecycle timeline" what="the key's lifecycle events" state={state}>
      {(d) => (
        <Table head={["time (UTC)", "action", "actor", "changes", "reason"]} test="timeline" empty="No lifecycle event: this key is known from usage only.">
          {d.events.map((e) => (
            <EventRow e={e} />
          ))}
        </Table>
      )}
    </Section>
  );
}

function Services({ id, project, range }) {
  const state = useData(
    (signal) => api(keyPath(id) + "/services", { project, start_time: range.start, end_time: range.end, page_size: 1000 }, { signal }),
    [id, project, range],
  );
  return (
    <Section title="Services using it" what="the services of the key" state={state}>
      {(d) => (
        <Table head={["service", "first seen (UTC)", "last seen (UTC)", { text: "requests", cls: "num" }, { text: "errors", cls: "num" }, "last success (UTC)"]} test="key-services" empty="No service used this key in this range.">
          {d.services.map((s) => (
            <tr data-service={s.service}>
              <td><a href={href("search", "", { service: s.service })}>{s.service}</a></td>
              <td><Time t={s.first_seen} /></td>
              <td><Time t={s.last_seen} /></td>
              <td class="num" data-test="requests">{int(s.request_count)}</td>
              <td class="num" data-test="errors">{int(s.error_count)}</td>
              <td><Time t={s.last_success} empty="none" /></td>
            </tr>
          ))}
        </Table>
      )}
    </Section>
  );
}

function Usage({ id, project, range }) {
  const [metric, setMetric] = useState("requests");
  const state = useData((signal) => api(keyPath(id) + "/usage", { project, start_time: range.start, end_time: range.end }, { signal }), [id, project, range]);
  const chart = useMemo(() => {
    const d = state.data;
    if (!d) return null;
    return {
      xs: d.bucket_starts.map(toSeconds),
      series: d.series.map((s) => ({ label: s.service, values: s[metric].map((v) => (metric === "cost_micros" ? Number(v) / 1e6 : Number(v))) })),
    };
  }, [state.data, metric]);
  return (
    <Section
      title="Usage per service"
      what="the key's usage series"
      state={state}
      actions={<Select label="metric" value={metric} options={METRICS} onChange={setMetric} test="usage-metric" />}
    >
      {(d) =>
        d.series.length === 0 ? (
          <p class="muted">No request in this range.</p>
        ) : (
          <>
            <Chart xs={chart.xs} series={chart.series} test="usage-chart" yFmt={metric === "cost_micros" ? (v) => (v == null ? "—" : v.toFixed(2)) : undefined} />
            <p class="muted">
              Buckets of {parseInt(d.bucket) / 60} minutes (UTC), from GET /v1/keys/{id}/usage?project={project}.
            </p>
          </>
        )
      }
    </Section>
  );
}

function NewCallers({ id, project, range }) {
  const state = useData((signal) => api("/v1/new-callers", { key_id: id, project, start_time: range.start, end_time: range.end }, { signal }), [id, project, range]);
  return (
    <Section title="New callers" what="the key's new callers" state={state}>
      {(d) => <NewCallerTable callers={d.callers} empty="No service or client IP used this key for the first time in this range." />}
    </Section>
  );
}

const CALLER_ROWS = 50;

export function NewCallerTable({ callers, empty, showKey }) {
  const [all, setAll] = useState(false);
  return (
    <>
    <Table head={[...(showKey ? ["key"] : []), "caller", "kind", "first seen (UTC)", "last seen (UTC)", { text: "requests", cls: "num" }, "key first used (UTC)"]} test="new-callers" empty={empty}>
      {(all ? callers : callers.slice(0, CALLER_ROWS)).map((c) => (
        <tr data-caller={c.caller} data-key={c.key_id}>
          {showKey ? <td><KeyLink id={c.key_id} project={c.project} /></td> : null}
          <td>{c.kind === "CALLER_KIND_SERVICE" ? <a href={href("search", "", { service: c.caller })}>{c.caller}</a> : c.caller}</td>
          <td>{enumLabel(c.kind, "CALLER_KIND_")}</td>
          <td><Time t={c.first_seen} /></td>
          <td><Time t={c.last_seen} /></td>
          <td class="num">{int(c.requests)}</td>
          <td><Time t={c.key_first_seen} /></td>
        </tr>
      ))}
    </Table>
    {!all && callers.length > CALLER_ROWS ? (
      <button class="secondary" onClick={() => setAll(true)} data-test="callers-all">
        Show all {int(callers.length)} new callers
      </button>
    ) : null}
    </>
  );
}

// KeyPage is one key: #/key/{key_id}?project=P. Without a project (a bare id typed or
// bookmarked) the API resolves it among the projects the caller may read; when several know
// the id, the page offers them instead of mixing their keys.
export function KeyPage({ id, params }) {
  const rangeName = params.range || "24h";
  const range = useMemo(() => lastRange(rangeName), [rangeName, id]);
  const at = params.at || "";
  const state = useData((signal) => api(keyPath(id), { at, project: params.project }, { signal }), [id, at, params.project]);
  // Every list below is read within the key's project, named or resolved.
  const project = params.project || state.data?.key.project || "";
  useEffect(() => pinProject("key", id, params, state.data?.key.project), [state.data]);
  const set = (p) => navigate("key", id, { ...params, project, ...p });
  // A key the caller may not read, or that does not exist, gets its one error and nothing
  // else: the lists below filter to the caller's projects and would read as "none".
  const blocked = state.error && (state.error.kind === "forbidden" || state.error.kind === "notfound");
  const head = (
    <div class="page-head">
      <h1>
        Key <span class="mono" data-test="key-id">{id}</span>
        {project ? <span class="muted"> in {project}</span> : null}
      </h1>
      <Select label="range" value={rangeName} options={RANGE_OPTIONS} onChange={(v) => set({ range: v })} test="key-range" />
    </div>
  );
  if (ambiguousProjects(state.error))
    return (
      <>
        {head}
        <KeyChooser id={id} error={state.error} at={at} open={(p) => href("key", id, { ...params, project: p })} />
      </>
    );
  return (
    <>
      {head}
      <KeyState id={id} at={at} setAt={(v) => set({ at: v })} state={state} />
      {blocked || !project ? null : (
        <>
          <Usage id={id} project={project} range={range} />
          <Services id={id} project={project} range={range} />
          <NewCallers id={id} project={project} range={range} />
          <Timeline id={id} project={project} />
        </>
      )}
    </>
  );
}
