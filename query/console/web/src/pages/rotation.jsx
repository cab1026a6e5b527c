// Rotation: how far a double-key roll has come and whether the old key may be revoked, from
// GET /v1/rotations/{old_key_id}; the same verdict `keytrail rotation check` gates on.
import { useMemo, useState } from "preact/hooks";
import { api } from "../api.js";
import { dur, enumLabel, int, pct } from "../format.js";
import { Badge, Chart, href, KeyLink, navigate, Section, Table, Time, toSeconds, useData } from "../ui.jsx";

const migrationKind = { SERVICE_MIGRATION_MOVED: "ok", SERVICE_MIGRATION_MIXED: "warn", SERVICE_MIGRATION_NOT_STARTED: "bad" };

// shellQuote quotes a word for a POSIX shell when it needs it.
const shellQuote = (s) => (/^[A-Za-z0-9_.:\/-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'");

export function checkCommand(oldKey, newKey, quiet) {
  const words = ["keytrail", "rotation", "check", "--old", oldKey];
  if (newKey) words.push("--new", newKey);
  if (quiet) words.push("--quiet", quiet);
  return words.map(shellQuote).join(" ");
}

export function RotationPage({ id, params }) {
  const quiet = params.quiet || "";
  const [draft, setDraft] = useState(quiet);
  const state = useData(
    (signal) => api("/v1/rotations/" + encodeURIComponent(id), { new_key_id: params.new, quiet_period: quiet ? toProtoDuration(quiet) : "" }, { signal }),
    [id, params.new, quiet],
  );
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

  return (
    <>
      <div class="page-head">
        <h1>
          Rotation of <span class="mono">{id}</span>
        </h1>
        <form
          class="inline"
          onSubmit={(e) => {
            e.preventDefault();
            navigate("rotation", id, { ...params, quiet: draft.trim() });
          }}
        >
          <label class="field">
            <span>quiet period</span>
            <input size="6" placeholder="15m" value={draft} onInput={(e) => setDraft(e.currentTarget.value)} data-test="rotation-quiet" />
          </label>
          <button type="submit">Judge</button>
        </form>
      </div>
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
              <div class="kv"><dt>old key</dt><dd><KeyLink id={d.old_key_id} /> <span class="muted">{d.old_key_status}</span></dd></div>
              <div class="kv"><dt>new key</dt><dd><KeyLink id={d.new_key_id} /></dd></div>
              <div class="kv"><dt>project</dt><dd>{d.project}</dd></div>
              <div class="kv"><dt>rotated</dt><dd><Time t={d.rotated_at} empty="no rotation event" /> {d.rotated_by ? <span class="muted">by {d.rotated_by}</span> : null}</dd></div>
              <div class="kv"><dt>old key revoked</dt><dd><Time t={d.old_key_revoked_at} empty="not yet" /></dd></div>
              <div class="kv"><dt>window (UTC)</dt><dd><Time t={d.window_start} /> → <Time t={d.window_end} /></dd></div>
              <div class="kv"><dt>requests old / new</dt><dd><span data-test="rotation-old-requests">{int(d.old_key_requests)}</span> / <span data-test="rotation-new-requests">{int(d.new_key_requests)}</span></dd></div>
              <div class="kv"><dt>old key's last success</dt><dd><Time t={d.old_key_last_success} empty="none" /></dd></div>
              <div class="kv"><dt>quiet period</dt><dd>{dur(d.quiet_period)}</dd></div>
            </dl>
            <div class="command">
              <div class="muted">Gate the revocation on the same verdict (exit 0 only when safe; add --addr and --token or --ca-file for your server):</div>
              <pre data-test="rotation-command">{checkCommand(d.old_key_id, params.new || "", quiet)}</pre>
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
      <Section title="Services" what="the services of the rotation" state={state}>
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

// toProtoDuration turns "15m", "2h", "90s" into the seconds form protojson expects ("900s");
// anything else is passed as typed for the server to refuse with a message.
function toProtoDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d)$/.exec(s.trim());
  if (!m) return s;
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] + "s";
}
