package api

import (
	"context"
	"time"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/chreader"
)

// ListAnomalies answers GET /v1/anomalies: buckets whose requests, error rate or cost stand
// out from the key's own history (method in package anomaly).
func (s *queryService) ListAnomalies(ctx context.Context, req *keytrailv1.ListAnomaliesRequest) (*keytrailv1.ListAnomaliesResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	scope, err := anomalyScope(req.GetScope())
	if err != nil {
		return nil, s.toStatus(ctx, "ListAnomalies", err)
	}
	var baseline time.Duration
	if b := req.GetBaseline(); b != nil {
		baseline = b.AsDuration()
	}
	res, err := s.reader.Anomalies(ctx, chreader.AnomalyRequest{
		Start:       timeOrZero(req.GetStartTime()),
		End:         timeOrZero(req.GetEndTime()),
		Metrics:     req.GetMetrics(),
		Scope:       scope,
		Sensitivity: req.GetSensitivity(),
		Baseline:    baseline,
		MinRequests: req.GetMinRequests(),
		Project:     project,
		Projects:    projects,
		KeyID:       req.GetKeyId(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "ListAnomalies", err)
	}
	resp := &keytrailv1.ListAnomaliesResponse{Anomalies: make([]*keytrailv1.Anomaly, len(res.Anomalies))}
	for i, a := range res.Anomalies {
		resp.Anomalies[i] = a.Proto()
	}
	return resp, nil
}

// ListNewCallers answers GET /v1/new-callers: services and client IPs whose first use of a
// key falls in the range, newest first.
func (s *queryService) ListNewCallers(ctx context.Context, req *keytrailv1.ListNewCallersRequest) (*keytrailv1.ListNewCallersResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	res, err := s.reader.NewCallers(ctx, chreader.NewCallersRequest{
		Start:    timeOrZero(req.GetStartTime()),
		End:      timeOrZero(req.GetEndTime()),
		Project:  project,
		Projects: projects,
		KeyID:    req.GetKeyId(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "ListNewCallers", err)
	}
	resp := &keytrailv1.ListNewCallersResponse{Callers: make([]*keytrailv1.NewCaller, len(res.Callers))}
	for i, c := range res.Callers {
		resp.Callers[i] = c.Proto()
	}
	return resp, nil
}

// readableProjects resolves the project filter of a scan across projects: the named project
// (if the caller may read it), or everything the caller may read. A caller limited to several
// projects gets them as a list the SQL filters on, so the row limit applies after the
// filter and no readable row is crowded out by rows the caller may not see.
func readableProjects(ctx context.Context, requested string) (string, []string, error) {
	project, allowed, err := scopedProject(ctx, requested, false)
	if err != nil || allowed == nil {
		return project, nil, err
	}
	// Never nil: an empty list means "no project", not "no filter".
	return "", append([]string{}, caller(ctx).Projects...), nil
}
