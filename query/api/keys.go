package api

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/chreader"
)

// GetKey is a key's state derived from its lifecycle events, now or at any past instant,
// with its last use. A key is (project, key_id): it is looked up in the projects the caller
// may read (or the one it names), in SQL; a key id found in several of them without a
// project is InvalidArgument naming those projects, and one found only in projects the
// caller may not read is not found.
func (s *queryService) GetKey(ctx context.Context, req *keytrailv1.GetKeyRequest) (*keytrailv1.GetKeyResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	k, err := s.reader.Key(ctx, chreader.KeyRequest{KeyID: req.GetKeyId(), Project: project, Projects: projects, At: timeOrZero(req.GetAt())})
	if err != nil {
		return nil, s.keyStatus(ctx, "GetKey", err)
	}
	return &keytrailv1.GetKeyResponse{Key: keyState(k)}, nil
}

// ListKeys is the keys with their state at an instant, filtered by project, status, expiry
// and use, ordered by key id.
func (s *queryService) ListKeys(ctx context.Context, req *keytrailv1.ListKeysRequest) (*keytrailv1.ListKeysResponse, error) {
	project, projects, err := readableProjects(ctx, req.GetProject())
	if err != nil {
		return nil, err
	}
	statusFilter, err := keyStatusFilter(req.GetStatus())
	if err != nil {
		return nil, s.keyStatus(ctx, "ListKeys", err)
	}
	page, err := s.reader.Keys(ctx, chreader.KeysRequest{
		Project:       project,
		Projects:      projects,
		Status:        statusFilter,
		ExpiresBefore: timeOrZero(req.GetExpiresBefore()),
		UnusedSince:   timeOrZero(req.GetUnusedSince()),
		UsedSince:     timeOrZero(req.GetUsedSince()),
		At:            timeOrZero(req.GetAt()),
		PageSize:      req.GetPageSize(),
		PageToken:     req.GetPageToken(),
	})
	if err != nil {
		return nil, s.keyStatus(ctx, "ListKeys", err)
	}
	resp := &keytrailv1.ListKeysResponse{Keys: make([]*keytrailv1.KeyState, len(page.Keys)), NextPageToken: page.NextPageToken}
	for i, k := range page.Keys {
		resp.Keys[i] = keyState(k)
	}
	return resp, nil
}

// keyStatus adds NotFound (the key id is the caller's own input, safe to echo) to toStatus.
func (s *queryService) keyStatus(ctx context.Context, method string, err error) error {
	var notFound *chreader.KeyNotFoundError
	if errors.As(err, &notFound) {
		return status.Error(codes.NotFound, notFound.Error())
	}
	return s.toStatus(ctx, method, err)
}

func keyState(k chreader.Key) *keytrailv1.KeyState {
	out := &keytrailv1.KeyState{
		KeyId:           k.KeyID,
		Project:         k.Project,
		Status:          keyStatuses[k.Status],
		CreatedAt:       keyTimestamp(k.CreatedAt),
		CreatedBy:       k.CreatedBy,
		ExpiresAt:       keyTimestamp(k.ExpiresAt),
		Scopes:          k.Scopes,
		ReplacesKeyId:   k.ReplacesKeyID,
		ReplacedByKeyId: k.ReplacedByKeyID,
		StatusSince:     keyTimestamp(k.StatusSince),
		LastEventAt:     keyTimestamp(k.LastEventAt),
		LastUsedAt:      keyTimestamp(k.LastUsedAt),
		AsOf:            keyTimestamp(k.AsOf),
	}
	if k.Budget != nil {
		out.Budget = &keytrailv1.Budget{AmountMicros: k.Budget.AmountMicros, Period: k.Budget.Period}
	}
	for _, u := range k.Services {
		out.LastUsedByService = append(out.LastUsedByService, &keytrailv1.ServiceLastUsed{Service: u.Service, LastUsedAt: timestamppb.New(u.LastUsedAt)})
	}
	return out
}

// keyTimestamp leaves unset times out of the response instead of reporting 1970.
func keyTimestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
