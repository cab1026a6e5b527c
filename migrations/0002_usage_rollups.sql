-- Per-minute rollups of usage per key x service, one sorted by key and one by service, so
-- "which services used key K" and "which keys did service S use" each read a narrow range.
-- first/last seen keep millisecond precision through min/max states; last_success_ms is the
-- last request that did not fail (status < 400), 0 when there was none.

CREATE TABLE IF NOT EXISTS {{create "usage_by_key_minute"}}
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
ENGINE = {{engine "usage_by_key_minute" "AggregatingMergeTree()"}}
PARTITION BY toYYYYMM(minute)
ORDER BY (key_id, service, minute, project);
{{distributed "usage_by_key_minute"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "usage_by_key_minute_mv"}} TO {{to "usage_by_key_minute"}} AS
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

CREATE TABLE IF NOT EXISTS {{create "usage_by_service_minute"}}
(
    minute DateTime('UTC'),
    project String,
    service String,
    key_id String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8){{insert_tag_column}}
)
ENGINE = {{engine "usage_by_service_minute" "AggregatingMergeTree()"}}
PARTITION BY toYYYYMM(minute)
ORDER BY (service, key_id, minute, project);
{{distributed "usage_by_service_minute"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "usage_by_service_minute_mv"}} TO {{to "usage_by_service_minute"}} AS
SELECT
    toStartOfMinute(event_time) AS minute,
    project,
    service,
    key_id,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY minute, project, service, key_id;
