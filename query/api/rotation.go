package api

import (
	"context"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/chreader"
	"github.com/keytrail/keytrail/query/rotation"
)

func (s *queryService) GetRotation(ctx context.Context, req *keytrailv1.GetRotationRequest) (*keytrailv1.GetRotationResponse, error) {
	// A key is (project, key_id): the reader looks for the old key only in the projects the
	// caller may read, so a key id known elsewhere too is neither mixed in nor named. A
	// project the caller names itself is refused by name.
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	rreq := chreader.RotationRequest{
		OldKey: req.GetOldKeyId(), NewKey: req.GetNewKeyId(), Project: project, Projects: projects,
		Quiet: req.GetQuietPeriod().AsDuration(), Lookback: req.GetLookback().AsDuration(), Bucket: req.GetBucket().AsDuration(),
		Start: timeOrZero(req.GetStartTime()), End: timeOrZero(req.GetEndTime()),
		Accepted: req.GetAcceptPending(),
	}
	rep, err := s.reader.Rotation(ctx, rreq)
	if err != nil {
		return nil, s.keyStatus(ctx, "GetRotation", err)
	}
	resp := &keytrailv1.GetRotationResponse{
		Project:             rep.Project,
		OldKeyId:            rep.OldKey,
		NewKeyId:            rep.NewKey,
		RotatedAt:           optionalTime(rep.RotatedAt),
		RotatedBy:           rep.RotatedBy,
		OldKeyRevokedAt:     optionalTime(rep.OldKeyRevokedAt),
		OldKeyStatus:        rep.OldKeyStatus,
		WindowStart:         timestamppb.New(rep.Window.Start),
		WindowEnd:           timestamppb.New(rep.Window.End),
		OldKeyRequests:      int64(rep.OldRequests),
		NewKeyRequests:      int64(rep.NewRequests),
		NewKeyShare:         rep.NewShare,
		ServicesNotOnNewKey: rep.ServicesNotOnNewKey,
		OldKeyLastSuccess:   optionalTime(rep.OldLastSuccess),
		QuietPeriod:         durationpb.New(rep.Quiet),
		Reasons:             rep.Reasons,
		ServicesToChase:     rep.ServicesToChase,
		LookbackStart:       timestamppb.New(rep.HistoryStart),
		Lookback:            durationpb.New(rep.Lookback),
		AcceptedPending:     rep.Accepted,
		Verdict:             rotationVerdicts[rep.Verdict],
	}
	for _, b := range rep.Series {
		resp.Series = append(resp.Series, &keytrailv1.ShareBucket{
			Start: timestamppb.New(b.Start), OldKeyRequests: int64(b.OldRequests), NewKeyRequests: int64(b.NewRequests),
			NewKeyShare: rotation.Share(b.OldRequests, b.NewRequests),
		})
	}
	for _, sv := range rep.Services {
		resp.Services = append(resp.Services, &keytrailv1.RotationService{
			Service:           sv.Service,
			OldKeyRequests:    int64(sv.OldRequests),
			NewKeyRequests:    int64(sv.NewRequests),
			OldKeyLastSeen:    optionalTime(sv.OldLastSeen),
			OldKeyLastSuccess: optionalTime(sv.OldLastSuccess),
			NewKeyFirstSeen:   optionalTime(sv.NewFirstSeen),
			NewKeyLastSeen:    optionalTime(sv.NewLastSeen),
			Migration:         serviceMigrations[sv.Migration],
		})
	}
	for _, a := range rep.AfterRevocation {
		resp.RequestsAfterRevocation = append(resp.RequestsAfterRevocation, &keytrailv1.RequestsAfterRevocation{
			Service: a.Service, StatusCode: uint32(a.StatusCode), Requests: int64(a.Requests),
			FirstSeen: timestamppb.New(a.FirstSeen), LastSeen: timestamppb.New(a.LastSeen),
		})
	}
	for _, c := range rep.Callers {
		pc := &keytrailv1.OldKeyCaller{
			Service: c.Service, State: callerStates[c.State], Requests: int64(c.Requests),
			LastSeen: optionalTime(c.LastSeen), LastSuccess: optionalTime(c.LastSuccess), Runs: int64(c.Runs),
			ExpectedBy: optionalTime(c.ExpectedBy), NewKeyLastSuccess: optionalTime(c.NewLastSuccess), Evidence: c.Evidence,
		}
		if c.Rhythm > 0 {
			pc.Rhythm = durationpb.New(c.Rhythm)
		}
		resp.OldKeyCallers = append(resp.OldKeyCallers, pc)
	}
	return resp, nil
}
