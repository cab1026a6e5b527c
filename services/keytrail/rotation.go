package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
	"github.com/keytrail/keytrail/query/rotation"
)

// Exit codes of `keytrail rotation check`, for rotation tooling.
const (
	exitSafe   = 0 // SAFE_TO_REVOKE
	exitError  = 1 // the question could not be answered
	exitUsage  = 2 // bad flags
	exitNotYet = 3 // NOT_YET (or --wait timed out before it was safe)
)

// exitCodeError carries a process exit code up to main.
type exitCodeError struct {
	code int
	err  error
}

func (e *exitCodeError) Error() string { return e.err.Error() }
func (e *exitCodeError) Unwrap() error { return e.err }

func runRotation(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		return &exitCodeError{exitUsage, errors.New("usage: keytrail rotation check --old KEY [--project P] [--new KEY] [--quiet 15m] [--lookback 168h] [--accept-pending SERVICE]... [--json] [--wait [--timeout 1h] [--interval 15s]]")}
	}
	fs := flag.NewFlagSet("keytrail rotation check", flag.ContinueOnError)
	fs.SetOutput(stdout)
	// Only the connection settings have environment variables: the question itself
	// (--old, --json, --wait...) is always asked on the command line.
	addr := fs.String("addr", envDefault("KEYTRAIL_API_ADDR", "127.0.0.1:9090"), "keytrail gRPC address (env KEYTRAIL_API_ADDR)")
	token := fs.String("token", envDefault("KEYTRAIL_TOKEN", ""), "API bearer token (env KEYTRAIL_TOKEN)")
	caFile := fs.String("ca-file", envDefault("KEYTRAIL_CA_FILE", ""), "verify the server's TLS certificate with these CAs; empty means plaintext (env KEYTRAIL_CA_FILE)")
	oldKey := fs.String("old", "", "the key being replaced (required)")
	project := fs.String("project", "", "the old key's project; required when the key id exists in several projects you may read")
	newKey := fs.String("new", "", "the replacement; default: from the old key's rotation event")
	quiet := fs.Duration("quiet", 15*time.Minute, "how long the old key must have served no successful request")
	lookback := fs.Duration("lookback", 7*24*time.Hour, "how far before the rotation the old key's callers and their rhythm are looked for")
	var accepted []string
	fs.Func("accept-pending", "accept that this service loses the old key although it has not moved (repeatable; recorded in the query audit log)", func(v string) error {
		if v == "" {
			return errors.New("needs a service name")
		}
		accepted = append(accepted, v)
		return nil
	})
	asJSON := fs.Bool("json", false, "print the full answer as JSON")
	wait := fs.Bool("wait", false, "poll until safe to revoke or --timeout")
	timeout := fs.Duration("timeout", time.Hour, "with --wait: give up after this long (exit 3)")
	interval := fs.Duration("interval", 15*time.Second, "with --wait: time between checks")
	if err := fs.Parse(args[1:]); err != nil {
		return &exitCodeError{exitUsage, err}
	}
	var bad []error
	if *oldKey == "" {
		bad = append(bad, errors.New("--old is required"))
	}
	if *lookback <= 0 {
		bad = append(bad, fmt.Errorf("--lookback %s must be positive", *lookback))
	}
	if *quiet <= 0 {
		bad = append(bad, fmt.Errorf("--quiet %s must be positive", *quiet))
	}
	if *interval <= 0 || *timeout <= 0 {
		bad = append(bad, errors.New("--interval and --timeout must be positive"))
	}
	if fs.NArg() > 0 {
		bad = append(bad, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	if err := errors.Join(bad...); err != nil {
		return &exitCodeError{exitUsage, err}
	}
	creds := insecure.NewCredentials()
	if *caFile != "" {
		pool, err := loadCertPool(*caFile)
		if err != nil {
			return &exitCodeError{exitUsage, err}
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return &exitCodeError{exitError, fmt.Errorf("connect %s: %w", *addr, err)}
	}
	defer conn.Close()
	client := keytrailv1.NewQueryServiceClient(conn)
	req := &keytrailv1.GetRotationRequest{
		OldKeyId: *oldKey, Project: *project, NewKeyId: *newKey, AcceptPending: accepted,
		QuietPeriod: durationpb.New(*quiet), Lookback: durationpb.New(*lookback),
	}

	deadline := time.Now().Add(*timeout)
	for {
		callCtx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+*token), 30*time.Second)
		resp, err := client.GetRotation(callCtx, req)
		cancel()
		if err != nil {
			return &exitCodeError{exitError, fmt.Errorf("get rotation: %w", err)}
		}
		safe := resp.GetVerdict() == keytrailv1.RotationVerdict_ROTATION_VERDICT_SAFE_TO_REVOKE
		switch {
		case *asJSON:
			b, _ := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(resp)
			fmt.Fprintln(stdout, string(b))
		case *wait && !safe:
			printProgress(stdout, resp)
		default:
			printRotation(stdout, resp)
		}
		if safe {
			return nil
		}
		if !*wait || time.Now().Add(*interval).After(deadline) {
			if *wait && !*asJSON {
				printRotation(stdout, resp)
			}
			return &exitCodeError{exitNotYet, fmt.Errorf("%s is not safe to revoke yet", *oldKey)}
		}
		select {
		case <-ctx.Done():
			return &exitCodeError{exitNotYet, ctx.Err()}
		case <-time.After(*interval):
		}
	}
}

// envDefault is the flag default an environment variable gives; empty counts as unset, as
// for the server's flags (see flagenv).
func envDefault(variable, def string) string {
	if v := os.Getenv(variable); v != "" {
		return v
	}
	return def
}

func printProgress(w io.Writer, r *keytrailv1.GetRotationResponse) {
	fmt.Fprintf(w, "%s  %s -> %s: %.1f%% on the new key, %s; chase: %s\n",
		time.Now().UTC().Format(time.RFC3339), r.GetOldKeyId(), r.GetNewKeyId(), 100*r.GetNewKeyShare(),
		verdictName(r.GetVerdict()), orNone(r.GetServicesToChase()))
}

func printRotation(w io.Writer, r *keytrailv1.GetRotationResponse) {
	fmt.Fprintf(w, "Rotation %s -> %s", r.GetOldKeyId(), r.GetNewKeyId())
	if r.GetProject() != "" {
		fmt.Fprintf(w, " (project %s)", r.GetProject())
	}
	fmt.Fprintln(w)
	if r.GetRotatedAt() != nil {
		fmt.Fprintf(w, "Rotated:     %s by %s\n", ts(r.GetRotatedAt().AsTime()), r.GetRotatedBy())
	}
	fmt.Fprintf(w, "Old key:     %s", r.GetOldKeyStatus())
	if r.GetOldKeyRevokedAt() != nil {
		fmt.Fprintf(w, " since %s", ts(r.GetOldKeyRevokedAt().AsTime()))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Window:      %s .. %s\n", ts(r.GetWindowStart().AsTime()), ts(r.GetWindowEnd().AsTime()))
	fmt.Fprintf(w, "New key:     %.1f%% of requests (%d new, %d old)\n\n", 100*r.GetNewKeyShare(), r.GetNewKeyRequests(), r.GetOldKeyRequests())

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tOLD KEY\tNEW KEY\tOLD LAST SEEN\tOLD LAST SUCCESS\tSTATUS")
	for _, s := range r.GetServices() {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\n", s.GetService(), s.GetOldKeyRequests(), s.GetNewKeyRequests(),
			optTS(s.GetOldKeyLastSeen() != nil, s.GetOldKeyLastSeen().AsTime()),
			optTS(s.GetOldKeyLastSuccess() != nil, s.GetOldKeyLastSuccess().AsTime()),
			migrationName(s.GetMigration()))
	}
	tw.Flush()
	if len(r.GetRequestsAfterRevocation()) > 0 {
		fmt.Fprintf(w, "\nRequests after the old key was %s:\n", r.GetOldKeyStatus())
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tSTATUS CODE\tREQUESTS\tFIRST\tLAST")
		for _, a := range r.GetRequestsAfterRevocation() {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", a.GetService(), a.GetStatusCode(), a.GetRequests(), ts(a.GetFirstSeen().AsTime()), ts(a.GetLastSeen().AsTime()))
		}
		tw.Flush()
	}
	if len(r.GetOldKeyCallers()) > 0 {
		fmt.Fprintf(w, "\nCallers of the old key since %s:\n", ts(r.GetLookbackStart().AsTime()))
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERVICE\tSTATE\tRUNS\tRHYTHM\tLAST SUCCESS\tEXPECTED BY")
		for _, c := range r.GetOldKeyCallers() {
			rhythm := "-"
			if c.GetRhythm() != nil {
				rhythm = rotation.Approx(c.GetRhythm().AsDuration())
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", c.GetService(), callerStateName(c.GetState()), c.GetRuns(), rhythm,
				optTS(c.GetLastSuccess() != nil, c.GetLastSuccess().AsTime()),
				optTS(c.GetExpectedBy() != nil, c.GetExpectedBy().AsTime()))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nVerdict: %s\n", verdictName(r.GetVerdict()))
	for _, reason := range r.GetReasons() {
		fmt.Fprintf(w, "  - %s\n", reason)
	}
	if len(r.GetAcceptedPending()) > 0 {
		fmt.Fprintf(w, "Accepted: %s\n", strings.Join(r.GetAcceptedPending(), ", "))
	}
	if len(r.GetServicesToChase()) > 0 {
		fmt.Fprintf(w, "Chase: %s\n", strings.Join(r.GetServicesToChase(), ", "))
	}
}

func verdictName(v keytrailv1.RotationVerdict) string {
	return strings.TrimPrefix(v.String(), "ROTATION_VERDICT_")
}

func callerStateName(c keytrailv1.CallerState) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "CALLER_STATE_"))
}

func migrationName(m keytrailv1.ServiceMigration) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(m.String(), "SERVICE_MIGRATION_"), "_", " "))
}

func ts(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000Z") }

func optTS(ok bool, t time.Time) string {
	if !ok {
		return "-"
	}
	return ts(t)
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
