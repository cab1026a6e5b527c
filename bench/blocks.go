package bench

import (
	"context"
	"fmt"
	"time"
)

// blockSizes are the insert block sizes the blocks phase compares. 20k is what the latency
// test's 20k events/s gives with a one-second flush interval.
var blockSizes = []int{10_000, 20_000, 50_000, 100_000, 200_000}

// runBlocks inserts the same usage rows into usage_events (eight materialized views) in
// blocks of each size, into a fresh database each time, and reads ClickHouse's CPU per
// million rows from the first insert until the merges they caused settled: what the
// ingester's batch size costs the server.
func (h *harness) runBlocks(ctx context.Context) error {
	n := h.sizes.DrainEvents
	meter := cpuMeter{chPID: h.chPID}
	base := time.Now()
	for _, size := range blockSizes {
		if size > n {
			continue
		}
		h.logf("blocks: %s rows in %s-row inserts", count(n), count(size))
		r, err := h.rawInsertRun(ctx, meter, n, base, size)
		if err != nil {
			return err
		}
		h.report.cost(CostRow{Stage: fmt.Sprintf("ClickHouse, %s-row inserts (raw, merges included)", count(size)),
			Value: r.chPerMillion, Unit: UnitCPUPerMillion,
			Note: fmt.Sprintf("%s rows/s; client %.2f µs/row", count(int(r.rate)), r.clientPerRow)})
	}
	return nil
}
