package api

import (
	"context"
	"time"

	"github.com/keytrail/keytrail/query/chreader"
)

// The handlers read through these interfaces, one per kind of answer, so that a handler can be
// tested with a fake of the one it calls. *chreader.Reader implements them all.

// UsageSource answers which services used a key, which keys a service used, and a key's use
// over time.
type UsageSource interface {
	KeyServices(ctx context.Context, req chreader.UsageRequest) (chreader.UsagePage, error)
	ServiceKeys(ctx context.Context, req chreader.UsageRequest) (chreader.UsagePage, error)
	KeyUsage(ctx context.Context, req chreader.KeyUsageRequest) (chreader.KeyUsageReport, error)
}

// KeySource answers a key's state, and the keys with their state.
type KeySource interface {
	Key(ctx context.Context, req chreader.KeyRequest) (chreader.Key, error)
	Keys(ctx context.Context, req chreader.KeysRequest) (chreader.KeysPage, error)
}

// AuditSource reads the lifecycle audit trail and verifies its hash chains.
type AuditSource interface {
	AuditEvents(ctx context.Context, req chreader.AuditRequest) (chreader.AuditPage, error)
	VerifyAuditTrail(ctx context.Context, project string, start, end time.Time) ([]chreader.ChainVerification, error)
}

// SpendSource answers spend reports and budget utilisation.
type SpendSource interface {
	Spend(ctx context.Context, req chreader.SpendRequest) (chreader.SpendPage, error)
	Budgets(ctx context.Context, req chreader.BudgetsRequest) ([]chreader.BudgetUtilization, error)
}

// AnomalySource scans for anomalies and new callers (the alert evaluator's alerting.Source is
// the same pair).
type AnomalySource interface {
	Anomalies(ctx context.Context, req chreader.AnomalyRequest) (chreader.AnomalyResult, error)
	NewCallers(ctx context.Context, req chreader.NewCallersRequest) (chreader.NewCallersResult, error)
}

// RotationSource gathers and judges a double-key roll.
type RotationSource interface {
	Rotation(ctx context.Context, req chreader.RotationRequest) (chreader.RotationReport, error)
}

// Reader is every source the API reads.
type Reader interface {
	UsageSource
	KeySource
	AuditSource
	SpendSource
	AnomalySource
	RotationSource
}

var _ Reader = (*chreader.Reader)(nil)
