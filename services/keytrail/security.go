package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/query/auth"
)

// authenticator loads the tokens file or, without one, makes dev mode's ephemeral admin
// token, announced loudly because it is not for production.
func (m *Main) authenticator() (*auth.Authenticator, error) {
	if m.Config.AuthTokensFile != "" {
		f, err := auth.LoadFile(m.Config.AuthTokensFile)
		if err != nil {
			return nil, err
		}
		m.log.Info("loaded API credentials", "entries", len(f.Tokens))
		return auth.NewAuthenticator(f, nil)
	}
	m.AdminToken = auth.NewToken()
	if m.Config.DevTokenFile != "" {
		// Written to a private file rather than printed, so it does not end up in log files.
		if err := os.WriteFile(m.Config.DevTokenFile, []byte(m.AdminToken+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("dev-token-file: %w", err)
		}
		m.log.Warn("DEV MODE (insecure): no -auth-tokens-file; an ephemeral admin token is in the dev token file", "file", m.Config.DevTokenFile)
		return auth.NewAuthenticator(auth.File{Tokens: []auth.Entry{{Name: "dev-admin", SHA256: auth.HashToken(m.AdminToken), Role: auth.RoleAdmin}}}, nil)
	}
	// Printed once, to the console of the person who started dev mode.
	fmt.Fprintf(m.Stdout, "DEV MODE (insecure): no -auth-tokens-file, so this process made an admin token valid until it stops:\n  %s\n", m.AdminToken)
	return auth.NewAuthenticator(auth.File{Tokens: []auth.Entry{{Name: "dev-admin", SHA256: auth.HashToken(m.AdminToken), Role: auth.RoleAdmin}}}, nil)
}

// serverTLS builds the API's TLS configuration, nil when TLS is off.
func serverTLS(cfg Config) (*tls.Config, error) {
	if cfg.TLSCertFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.TLSClientCAFile != "" {
		pool, err := loadCertPool(cfg.TLSClientCAFile)
		if err != nil {
			return nil, err
		}
		// Client certificates are a credential, not a requirement: bearer tokens keep working.
		c.ClientCAs, c.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return c, nil
}

func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls: no certificate in %s", path)
	}
	return pool, nil
}

// runToken is `keytrail token new`: it prints a new token once and the tokens-file entry
// holding only its hash.
func runToken(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "new" {
		return &exitCodeError{exitUsage, errors.New("usage: keytrail token new --name NAME --role admin|auditor|project_reader [--projects a,b] [--expires 720h]")}
	}
	fs := flag.NewFlagSet("keytrail token new", flag.ContinueOnError)
	fs.SetOutput(stdout)
	name := fs.String("name", "", "who the token is for (recorded in the query audit log)")
	role := fs.String("role", "", "admin, auditor or project_reader")
	projects := fs.String("projects", "", "comma-separated projects (project_reader)")
	expires := fs.Duration("expires", 0, "lifetime; 0 means no expiry")
	if err := fs.Parse(args[1:]); err != nil {
		return &exitCodeError{exitUsage, err}
	}
	switch {
	case *expires < 0:
		return &exitCodeError{exitUsage, fmt.Errorf("--expires %s must not be negative (0 means no expiry)", *expires)}
	case fs.NArg() > 0:
		return &exitCodeError{exitUsage, fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	token := auth.NewToken()
	entry := auth.Entry{Name: *name, SHA256: auth.HashToken(token), Role: auth.Role(*role)}
	if *projects != "" {
		entry.Projects = strings.Split(*projects, ",")
	}
	if *expires > 0 {
		t := time.Now().UTC().Add(*expires).Truncate(time.Second)
		entry.ExpiresAt = &t
	}
	if err := (auth.File{Tokens: []auth.Entry{entry}}).Validate(); err != nil {
		return &exitCodeError{exitUsage, err}
	}
	b, err := yaml.Marshal(auth.File{Tokens: []auth.Entry{entry}})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "token (shown once; keytrail stores only its hash):\n  %s\n\nadd to the tokens file:\n%s", token, b)
	return nil
}
