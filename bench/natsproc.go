package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/keytrail/keytrail/internal/testenv"
)

// The ingest phases run JetStream as its own nats-server process on this machine, built
// from the nats-server module go.mod requires (the server keytrail embeds), so that the
// server's CPU is read apart from the harness's: the harness process then holds only the
// publisher or the ingester, and its CPU is theirs. Everything still shares the two cores.

// natsServerBinary is the nats-server the fault tests run, built once into
// <repo>/.local/bin (testenv.BuildNATSServer).
func (h *harness) natsServerBinary(ctx context.Context) (string, error) {
	return testenv.BuildNATSServer(ctx, h.cfg.RepoDir)
}

// natsProcess is one nats-server with JetStream, its store and configuration in dir.
type natsProcess struct {
	*child
	dir string
	url string
}

// startNATSProcess starts nats-server on a free loopback port with the settings of
// broker.RunEmbedded (1 MiB max payload, default sync interval) and waits for its ports file.
func startNATSProcess(ctx context.Context, bin, dir string) (*natsProcess, error) {
	conf := fmt.Sprintf("server_name: \"keytrail-bench\"\nlisten: \"127.0.0.1:-1\"\nmax_payload: 1048576\nports_file_dir: %q\njetstream {\n  store_dir: %q\n}\n",
		dir, filepath.Join(dir, "jetstream"))
	confPath := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "nats-server.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "-c", confPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	c, err := startChild(cmd, "nats-server", nil)
	if err != nil {
		return nil, err
	}
	p := &natsProcess{child: c, dir: dir}
	portsFile := filepath.Join(dir, fmt.Sprintf("%s_%d.ports", filepath.Base(bin), p.pid()))
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ports struct {
			Nats []string `json:"nats"`
		}
		if b, err := os.ReadFile(portsFile); err == nil && json.Unmarshal(b, &ports) == nil && len(ports.Nats) > 0 {
			p.url = ports.Nats[0]
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("nats-server exited at start; log %s:\n%s", logFile.Name(), tail(logFile.Name(), 20))
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("nats-server wrote no ports file within 30 s")
		}
	}
}
