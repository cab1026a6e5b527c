//go:build cluster

package clustertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/keytrail/keytrail/internal/storage"
	"github.com/keytrail/keytrail/internal/testenv"
	"github.com/keytrail/keytrail/migrations"
)

// The cluster every test of the package shares (TestMain starts it), and the keytrail binary.
var (
	lab         *cluster
	keytrailBin string
)

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "clustertest:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	tmp, err := os.MkdirTemp("", "keytrail-clustertest-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	if keytrailBin, err = testenv.BuildKeytrail(tmp); err != nil {
		return 0, err
	}
	lab, err = startCluster(filepath.Join(tmp, "cluster"))
	if err != nil {
		return 0, err
	}
	code := m.Run()
	if code != 0 {
		lab.dumpLogs()
	}
	if out, err := lab.run("stop"); err != nil {
		fmt.Fprintf(os.Stderr, "clustertest: stopping the cluster: %v\n%s", err, out)
	}
	return code, nil
}

// cluster drives deploy/cluster/local.sh for one cluster in its own directory and ports.
type cluster struct {
	script, dir string
	base        int
	name        string
}

// Topology of the test cluster: local.sh's defaults.
const (
	shards   = 2
	replicas = 2
	natsN    = 3
)

// startCluster starts ZooKeeper, the four ClickHouse servers and the three NATS servers on a
// free range of ports.
func startCluster(dir string) (*cluster, error) {
	script, err := filepath.Abs(filepath.Join("..", "..", "deploy", "cluster", "local.sh"))
	if err != nil {
		return nil, err
	}
	// 10000-17999: apart from the shared ClickHouse's 18123 and 19000 and the private servers
	// of other suites (20000-29999).
	base, err := testenv.FreePortRange(10000, 18000, 80)
	if err != nil {
		return nil, err
	}
	c := &cluster{script: script, dir: dir, base: base, name: "keytrail"}
	if err := c.watchdog(); err != nil {
		return nil, err
	}
	start := time.Now()
	if out, err := c.run("start"); err != nil {
		c.run("stop")
		return nil, fmt.Errorf("start the cluster: %v\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "clustertest: cluster up in %s (ports %d-%d, dir %s)\n", time.Since(start).Round(time.Millisecond), base, base+79, dir)
	return c, nil
}

func (c *cluster) env() []string {
	return append(os.Environ(),
		"KEYTRAIL_CLUSTER_DIR="+c.dir,
		"KEYTRAIL_CLUSTER_PORT_BASE="+strconv.Itoa(c.base),
		"KEYTRAIL_CLUSTER_NAME="+c.name,
	)
}

func (c *cluster) run(args ...string) (string, error) {
	cmd := exec.Command(c.script, args...)
	cmd.Env = c.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// watchdog starts a shell, in a session of its own, that stops the cluster and removes the
// test's temporary directory (the cluster's parent) once this test process is gone: a
// panicking test ends the process before TestMain can do either.
func (c *cluster) watchdog() error {
	cmd := exec.Command("bash", "-c", `while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop >/dev/null 2>&1; rm -rf -- "$3"`,
		"watchdog", strconv.Itoa(os.Getpid()), c.script, filepath.Dir(c.dir))
	cmd.Env = c.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the cluster's watchdog: %w", err)
	}
	return cmd.Process.Release()
}

func (c *cluster) must(t testing.TB, args ...string) {
	t.Helper()
	if out, err := c.run(args...); err != nil {
		t.Fatalf("local.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// chName is local.sh's name of a ClickHouse server; shard and replica count from 1.
func chName(shard, replica int) string { return fmt.Sprintf("ch-s%dr%d", shard, replica) }

// chAddr is the native address of a ClickHouse server.
func (c *cluster) chAddr(shard, replica int) string {
	k := (shard-1)*replicas + replica - 1
	return "127.0.0.1:" + strconv.Itoa(c.base+10+3*k)
}

func (c *cluster) chAddrs() []string {
	var out []string
	for s := 1; s <= shards; s++ {
		for r := 1; r <= replicas; r++ {
			out = append(out, c.chAddr(s, r))
		}
	}
	return out
}

// dsn is a DSN naming every server of the cluster (clickhouse-go fails over in order).
func (c *cluster) dsn(database string) string {
	return "clickhouse://" + strings.Join(c.chAddrs(), ",") + "/" + database + "?dial_timeout=2s"
}

func (c *cluster) natsURL(i int) string { return "nats://127.0.0.1:" + strconv.Itoa(c.base+50+i-1) }

func (c *cluster) natsURLs() string {
	var urls []string
	for i := 1; i <= natsN; i++ {
		urls = append(urls, c.natsURL(i))
	}
	return strings.Join(urls, ",")
}

// dumpLogs prints the tail of every server's error log, for a failed run.
func (c *cluster) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(c.dir, "ch-*", "log", "clickhouse-server.err.log"))
	more, _ := filepath.Glob(filepath.Join(c.dir, "nats-*", "nats.log"))
	for _, path := range append(logs, more...) {
		fmt.Fprintf(os.Stderr, "--- last lines of %s\n%s\n", path, testenv.Tail(path, 15))
	}
}

// clusterDB is one test's database on the cluster, with the cluster schema applied.
type clusterDB struct {
	Name    string
	Config  storage.Config
	Conn    driver.Conn
	Cluster *storage.Cluster
}

var dbSeq = rand.IntN(1 << 20)

// newClusterDB creates a fresh database on every server and applies the migrations up to
// last (0 for all); it is dropped when the test passes.
func newClusterDB(t testing.TB, last uint32) *clusterDB {
	t.Helper()
	dbSeq++
	name := fmt.Sprintf("kt_cluster_%d_%d", os.Getpid()%10000, dbSeq)
	cfg := storage.Config{DSN: lab.dsn(name), Cluster: lab.name}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := storage.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := storage.OpenCluster(ctx, cfg, conn, lab.name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Run(ctx, migrations.Config{Conn: conn, Cluster: c, Last: last}); err != nil {
		t.Fatalf("apply the cluster schema: %v", err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" ON CLUSTER "+lab.name); err != nil {
				t.Logf("drop %s: %v", name, err)
			}
		} else {
			t.Logf("kept database %s on the cluster in %s", name, lab.dir)
		}
		c.Close()
		conn.Close()
	})
	return &clusterDB{Name: name, Config: cfg, Conn: conn, Cluster: c}
}
