-- Rollups behind rotation, key state, spend, budgets, anomalies and new callers. Each is fed
-- by a materialized view from usage_events, so it holds exactly what the raw rows hold.

-- All-time use of each key by each service: tiny (one row per pair after merges), so "who
-- has ever used this key", "last used", "unused since" and "first time this service used
-- this key" never scan history.
CREATE TABLE IF NOT EXISTS {{create "key_service_totals"}}
(
    project String,
    key_id String,
    service String,
    requests AggregateFunction(count),
    errors AggregateFunction(sum, UInt64),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64),
    last_success_ms AggregateFunction(maxIf, Int64, UInt8){{insert_tag_column}}
)
ENGINE = {{engine "key_service_totals" "AggregatingMergeTree()"}}
ORDER BY (key_id, service, project);
{{distributed "key_service_totals"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "key_service_totals_mv"}} TO {{to "key_service_totals"}} AS
SELECT
    project,
    key_id,
    service,
    countState() AS requests,
    sumState(toUInt64(status_code >= 400)) AS errors,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms,
    maxIfState(event_time_ms, status_code < 400) AS last_success_ms{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY project, key_id, service;

-- All-time use of each key from each client IP, for "a new IP is using this key".
CREATE TABLE IF NOT EXISTS {{create "key_client_ip_totals"}}
(
    project String,
    key_id String,
    client_ip String,
    requests AggregateFunction(count),
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms AggregateFunction(max, Int64){{insert_tag_column}}
)
ENGINE = {{engine "key_client_ip_totals" "AggregatingMergeTree()"}}
ORDER BY (key_id, client_ip, project);
{{distributed "key_client_ip_totals"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "key_client_ip_totals_mv"}} TO {{to "key_client_ip_totals"}} AS
SELECT
    project,
    key_id,
    client_ip,
    countState() AS requests,
    minState(event_time_ms) AS first_seen_ms,
    maxState(event_time_ms) AS last_seen_ms{{insert_tag}}
FROM {{from "usage_events"}}
WHERE client_ip != ''
GROUP BY project, key_id, client_ip;

-- Spend per hour. Column names differ from the raw ones on purpose: an alias equal to the
-- column inside its own aggregate (sum(x) AS x) is rejected by ClickHouse.
CREATE TABLE IF NOT EXISTS {{create "spend_hourly"}}
(
    hour DateTime('UTC'),
    project String,
    key_id String,
    service String,
    model String,
    requests UInt64,
    errors UInt64,
    total_input_tokens UInt64,
    total_output_tokens UInt64,
    total_cost_micros Int64{{insert_tag_column}}
)
ENGINE = {{engine "spend_hourly" "SummingMergeTree()"}}
PARTITION BY toYYYYMM(hour)
ORDER BY (project, key_id, service, model, hour);
{{distributed "spend_hourly"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "spend_hourly_mv"}} TO {{to "spend_hourly"}} AS
SELECT
    toStartOfHour(event_time) AS hour,
    project,
    key_id,
    service,
    model,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(input_tokens) AS total_input_tokens,
    sum(output_tokens) AS total_output_tokens,
    sum(cost_micros) AS total_cost_micros{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY hour, project, key_id, service, model;

-- Five-minute buckets per key x service, sorted by time first: the anomaly scan reads every
-- key over a recent window.
CREATE TABLE IF NOT EXISTS {{create "usage_5min"}}
(
    bucket DateTime('UTC'),
    project String,
    key_id String,
    service String,
    requests UInt64,
    errors UInt64,
    total_cost_micros Int64{{insert_tag_column}}
)
ENGINE = {{engine "usage_5min" "SummingMergeTree()"}}
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, key_id, service, project);
{{distributed "usage_5min"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "usage_5min_mv"}} TO {{to "usage_5min"}} AS
SELECT
    toStartOfFiveMinute(event_time) AS bucket,
    project,
    key_id,
    service,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(cost_micros) AS total_cost_micros{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY bucket, project, key_id, service;
