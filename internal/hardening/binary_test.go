package hardening

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hakaproxy/haka-proxy/cmd/haka-bench/loadgen"
)

// buildDir holds the binaries the tests build, removed by TestMain.
var buildDir string

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role))
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// hakaBinary builds cmd/haka-proxy once per run of the tests.
var hakaBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "haka-hardening-")
	if err != nil {
		return "", err
	}
	buildDir = dir
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "haka-proxy")
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", bin, "./cmd/haka-proxy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// haka is a haka-proxy process: its logs (stderr) and connection records
// (stdout) are collected line by line.
type haka struct {
	t       testing.TB
	cmd     *exec.Cmd
	logs    *lines
	recs    *lines
	addr    string
	metrics string
	exited  chan struct{}
	err     error
}

// startHaka runs haka-proxy with args, plus a listener and a metrics
// server on 127.0.0.1:0, and waits until it listens. The process dies
// with the test.
func startHaka(t testing.TB, args ...string) *haka {
	t.Helper()
	bin, err := hakaBinary()
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"}, args...)
	h := &haka{t: t, cmd: exec.Command(bin, args...), logs: newLines(), recs: newLines(), exited: make(chan struct{})}
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := h.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); io.Copy(h.logs, stderr) }()
	go func() { defer readers.Done(); io.Copy(h.recs, stdout) }()
	go func() {
		readers.Wait()
		h.err = h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-h.exited:
		default:
			h.cmd.Process.Kill()
			<-h.exited
		}
	})
	ready := h.logs.wait(t, "the listening line", 1, isMsg("listening"))[0]
	h.addr, _ = ready["addr"].(string)
	h.metrics, _ = ready["metrics"].(string)
	return h
}

func (h *haka) pid() int { return h.cmd.Process.Pid }

// signal sends sig to the process.
func (h *haka) signal(sig os.Signal) {
	h.t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		h.t.Fatal(err)
	}
}

// dump ends a process that is stuck with SIGQUIT, which makes the Go
// runtime write every goroutine's stack to stderr before it exits, and
// returns the last of its stderr: where it was stuck.
func (h *haka) dump() string {
	h.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-h.exited:
	case <-time.After(waitFor):
		h.cmd.Process.Kill()
		<-h.exited
	}
	h.logs.mu.Lock()
	defer h.logs.mu.Unlock()
	raw := h.logs.raw[max(0, len(h.logs.raw)-3000):]
	return strings.Join(raw, "\n") + "\n" + string(h.logs.partial)
}

// exitCode waits for the process to end.
func (h *haka) exitCode(within time.Duration) int {
	h.t.Helper()
	select {
	case <-h.exited:
	case <-time.After(within):
		h.t.Fatalf("haka-proxy did not exit within %v\n%s", within, h.dump())
	}
	var ee *exec.ExitError
	switch {
	case h.err == nil:
		return 0
	case errors.As(h.err, &ee):
		return ee.ExitCode()
	}
	h.t.Fatalf("haka-proxy: %v", h.err)
	return -1
}

// records returns the connection records written so far.
func (h *haka) records() []record {
	var out []record
	for _, m := range h.recs.match(isConnection) {
		out = append(out, toRecord(m))
	}
	return out
}

// scraper reads the metrics over one kept-alive connection at most, so
// that the proxy's descriptors and goroutines do not count more scrape
// connections from one look to the next.
var scraper = &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}

// scrape reads the proxy's metrics: every sample, keyed by its name and
// labels as exposed ("haka_proxy_bytes_total{direction=\"up\"}").
func (h *haka) scrape() map[string]float64 {
	h.t.Helper()
	resp, err := scraper.Get("http://" + h.metrics + "/metrics")
	if err != nil {
		h.t.Fatalf("scraping the metrics: %v", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		h.t.Fatal(err)
	}
	return out
}

// usage is what the process holds: resident memory, descriptors and
// goroutines.
type usage struct {
	RSSKiB     int64
	FDs        int
	Goroutines int
}

func (u usage) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d fds, %d goroutines", float64(u.RSSKiB)/1024, u.FDs, u.Goroutines)
}

func (h *haka) usage() usage {
	h.t.Helper()
	// The scrape first: its connection, kept alive between scrapes, is
	// then counted every time.
	g := int(h.scrape()["go_goroutines"])
	rss, err := loadgen.ProcRSSKiB(h.pid())
	if err != nil {
		h.t.Fatal(err)
	}
	fds, err := loadgen.ProcFDs(h.pid())
	if err != nil {
		h.t.Fatal(err)
	}
	return usage{RSSKiB: rss, FDs: fds, Goroutines: g}
}
