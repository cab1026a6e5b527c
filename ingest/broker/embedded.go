package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedConfig configures an in-process NATS server with JetStream.
type EmbeddedConfig struct {
	// Host and Port to listen on; Port -1 picks a free port (tests).
	Host string
	Port int
	// StoreDir holds JetStream's file storage; it survives restarts of the process.
	StoreDir string
	// SyncInterval is how often JetStream fsyncs its files; 0 keeps the server default
	// (2 minutes). Acknowledged publishes are written to the OS before the ack either way,
	// so a process crash loses nothing; only a machine crash can lose up to this interval.
	SyncInterval time.Duration
	// SyncAlways fsyncs every write before acknowledging it: survives power loss, at a large
	// cost in publish throughput.
	SyncAlways bool
	// ReadyTimeout bounds the wait for the server to accept connections.
	ReadyTimeout time.Duration
}

// Validate reports every problem with the configuration at once.
func (c EmbeddedConfig) Validate() error {
	var errs []error
	if c.StoreDir == "" {
		errs = append(errs, errors.New("embedded nats: store dir is required"))
	}
	if c.Port < -1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("embedded nats: port %d out of range", c.Port))
	}
	return errors.Join(errs...)
}

// RunEmbedded starts a NATS server with JetStream in this process and waits until it accepts
// connections. Stop it with Shutdown and WaitForShutdown.
func RunEmbedded(cfg EmbeddedConfig) (*server.Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	opts := &server.Options{
		ServerName:   "keytrail-embedded",
		Host:         cfg.Host,
		Port:         cfg.Port,
		JetStream:    true,
		StoreDir:     cfg.StoreDir,
		SyncInterval: cfg.SyncInterval,
		SyncAlways:   cfg.SyncAlways,
		// Signals belong to the keytrail process, which shuts the server down in order.
		NoSigs: true,
		// The server's own log is noisy; keytrail logs what matters about it.
		NoLog: true,
		// Lets a test or the ingester publish up to the stream's max message size.
		MaxPayload: 1 << 20,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(cfg.ReadyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after %s", cfg.ReadyTimeout)
	}
	return srv, nil
}
