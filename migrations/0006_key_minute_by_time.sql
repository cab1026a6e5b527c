-- usage_key_minute replaces usage_by_key_minute: the same per key x service x minute cells,
-- sorted by key and then time, in 1024-row granules. Per-key questions over a time window
-- (rotation status, a key's state at an instant, services of a key in a range) read that
-- window. The old table was sorted by key then service; at 100M events a month a busy key
-- has about one request per cell, so each 8192-row granule of a key x service held all of
-- its minutes and a 3-day window read the key's whole month (278k rows for 11k; measured in
-- docs/benchmarks.md).
--
-- Backfill: copied from usage_by_key_minute (aggregate states as they are), about 3.5 min per
-- 100M events here. Like 0005 it must not race with ingestion (README, Upgrading). The old
-- view stops last; the old table is dropped by 0007, so a run of this file killed half way
-- starts over from an intact old table.

{{drop_view "usage_key_minute_mv"}};
{{drop_table "usage_key_minute"}};

CREATE TABLE IF NOT EXISTS {{create "usage_key_minute"}}
(
    minute DateTime('UTC'),
    project String,
    key_id String,
    service String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8){{insert_tag_column}}
)
ENGINE = {{engine "usage_key_minute" "AggregatingMergeTree()"}}
PARTITION BY toYYYYMM(minute)
ORDER BY (key_id, minute, service, project)
SETTINGS index_granularity = 1024;
{{distributed "usage_key_minute"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "usage_key_minute_mv"}} TO {{to "usage_key_minute"}} AS
SELECT
    toStartOfMinute(event_time) AS minute,
    project,
    key_id,
    service,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY minute, project, key_id, service;

INSERT INTO {{local "usage_key_minute"}} (minute, project, key_id, service, requests, errors, first_seen_ms, last_seen_ms, last_success_ms)
SELECT minute, project, key_id, service, requests, errors, first_seen_ms, last_seen_ms, last_success_ms
FROM {{local "usage_by_key_minute"}};

{{drop_view "usage_by_key_minute_mv"}};
