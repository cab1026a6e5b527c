// Audit trail: the lifecycle events, filtered (GET /v1/audit/events), and each project's hash
// chain recomputed (GET /v1/audit/verify) with its head hash to keep outside keytrail.
import { useState } from "preact/hooks";
import { api } from "../api.js";
import { int, parseUTC, shownUTC } from "../format.js";
import { Badge, ErrorBox, Filters, Loading, navigate, Section, Select, Table, useData } from "../ui.jsx";
import { EventRow } from "./key.jsx";

const ACTIONS = [["", "any action"], ...["CREATED", "ROTATED", "DISABLED", "ENABLED", "EXPIRED", "DELETED", "SCOPES_CHANGED", "BUDGET_CHANGED"].map((a) => ["ACTION_" + a, a.toLowerCase().replace("_", " ")])];
const PAGE = 100;

function Events({ filters }) {
  // Pages already shown stay; "more" appends the next one.
  const [extra, setExtra] = useState({ filtersKey: "", events: [], token: null, loading: false, error: null });
  const filtersKey = JSON.stringify(filters);
  const params = { project: filters.project, key_id: filters.key, actor: filters.actor, action: filters.action, start_time: filters.from, end_time: filters.to, page_size: PAGE };
  const state = useData((signal) => api("/v1/audit/events", params, { signal }), [filtersKey]);
  const more = extra.filtersKey === filtersKey ? extra : { filtersKey, events: [], token: null, loading: false, error: null };
  const next = more.token ?? state.data?.next_page_token;
  const loadMore = () => {
    setExtra({ ...more, loading: true, error: null });
    api("/v1/audit/events", { ...params, page_token: next }).then(
      (d) => setExtra({ filtersKey, events: [...more.events, ...d.events], token: d.next_page_token || "", loading: false, error: null }),
      (error) => setExtra({ ...more, loading: false, error }),
    );
  };
  return (
    <Section title="Lifecycle events" what="the audit trail" state={state}>
      {(d) => (
        <>
          <Table head={["time (UTC)", "project", "key", "action", "actor", "details", "reason"]} test="audit-events" empty="No event matches these filters.">
            {[...d.events, ...more.events].map((e) => (
              <EventRow e={e} withKey />
            ))}
          </Table>
          {more.error ? <ErrorBox error={more.error} what="more events" /> : null}
          {more.loading ? <Loading what="more events" /> : next ? <button onClick={loadMore} data-test="audit-more">Load {PAGE} more</button> : null}
        </>
      )}
    </Section>
  );
}

function Chains({ project }) {
  const state = useData((signal) => api("/v1/audit/verify", { project }, { signal }), [project]);
  return (
    <Section title="Chain verification" what="the chain verification" state={state}>
      {(d) => (
        <>
          <p>
            {d.intact ? (
              <Badge kind="ok" test="chain-intact">every chain intact</Badge>
            ) : (
              <Badge kind="bad" test="chain-intact">a chain is broken</Badge>
            )}{" "}
            <span class="muted">Keep the head hashes outside keytrail (a ticket, a signed log): a later rewrite of a chain's tail shows as a different head.</span>
          </p>
          <Table head={["project", "status", { text: "rows checked", cls: "num" }, "chain seq", "head hash", "first break"]} test="chains">
            {d.projects.map((p) => (
              <tr data-project={p.project}>
                <td>{p.project}</td>
                <td>{p.intact ? <Badge kind="ok">intact</Badge> : <Badge kind="bad">broken</Badge>}</td>
                <td class="num">{int(p.rows_checked)}</td>
                <td>
                  {p.first_chain_seq}–{p.last_chain_seq}
                </td>
                <td class="mono hash" data-test="head-hash">{p.head_hash}</td>
                <td>{p.first_break ? "seq " + p.first_break.chain_seq + " (" + p.first_break.event_id + "): " + p.first_break.problem : ""}</td>
              </tr>
            ))}
          </Table>
        </>
      )}
    </Section>
  );
}

export function AuditPage({ params }) {
  const filters = { project: params.project || "", key: params.key || "", actor: params.actor || "", action: params.action || "", from: params.from || "", to: params.to || "" };
  const [draft, setDraft] = useState({ ...filters, from: shownUTC(filters.from), to: shownUTC(filters.to) });
  const [bad, setBad] = useState("");
  return (
    <>
      <div class="page-head">
        <h1>Audit trail</h1>
      </div>
      <Filters
        onApply={() => {
          const from = parseUTC(draft.from), to = parseUTC(draft.to);
          setBad(from === null ? "from" : to === null ? "to" : "");
          if (from !== null && to !== null) navigate("audit", "", { ...draft, from, to });
        }}
      >
        {["project", "key", "actor"].map((f) => (
          <label class="field">
            <span>{f}</span>
            <input size="14" value={draft[f]} data-test={"audit-" + f} onInput={(e) => setDraft({ ...draft, [f]: e.currentTarget.value.trim() })} />
          </label>
        ))}
        <Select label="action" value={draft.action} options={ACTIONS} onChange={(v) => setDraft({ ...draft, action: v })} test="audit-action" />
        {["from", "to"].map((f) => (
          <label class="field">
            <span>{bad === f ? "not a time: YYYY-MM-DD HH:MM:SS" : f + " (UTC)"}</span>
            <input size="19" placeholder="YYYY-MM-DD HH:MM" value={draft[f]} onInput={(e) => setDraft({ ...draft, [f]: e.currentTarget.value })} />
          </label>
        ))}
      </Filters>
      <Chains project={filters.project} />
      <Events filters={filters} />
    </>
  );
}
