// Rotation: how far a double-key roll has come and whether the old key may be revoked, from
// GET /v1/rotations/{old_key_id}; the same verdict `keytrail rotation check` gates on.
import { useEffect, useMemo, useState } from "preact/hooks";
import { ambiguousProjects, api } from "../api.js";
import { dur, enumLabel, int, pct, toProtoDuration } from "../format.js";
import { Badge, Chart, href, KeyLink, navigate, pinProject, Section, Table, Time, toSeconds, useData } from "../ui.jsx";
import { KeyChooser } from "./key.jsx";

const migrationKind = { SERVICE_MIGRATION_MOVED: "ok", SERVICE_MIGRATION_MIXED: "warn", SERVICE_MIGRATION_NOT_STARTED: "bad" };

// shellQuote quotes a word for a POSIX shell when it needs it.
const shellQuote = (s) => (/^[A-Za-z0-9_.:\/-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'");

export function checkCommand({ oldKey, project, newKey, quiet, lookback, accept }) {
  const words = ["keytrail", "rotation", "check", "--old", oldKey];
  if (project) words.push("--project", project);
  if (newKey) words.push("--new", newKey);
  if (quiet) words.push("--quiet", quiet);
  if (lookback) words.push("--lookback", lookback);
  for (const s of accept) words.push("--accept-pending", s);
  return words.map(shellQuote).join(" ");
}

const callerKind = {
  CALLER_STATE_MOVED: "ok",
  CALLER_STATE_PENDING: "bad",
  CALLER_STATE_OVERDUE: "warn",
  CALLER_STATE_ACCEPTED: "info",
  CALLER_STATE_FAILING: "warn",
};

const splitList = (s) =>
  (s || "")
    .split(",")
    .map((x) => x.trim())
    .filter(Boolean);

// RotationPage is one double-key roll: #/rotation/{old_key_id}?project=P. Without a project
// the API resolves the old key among the caller's projects; when several know its id, the
// page offers them.
export function RotationPage({ id, params }) {
  const quiet = params.quiet || "";
  const lookback = params.lookback || "";
  const accept = splitList(params.accept);
  const [draft, setDraft] = useState({ quiet, lookback, accept: accept.join(", ") });
  const state = useData(
    (signal) =>
      api(
        "/v1/rotations/" + encodeURIComponent(id),
        {
          project: params.project,
          new_key_id: params.new,
          quiet_period: quiet ? toProtoDuration(quiet) : "",
          lookback: lookback ? toProtoDuration(lookback) : "",
          accept_pending: accept,
        },
        { signal },
      ),
    [id, params.project, params.new, quiet, lookback, params.accept],
  );
  const project = params.project || state.data?.project || "";
  useEffect(() => pinProject("rotation", id, params, state.data?.project), [state.data]);
  const charts = useMemo(() => {
    const d = state.data;
    if (!d || !d.series?.length) return null;
    const xs = d.series.map((b) => toSeconds(b.start));
    return {
      xs,
      share: [{ label: "share on " + d.new_key_id, values: d.series.map((b) => (Number(b.old_key_requests) + Number(b.new_key_requests) ? b.new_key_share * 100 : null)), fill: "rgba(37,99,235,0.12)" }],
      requests: [
        { label: d.old_key_id + " (old)", values: d.series.map((b) => Number(b.old_key_requests)), color: "#dc2626" },
        { label: d.new_key_id + " (new)", values: d.series.map((b) => Number(b.new_key_requests)), color: "#2563eb" },
      ],
    };
  }, [state.data]);

  const head = (
    <div class="page-head">
      <h1>
        Rotation of <span class="mono">{id}</span>
        {project ? <span class="muted"> in {project}</span> : null}
      </h1>
      <form
        class="inline"
        onSubmit={(e) => {
          e.preventDefault();
          navigate("rotation", id, { ...params, project, quiet: draft.quiet.trim(), lookback: draft.lookback.trim(), accept: splitList(draft.accept).join(",") });
        }}
      >
        <label class="field">
          <span>quiet period</span>
          <input size="6" placeholder="15m" value={draft.quiet} onInput={(e) => setDraft({ ...draft, quiet: e.currentTarget.value })} data-test="rotation-quiet" />
        </label>
        <label class="field">
          <span>lookback</span>
          <input size="6" placeholder="7d" value={draft.lookback} onInput={(e) => setDraft({ ...draft, lookback: e.currentTarget.value })} />
        </label>
        <label class="field">
          <span>accept pending (services, comma-separated)</span>
          <input size="28" value={draft.accept} onInput={(e) => setDraft({ ...draft, accept: e.currentTarget.value })} data-test="rotation-accept" />
        </label>
        <button type="submit">Judge</button>
      </form>
    </div>
  );
  if (ambiguousProjects(state.error))
    return (
      <>
        {head}
        <KeyChooser id={id} error={state.error} open={(p) => href("rotation", id, { ...params, project: p })} />
      </>
    );
  return (
    <>
      {head}
      <Section title="Verdict" what="the rotation" state={state}>
        {(d) => (
          <>
            <div class={"verdict " + (d.verdict === "ROTATION_VERDICT_SAFE_TO_REVOKE" ? "verdict-ok" : "verdict-wait")}>
              <span data-test="rotation-verdict">{enumLabel(d.verdict, "ROTATION_VERDICT_").toUpperCase()}</span>
              <span class="verdict-share">
                <strong data-test="rotation-share">{pct(d.new_key_share)}</strong> of requests on the new key
              </span>
            </div>
            <ul class="reasons" data-test="rotation-reasons">
              {(d.reasons || []).map((r) => (
                <li>{r}</li>
              ))}
            </ul>
            {d.services_to_chase?.length ? (
              <p>
                Services to chase:{" "}
                {d.services_to_chase.map((s) => (
                  <Badge kind="bad" test="chase">{s}</Badge>
                ))}
              </p>
            ) : null}
            <dl class="kvs">
              <div class="kv"><dt>old key</dt><dd><KeyLink id={d.old_key_id} project={d.project} /> <span class="muted">{d.old_key_status}</span></dd></div>
              <div class="kv"><dt>new key</dt><dd><KeyLink id={d.new_key_id} project={d.project} /></dd></div>
              <div class="kv"><dt>project</dt><dd>{d.project}</dd></div>
              <div class="kv"><dt>rotated</dt><dd><Time t={d.rotated_at} empty="no rotation event" /> {d.rotated_by ? <span class="muted">by {d.rotated_by}</span> : null}</dd></div>
              <div class="kv"><dt>old key revoked</dt><dd><Time t={d.old_key_revoked_at} empty="not yet" /></dd></div>
              <div class="kv"><dt>window (UTC)</dt><dd><Time t={d.window_start} /> → <Time t={d.window_end} /></dd></div>
              <div class="kv"><dt>requests old / new</dt><dd><span data-test="rotation-old-requests">{int(d.old_key_requests)}</span> / <span data-test="rotation-new-requests">{int(d.new_key_requests)}</span></dd></div>
              <div class="kv"><dt>old key's last success</dt><dd><Time t={d.old_key_last_success} empty="none" /></dd></div>
              <div class="kv"><dt>quiet period</dt><dd>{dur(d.quiet_period)}</dd></div>
              <div class="kv"><dt>callers' history from (UTC)</dt><dd><Time t={d.lookback_start} /> <span class="muted">({dur(d.lookback)} lookback)</span></dd></div>
              {d.accepted_pending?.length ? (
                <div class="kv"><dt>accepted pending</dt><dd>{d.accepted_pending.join(", ")}</dd></div>
              ) : null}
            </dl>
            <div class="command">
              <div class="muted">Gate the revocation on the same verdict (exit 0 only when safe; add --addr and --token or --ca-file for your server):</div>
              <pre data-test="rotation-command">
                {checkCommand({ oldKey: d.old_key_id, project: d.project, newKey: params.new || "", quiet, lookback, accept })}
              </pre>
            </div>
          </>
        )}
      </Section>
      {state.error ? null : (
        <>
      <Section title="Share on the new key over time" what="the traffic shift" state={state}>
        {() =>
          charts ? (
            <>
              <Chart xs={charts.xs} series={charts.share} test="rotation-share-chart" yRange={[0, 100]} yFmt={(v) => (v == null ? "—" : v.toFixed(0) + "%")} height={200} />
              <Chart xs={charts.xs} series={charts.requests} test="rotation-requests-chart" height={180} />
            </>
          ) : (
            <p class="muted">No traffic on either key in the window.</p>
          )
        }
      </Section>
      <Section title="The old key's callers over the history" what="the old key's callers" state={state}>
        {(d) => (
          <Table
            head={["service", "state", { text: "requests", cls: "num" }, "last success (UTC)", { text: "runs", cls: "num" }, "rhythm", "expected by (UTC)", "new key's last success (UTC)", "evidence"]}
            test="rotation-callers"
            empty="No service called the old key over the history."
          >
            {(d.old_key_callers || []).map((c) => (
              <tr data-service={c.service}>
                <td><a href={href("search", "", { service: c.service })}>{c.service}</a></td>
                <td><Badge kind={callerKind[c.state] || "muted"} test="caller-state">{enumLabel(c.state, "CALLER_STATE_")}</Badge></td>
                <td class="num">{int(c.requests)}</td>
                <td><Time t={c.last_success} empty="none" /></td>
                <td class="num">{int(c.runs)}</td>
                <td>{c.rhythm ? dur(c.rhythm) : <span class="muted">—</span>}</td>
                <td><Time t={c.expected_by} /></td>
                <td><Time t={c.new_key_last_success} empty="never" /></td>
                <td class="evidence">{c.evidence}</td>
              </tr>
            ))}
          </Table>
        )}
      </Section>
      <Section title="Services in the window" what="the services of the rotation" state={state}>
        {(d) => (
          <Table
            head={["service", "migration", { text: "old key requests", cls: "num" }, { text: "new key requests", cls: "num" }, "old last seen (UTC)", "old last success (UTC)", "new first seen (UTC)", "new last seen (UTC)"]}
            test="rotation-services"
          >
            {d.services.map((s) => (
              <tr data-service={s.service}>
                <td><a href={href("search", "", { service: s.service })}>{s.service}</a></td>
                <td><Badge kind={migrationKind[s.migration] || "muted"} test="migration">{enumLabel(s.migration, "SERVICE_MIGRATION_")}</Badge></td>
                <td class="num" data-test="old">{int(s.old_key_requests)}</td>
                <td class="num" data-test="new">{int(s.new_key_requests)}</td>
                <td><Time t={s.old_key_last_seen} /></td>
                <td><Time t={s.old_key_last_success} empty="none" /></td>
                <td><Time t={s.new_key_first_seen} empty="never" /></td>
                <td><Time t={s.new_key_last_seen} empty="never" /></td>
              </tr>
            ))}
          </Table>
        )}
      </Section>
      <Section title="Requests after revocation" what="the requests after revocation" state={state}>
        {(d) => (
          <Table head={["service", "status", { text: "requests", cls: "num" }, "first (UTC)", "last (UTC)"]} test="after-revocation" empty={d.old_key_revoked_at ? "None: nothing called the old key after it was revoked." : "The old key is not revoked yet."}>
            {(d.requests_after_revocation || []).map((r) => (
              <tr data-service={r.service}>
                <td>{r.service}</td>
                <td>{r.status_code}</td>
                <td class="num">{int(r.requests)}</td>
                <td><Time t={r.first_seen} /></td>
                <td><Time t={r.last_seen} /></td>
              </tr>
            ))}
          </Table>
        )}
      </Section>
        </>
      )}
    </>
  );
}
