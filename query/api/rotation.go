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
	rep, err := s.reader.Rotation(ctx, chreader.RotationRequest{
		OldKey: req.GetOldKeyId(), NewKey: req.GetNewKeyId(),
		Quiet: req.GetQuietPeriod().AsDuration(), Bucket: req.GetBucket().AsDuration(),
		Start: timeOrZero(req.GetStartTime()), End: timeOrZero(req.GetEndTime()),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "GetRotation", err)
	}
	// The report shows both keys' traffic: the caller must be allowed to read both.
	for _, project := range []string{rep.Project, rep.NewKeyProject} {
		if err := mayRead(ctx, project); err != nil {
			return nil, err
		}
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
		Verdict:             keytrailv1.RotationVerdict_ROTATION_VERDICT_NOT_YET,
	}
	if rep.Verdict == rotation.SafeToRevoke {
		resp.Verdict = keytrailv1.RotationVerdict_ROTATION_VERDICT_SAFE_TO_REVOKE
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
			Migration:         migrationProto(sv.Migration),
		})
	}
	for _, a := range rep.AfterRevocation {
		resp.RequestsAfterRevocation = append(resp.RequestsAfterRevocation, &keytrailv1.RequestsAfterRevocation{
			Service: a.Service, StatusCode: uint32(a.StatusCode), Requests: int64(a.Requests),
			FirstSeen: timestamppb.New(a.FirstSeen), LastSeen: timestamppb.New(a.LastSeen),
		})
	}
	return resp, nil
}

func migrationProto(m rotation.Migration) keytrailv1.ServiceMigration {
	switch m {
	case rotation.Moved:
		return keytrailv1.ServiceMigration_SERVICE_MIGRATION_MOVED
	case rotation.Mixed:
		return keytrailv1.ServiceMigration_SERVICE_MIGRATION_MIXED
	case rotation.NotStarted:
		return keytrailv1.ServiceMigration_SERVICE_MIGRATION_NOT_STARTED
	}
	return keytrailv1.ServiceMigration_SERVICE_MIGRATION_UNSPECIFIED
}
