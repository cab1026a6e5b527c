package migrations

// Rollup is a table a materialized view fills from usage_events, with the expressions whose
// values must equal usage_events' own once every insert's views have run. Tests, the fault
// suite and the benchmark wait on these, so a rollup added by a migration is added here.
type Rollup struct {
	Table string
	// Requests, Errors and Cost equal count(), countIf(status_code >= 400) and
	// sum(cost_micros) of usage_events; Errors and Cost are "" where the table does not keep
	// them.
	Requests, Errors, Cost string
}

// UsageRollups are every rollup that counts every usage event. key_client_ip_totals is not
// among them: it counts only events with a client IP.
var UsageRollups = []Rollup{
	{Table: "usage_key_minute", Requests: "countMerge(requests)", Errors: "sumMerge(errors)"},
	{Table: "usage_by_service_minute", Requests: "countMerge(requests)", Errors: "sumMerge(errors)"},
	{Table: "key_service_totals", Requests: "countMerge(requests)", Errors: "sumMerge(errors)"},
	{Table: "spend_hourly", Requests: "sum(requests)", Errors: "sum(errors)", Cost: "sum(total_cost_micros)"},
	{Table: "usage_key_5min", Requests: "sum(requests)", Errors: "sum(errors)", Cost: "sum(total_cost_micros)"},
	{Table: "spend_daily", Requests: "sum(requests)", Errors: "sum(errors)", Cost: "sum(total_cost_micros)"},
	{Table: "usage_key_hourly", Requests: "sum(requests)", Errors: "sum(errors)", Cost: "sum(total_cost_micros)"},
}
