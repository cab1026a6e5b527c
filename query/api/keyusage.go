package api

import (
	"context"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/chreader"
)

// GetKeyUsage is a key's requests, errors and cost per service over time: the series the
// console charts for a key and around a flagged anomaly bucket.
// A key is (project, key_id): it is read from the projects the caller may read (or the one
// it names), in SQL; a key id known in several of them without a project is InvalidArgument
// naming those projects.
func (s *queryService) GetKeyUsage(ctx context.Context, req *keytrailv1.GetKeyUsageRequest) (*keytrailv1.GetKeyUsageResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	rep, err := s.reader.KeyUsage(ctx, chreader.KeyUsageRequest{
		KeyID: req.GetKeyId(), Project: project, Projects: projects, Service: req.GetService(),
		Start: timeOrZero(req.GetStartTime()), End: timeOrZero(req.GetEndTime()),
		Bucket: req.GetBucket().AsDuration(),
	})
	if err != nil {
		return nil, s.toStatus(ctx, "GetKeyUsage", err)
	}
	resp := &keytrailv1.GetKeyUsageResponse{KeyId: rep.KeyID, Bucket: durationpb.New(rep.Bucket)}
	if len(rep.Projects) > 0 {
		resp.Project = rep.Projects[0]
	}
	for _, t := range rep.BucketStarts() {
		resp.BucketStarts = append(resp.BucketStarts, timestamppb.New(t))
	}
	for _, series := range rep.Series {
		out := &keytrailv1.UsageSeries{Service: series.Service, CostMicros: series.CostMicros}
		for i := range series.Requests {
			out.Requests = append(out.Requests, int64(series.Requests[i]))
			out.Errors = append(out.Errors, int64(series.Errors[i]))
		}
		resp.Series = append(resp.Series, out)
	}
	return resp, nil
}
