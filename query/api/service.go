package api

import (
	"context"
	"errors"
	"log/slog"

	"github.com/ClickHouse/clickhouse-go/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/chreader"
)

// queryService implements keytrailv1.QueryServiceServer over a Reader: it maps requests and
// proto enums to the reader's types and the answers back to protos. Requests arrive already
// checked against their proto constraints by the protovalidate interceptor.
type queryService struct {
	keytrailv1.UnimplementedQueryServiceServer
	reader Reader
	log    *slog.Logger
}

// ListKeyServices answers GET /v1/keys/{key_id}/services. A key is (project, key_id): the
// rows are read from the projects the caller may read (or the one it names), in SQL, a row
// per project and service, each naming its project; a key id in a project the caller may
// not read is not seen at all.
func (s *queryService) ListKeyServices(ctx context.Context, req *keytrailv1.ListKeyServicesRequest) (*keytrailv1.ListKeyServicesResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	page, err := s.reader.KeyServices(ctx, chreader.UsageRequest{
		Value: req.GetKeyId(), Project: project, Projects: projects,
		Start: timeOrZero(req.GetStartTime()), End: timeOrZero(req.GetEndTime()),
		PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "ListKeyServices", err)
	}
	return &keytrailv1.ListKeyServicesResponse{Services: usageRows(page.Rows), NextPageToken: page.NextPageToken}, nil
}

// ListServiceKeys answers GET /v1/services/{service}/keys: a service name can appear in
// several projects; the rows are read from the projects the caller may read, a row per
// project and key id.
func (s *queryService) ListServiceKeys(ctx context.Context, req *keytrailv1.ListServiceKeysRequest) (*keytrailv1.ListServiceKeysResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	page, err := s.reader.ServiceKeys(ctx, chreader.UsageRequest{
		Value: req.GetService(), Project: project, Projects: projects,
		Start: timeOrZero(req.GetStartTime()), End: timeOrZero(req.GetEndTime()),
		PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "ListServiceKeys", err)
	}
	return &keytrailv1.ListServiceKeysResponse{Keys: usageRows(page.Rows), NextPageToken: page.NextPageToken}, nil
}

func (s *queryService) ListAuditEvents(ctx context.Context, req *keytrailv1.ListAuditEventsRequest) (*keytrailv1.ListAuditEventsResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	page, err := s.reader.AuditEvents(ctx, chreader.AuditRequest{
		Filter: chreader.AuditFilter{
			Project: project, Projects: projects, KeyID: req.GetKeyId(), Actor: req.GetActor(), Action: event.ActionName(req.GetAction()),
		},
		Start: timeOrZero(req.GetStartTime()), End: timeOrZero(req.GetEndTime()),
		PageSize: req.GetPageSize(), PageToken: req.GetPageToken(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "ListAuditEvents", err)
	}
	resp := &keytrailv1.ListAuditEventsResponse{Events: make([]*keytrailv1.LifecycleEvent, len(page.Events)), NextPageToken: page.NextPageToken}
	for i, e := range page.Events {
		resp.Events[i] = lifecycleEvent(e)
	}
	return resp, nil
}

func lifecycleEvent(e chreader.AuditEvent) *keytrailv1.LifecycleEvent {
	out := &keytrailv1.LifecycleEvent{
		EventId:   e.EventID,
		Time:      timestamppb.New(e.Time),
		Project:   e.Project,
		KeyId:     e.KeyID,
		Action:    e.Action,
		NewKeyId:  e.NewKeyID,
		Actor:     e.Actor,
		ActorType: e.ActorType,
		Reason:    e.Reason,
		ExpiresAt: optionalTime(e.ExpiresAt),
		Scopes:    e.Scopes,
	}
	if e.Budget != nil {
		out.Budget = &keytrailv1.Budget{AmountMicros: e.Budget.AmountMicros, Period: e.Budget.Period}
	}
	if len(e.Attributes) > 0 {
		out.Attributes = e.Attributes
	}
	for _, c := range e.Changes {
		out.Changes = append(out.Changes, &keytrailv1.FieldChange{Field: c.Field, Before: c.Before, After: c.After})
	}
	return out
}

// toStatus maps an error to what the caller may see. Input problems name the field; anything
// else is logged in full for the operator and reported to the caller without internals.
func (s *queryService) toStatus(ctx context.Context, method string, err error) error {
	var invalid *chreader.InvalidError
	switch {
	case errors.As(err, &invalid):
		return status.Error(codes.InvalidArgument, invalid.Error())
	case errors.Is(err, clickhouse.ErrAcquireConnTimeout):
		// Every ClickHouse connection busy is overload, not a fault: admission keeps this
		// from happening while it is on, but with -query-max-inflight 0 it is the answer.
		s.log.WarnContext(ctx, "no ClickHouse connection free", "method", method)
		return status.Error(codes.Unavailable, "the server is busy; retry shortly")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the query took too long")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the request was cancelled")
	}
	s.log.ErrorContext(ctx, "query failed", "method", method, "error", err)
	return status.Error(codes.Internal, "internal error while reading storage; the operator's log has the details")
}

func usageRows(rows []chreader.KeyServiceUsage) []*keytrailv1.KeyServiceUsage {
	out := make([]*keytrailv1.KeyServiceUsage, len(rows))
	for i, r := range rows {
		out[i] = &keytrailv1.KeyServiceUsage{
			Project:      r.Project,
			KeyId:        r.KeyID,
			Service:      r.Service,
			FirstSeen:    timestamppb.New(r.FirstSeen),
			LastSeen:     timestamppb.New(r.LastSeen),
			RequestCount: int64(r.Requests),
			ErrorCount:   int64(r.Errors),
		}
		if !r.LastSuccess.IsZero() {
			out[i].LastSuccess = timestamppb.New(r.LastSuccess)
		}
	}
	return out
}

func (s *queryService) VerifyAuditTrail(ctx context.Context, req *keytrailv1.VerifyAuditTrailRequest) (*keytrailv1.VerifyAuditTrailResponse, error) {
	project, _, err := scopedProject(ctx, req.GetProject(), true)
	if err != nil {
		return nil, err
	}
	results, err := s.reader.VerifyAuditTrail(ctx, project, timeOrZero(req.GetStartTime()), timeOrZero(req.GetEndTime()))
	if err != nil {
		return nil, s.toStatus(ctx, "VerifyAuditTrail", err)
	}
	resp := &keytrailv1.VerifyAuditTrailResponse{Intact: true}
	for _, v := range results {
		pv := &keytrailv1.ChainVerification{
			Project: v.Project, FirstChainSeq: v.FirstSeq, LastChainSeq: v.LastSeq,
			RowsChecked: int64(v.Rows), Intact: v.Break == nil, HeadHash: v.HeadHash,
		}
		if v.Break != nil {
			pv.FirstBreak = &keytrailv1.ChainBreak{ChainSeq: v.Break.Seq, EventId: v.Break.EventID, Problem: v.Break.Problem}
			resp.Intact = false
		}
		resp.Projects = append(resp.Projects, pv)
	}
	return resp, nil
}
