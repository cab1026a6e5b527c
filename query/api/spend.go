package api

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/budget"
	"github.com/keytrail/keytrail/query/chreader"
)

// GetSpend answers GET /v1/spend. Money leaves as int64 micros and as the same amount in a
// decimal string built with integer arithmetic: no float ever touches it.
func (s *queryService) GetSpend(ctx context.Context, req *keytrailv1.GetSpendRequest) (*keytrailv1.GetSpendResponse, error) {
	// Totals span every row of the query, so a caller limited to several projects names one.
	project, _, err := scopedProject(ctx, req.GetProject(), true)
	if err != nil {
		return nil, err
	}
	groupBy, err := spendGroupBy(req.GetGroupBy())
	if err != nil {
		return nil, s.toStatus(ctx, "GetSpend", err)
	}
	granularity, err := spendGranularity(req.GetGranularity())
	if err != nil {
		return nil, s.toStatus(ctx, "GetSpend", err)
	}
	page, err := s.reader.Spend(ctx, chreader.SpendRequest{
		GroupBy:     groupBy,
		Granularity: granularity,
		Start:       timeOrZero(req.GetStartTime()),
		End:         timeOrZero(req.GetEndTime()),
		Filter: chreader.SpendFilter{
			Project: project, KeyID: req.GetKeyId(), Service: req.GetService(), Model: req.GetModel(),
		},
		PageSize:  req.GetPageSize(),
		PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "GetSpend", err)
	}
	resp := &keytrailv1.GetSpendResponse{
		Rows:            make([]*keytrailv1.SpendRow, len(page.Rows)),
		TotalRequests:   int64(page.TotalRequests),
		TotalCostMicros: page.TotalCostMicros,
		TotalCost:       budget.FormatMicros(page.TotalCostMicros),
		NextPageToken:   page.NextPageToken,
	}
	for i, r := range page.Rows {
		resp.Rows[i] = &keytrailv1.SpendRow{
			BucketStart:  timestamppb.New(r.Bucket),
			Project:      r.Project,
			KeyId:        r.KeyID,
			Service:      r.Service,
			Model:        r.Model,
			Requests:     int64(r.Requests),
			InputTokens:  int64(r.InputTokens),
			OutputTokens: int64(r.OutputTokens),
			CostMicros:   r.CostMicros,
			Cost:         budget.FormatMicros(r.CostMicros),
		}
	}
	return resp, nil
}

// ListBudgets answers GET /v1/budgets.
func (s *queryService) ListBudgets(ctx context.Context, req *keytrailv1.ListBudgetsRequest) (*keytrailv1.ListBudgetsResponse, error) {
	project, _, err := scopedProject(ctx, req.GetProject(), true)
	if err != nil {
		return nil, err
	}
	list, err := s.reader.Budgets(ctx, chreader.BudgetsRequest{
		Filter:           chreader.BudgetFilter{Project: project, KeyID: req.GetKeyId()},
		ThresholdPercent: req.GetThresholdPercent(),
		OnlyAlerting:     req.GetOnlyAlerting(),
		PreviousPeriods:  req.GetPreviousPeriods(),
		At:               timeOrZero(req.GetAt()),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "ListBudgets", err)
	}
	resp := &keytrailv1.ListBudgetsResponse{Budgets: make([]*keytrailv1.BudgetUtilization, len(list))}
	for i, u := range list {
		out := &keytrailv1.BudgetUtilization{
			Project: u.Project,
			KeyId:   u.KeyID,
			Budget:  &keytrailv1.Budget{AmountMicros: u.AmountMicros, Period: budgetPeriods[u.Period]},
			Current: periodSpend(u.Current),
			Status:  budgetStatuses[u.Status],
		}
		for _, p := range u.Previous {
			out.Previous = append(out.Previous, periodSpend(p))
		}
		resp.Budgets[i] = out
	}
	return resp, nil
}

func periodSpend(p chreader.PeriodSpend) *keytrailv1.BudgetPeriodSpend {
	return &keytrailv1.BudgetPeriodSpend{
		PeriodStart: timestamppb.New(p.Start),
		PeriodEnd:   timestamppb.New(p.End),
		CostMicros:  p.CostMicros,
		PercentUsed: p.PercentUsed,
	}
}
