// Search: a key id or a service name. Suggestions come from GET /v1/keys (every key the
// caller may read, with its state) and from the services with traffic in the last 30 days
// (GET /v1/spend grouped by service per month: the API has no list of services of its own).
import { useMemo, useState } from "preact/hooks";
import { allPages, ambiguousProjects, api } from "../api.js";
import { int, lastRange } from "../format.js";
import { Badge, href, KeyLink, navigate, Section, Table, Time, useData } from "../ui.jsx";

const MAX_KEYS = 5000;
const MAX_KEY_MATCHES = 30;
const MAX_SERVICE_MATCHES = 10;

export const statusKind = (s) =>
  ({ KEY_STATUS_ACTIVE: "ok", KEY_STATUS_DISABLED: "bad", KEY_STATUS_EXPIRED: "warn", KEY_STATUS_DELETED: "bad" })[s] || "muted";
export const statusText = (s) => (s && s !== "KEY_STATUS_UNSPECIFIED" ? s.replace("KEY_STATUS_", "").toLowerCase() : "usage only");

async function loadSuggestions(signal) {
  const keys = await allPages("/v1/keys", { page_size: 1000 }, "keys", MAX_KEYS, { signal });
  let services = [];
  let servicesError = null;
  try {
    const { start, end } = lastRange("30d");
    const spend = await allPages(
      "/v1/spend",
      { group_by: "SPEND_DIMENSION_SERVICE", granularity: "GRANULARITY_MONTH", start_time: start, end_time: end, page_size: 1000 },
      "rows",
      MAX_KEYS,
      { signal },
    );
    services = [...new Set(spend.rows.map((r) => r.service))].sort();
  } catch (e) {
    if (e.name === "AbortError") throw e;
    servicesError = e; // a token reading several projects must name one for spend: keys still work
  }
  return { keys: keys.rows, truncated: keys.truncated, services, servicesError };
}

function ServiceKeys({ service }) {
  const state = useData((signal) => allPages("/v1/services/" + encodeURIComponent(service) + "/keys", { page_size: 1000 }, "keys", 5000, { signal }), [service]);
  return (
    <Section title={"Keys used by " + service} what={"the keys of " + service} state={state}>
      {(d) => (
        <Table head={["key", "project", "first seen (UTC)", "last seen (UTC)", { text: "requests", cls: "num" }, { text: "errors", cls: "num" }, "last success (UTC)"]} test="service-keys">
          {d.rows.map((r) => (
            <tr data-key={r.key_id}>
              <td><KeyLink id={r.key_id} project={r.project} /></td>
              <td>{r.project}</td>
              <td><Time t={r.first_seen} /></td>
              <td><Time t={r.last_seen} /></td>
              <td class="num" data-test="requests">{int(r.request_count)}</td>
              <td class="num">{int(r.error_count)}</td>
              <td><Time t={r.last_success} /></td>
            </tr>
          ))}
        </Table>
      )}
    </Section>
  );
}

// Attention lists what the key states alone reveal: keys revoked (disabled, expired, deleted)
// but used since, and rotations whose old key is still active.
function Attention({ keys }) {
  const revokedButUsed = keys.filter(
    (k) => ["KEY_STATUS_DISABLED", "KEY_STATUS_EXPIRED", "KEY_STATUS_DELETED"].includes(k.status) && k.last_used_at && k.status_since && Date.parse(k.last_used_at) > Date.parse(k.status_since),
  );
  const rotating = keys.filter((k) => k.replaced_by_key_id && k.status === "KEY_STATUS_ACTIVE");
  if (!revokedButUsed.length && !rotating.length) return null;
  return (
    <section class="card">
      <h2>Needs a look</h2>
      <Table head={["key", "project", "what", "since (UTC)", "last used (UTC)"]} test="attention">
        {revokedButUsed.map((k) => (
          <tr data-key={k.key_id} data-project={k.project} data-what="revoked-used">
            <td><KeyLink id={k.key_id} project={k.project} /></td>
            <td>{k.project}</td>
            <td>
              <Badge kind={statusKind(k.status)}>{statusText(k.status)}</Badge> but still called
            </td>
            <td><Time t={k.status_since} /></td>
            <td><Time t={k.last_used_at} /></td>
          </tr>
        ))}
        {rotating.map((k) => (
          <tr data-key={k.key_id} data-project={k.project} data-what="rotating">
            <td><KeyLink id={k.key_id} project={k.project} /></td>
            <td>{k.project}</td>
            <td>
              <a href={href("rotation", k.key_id, { project: k.project })}>rotation to {k.replaced_by_key_id} in progress</a>
            </td>
            <td />
            <td><Time t={k.last_used_at} /></td>
          </tr>
        ))}
      </Table>
    </section>
  );
}

export function SearchPage({ params }) {
  const [q, setQ] = useState(params.q || "");
  const state = useData(loadSuggestions, []);
  const data = state.data;
  const matches = useMemo(() => {
    if (!data) return [];
    const needle = q.trim().toLowerCase();
    const keys = data.keys.filter((k) => !needle || k.key_id.toLowerCase().includes(needle)).map((k) => ({ kind: "key", k }));
    const services = data.services.filter((s) => !needle || s.toLowerCase().includes(needle)).map((s) => ({ kind: "service", s }));
    return [...services.slice(0, MAX_SERVICE_MATCHES), ...keys.slice(0, MAX_KEY_MATCHES)];
  }, [data, q]);

  // suggested groups the key suggestions by key id: a key is (project, key_id), and one id
  // may name keys of several projects.
  const suggested = useMemo(() => {
    const byID = new Map();
    for (const m of matches) if (m.kind === "key") byID.set(m.k.key_id, [...(byID.get(m.k.key_id) || []), m.k.project]);
    return byID;
  }, [matches]);

  // go opens what was typed: a service's keys, or a key's page with its project. A key id
  // that several readable projects know opens the key page without one, which lets the
  // user choose.
  const go = async (value) => {
    const v = value.trim();
    if (!v) return;
    if (data?.services.includes(v)) return navigate("search", "", { service: v });
    const projects = (data?.keys || []).filter((k) => k.key_id === v).map((k) => k.project);
    if (projects.length) return navigate("key", v, { project: projects.length === 1 ? projects[0] : "" });
    // Not among the suggestions (the list may be cut): ask the API directly.
    try {
      const d = await api("/v1/keys/" + encodeURIComponent(v));
      return navigate("key", v, { project: d.key.project });
    } catch (e) {
      if (ambiguousProjects(e)) return navigate("key", v);
      return navigate("search", "", { service: v });
    }
  };

  return (
    <>
      <section class="card">
        <h1>Search</h1>
        <form
          class="search"
          onSubmit={(e) => {
            e.preventDefault();
            go(q);
          }}
        >
          <input
            type="search"
            list="suggestions"
            placeholder="key id (key_acme_0007) or service name (billing-api)"
            value={q}
            data-test="search-input"
            onInput={(e) => setQ(e.currentTarget.value)}
            autofocus
          />
          <button type="submit">Open</button>
          <datalist id="suggestions">
            {matches.filter((m) => m.kind === "service").map((m) => <option value={m.s} label="service" />)}
            {[...suggested].map(([id, projects]) => <option value={id} label={projects.join(", ")} />)}
          </datalist>
        </form>
        {state.error ? null : state.loading ? (
          <p class="muted">Loading suggestions…</p>
        ) : (
          <p class="muted" data-test="search-counts">
            {int(data.keys.length)} keys{data.truncated ? " (the first " + int(MAX_KEYS) + "; type a full id for others)" : ""} and{" "}
            {int(data.services.length)} services with traffic in the last 30 days
            {data.servicesError ? " (services unavailable: " + data.servicesError.message + ")" : ""}.
          </p>
        )}
      </section>
      {params.service ? <ServiceKeys service={params.service} /> : null}
      {data && !q.trim() && !params.service ? <Attention keys={data.keys} /> : null}
      <Section title="Matches" what="the keys and services" state={state}>
        {() => (
          <Table head={["", "name", "project", "status", "last used (UTC)"]} test="matches" empty="No key or service matches.">
            {matches.map((m) =>
              m.kind === "service" ? (
                <tr data-service={m.s}>
                  <td><Badge kind="info">service</Badge></td>
                  <td><a href={href("search", "", { service: m.s })}>{m.s}</a></td>
                  <td />
                  <td />
                  <td />
                </tr>
              ) : (
                <tr data-key={m.k.key_id} data-project={m.k.project}>
                  <td><Badge kind="muted">key</Badge></td>
                  <td><KeyLink id={m.k.key_id} project={m.k.project} /></td>
                  <td>{m.k.project}</td>
                  <td><Badge kind={statusKind(m.k.status)}>{statusText(m.k.status)}</Badge></td>
                  <td><Time t={m.k.last_used_at} empty="never" /></td>
                </tr>
              ),
            )}
          </Table>
        )}
      </Section>
    </>
  );
}
