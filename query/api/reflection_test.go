package api_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/keytrail/keytrail/internal/apitest"
	"github.com/keytrail/keytrail/internal/testenv"
)

// reflectionClient asks the server reflection service what grpcurl asks for `list` and
// `describe`, on one stream, as a caller holding token ("" for none).
type reflectionClient struct {
	stream reflectionpb.ServerReflection_ServerReflectionInfoClient
}

func newReflectionClient(t *testing.T, addr, token string) *reflectionClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(apitest.WithToken(ctx, token))
	if err != nil {
		t.Fatal(err)
	}
	return &reflectionClient{stream: stream}
}

func (c *reflectionClient) ask(req *reflectionpb.ServerReflectionRequest) (*reflectionpb.ServerReflectionResponse, error) {
	// A stream the server already ended makes Send return io.EOF; Recv has its status.
	if err := c.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp, err := c.stream.Recv()
	if err != nil {
		return nil, err
	}
	if e := resp.GetErrorResponse(); e != nil {
		return nil, status.Error(codes.Code(e.GetErrorCode()), e.GetErrorMessage())
	}
	return resp, nil
}

// close ends the stream and returns its final status.
func (c *reflectionClient) close() error {
	if err := c.stream.CloseSend(); err != nil {
		return err
	}
	for {
		if _, err := c.stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// TestReflectionListsAndDescribesTheAPIForACaller: server reflection serves what `grpcurl
// -H 'authorization: Bearer …' host:9090 list` and `describe` need, without proto files: the
// services, and the files that declare a method with everything they import. It needs a
// credential like every call but health, and the stream is in the query audit log.
func TestReflectionListsAndDescribesTheAPIForACaller(t *testing.T) {
	db := testenv.ClickHouse(t)
	srv := apitest.Start(t, db, apitest.Options{})

	// No credential: refused, and recorded as a refused call.
	anon := newReflectionClient(t, srv.GRPCAddr, "")
	if _, err := anon.ask(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("list without a credential: %v, want Unauthenticated", err)
	}

	c := newReflectionClient(t, srv.GRPCAddr, srv.AdminToken)
	resp, err := c.ask(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	slices.Sort(services)
	want := []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "keytrail.v1.QueryService"}
	if !slices.Equal(services, want) {
		t.Errorf("services %v, want %v", services, want)
	}

	// describe keytrail.v1.QueryService.GetKey: the file declaring it and its imports are
	// enough to build the method's descriptor, as grpcurl does.
	resp, err = c.ask(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "keytrail.v1.QueryService.GetKey"},
	})
	if err != nil {
		t.Fatalf("describe: %v", err)
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fd); err != nil {
			t.Fatal(err)
		}
		set.File = append(set.File, fd)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatalf("the files served do not resolve on their own: %v", err)
	}
	d, err := files.FindDescriptorByName("keytrail.v1.QueryService.GetKey")
	if err != nil {
		t.Fatal(err)
	}
	m := d.(protoreflect.MethodDescriptor)
	if m.Input().FullName() != "keytrail.v1.GetKeyRequest" || m.Output().FullName() != "keytrail.v1.GetKeyResponse" || m.IsStreamingClient() || m.IsStreamingServer() {
		t.Errorf("GetKey described as %s(%s) returns (%s)", m.FullName(), m.Input().FullName(), m.Output().FullName())
	}
	if f := m.Input().Fields().ByName("key_id"); f == nil || f.Kind() != protoreflect.StringKind {
		t.Errorf("GetKeyRequest fields %v: want a string key_id", m.Input().Fields())
	}
	if err := c.close(); err != nil {
		t.Fatalf("stream ended with %v", err)
	}

	// One record for the refused stream, one for the admin's, with what was asked.
	const method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	var got []string
	for _, r := range srv.Records.All() {
		if r.Method == method {
			got = append(got, r.Principal+" "+r.Code+" "+r.Request)
		}
	}
	wantRecords := []string{
		" Unauthenticated ",
		`test-admin OK {"listServices":""}` + "\n" + `{"fileContainingSymbol":"keytrail.v1.QueryService.GetKey"}`,
	}
	if !slices.Equal(got, wantRecords) {
		t.Errorf("records of reflection:\n%s\nwant\n%s", strings.Join(got, "\n--\n"), strings.Join(wantRecords, "\n--\n"))
	}
}

// The health service stays open to probes on its streaming method too.
func TestHealthWatchNeedsNoCredential(t *testing.T) {
	db := testenv.ClickHouse(t)
	srv := apitest.Start(t, db, apitest.Options{})
	conn, err := grpc.NewClient(srv.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := healthpb.NewHealthClient(conn).Watch(apitest.WithToken(ctx, ""), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Serve marks the server SERVING just after it starts; Watch sends every change.
	for {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
	}
	for _, r := range srv.Records.All() {
		if strings.HasPrefix(r.Method, "/grpc.health.v1.Health/") {
			t.Errorf("health call recorded: %+v", r)
		}
	}
}
