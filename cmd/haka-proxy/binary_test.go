package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildBinary builds haka-proxy into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to build the binary with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "haka-proxy")
	// No VCS stamping: the checkout may be a worktree whose repository
	// is out of reach, and the test does not look at the commit.
	out, err := exec.Command(goBin, "build", "-buildvcs=false", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lineLog keeps every line a process writes to one of its outputs. The
// reader never blocks the process (a pipe nobody drains would stall it)
// and a line is never lost to a waiter looking for another one.
type lineLog struct {
	mu    sync.Mutex
	lines []string
	done  bool
	more  chan struct{} // closed at the next line or at EOF
}

func newLineLog() *lineLog { return &lineLog{more: make(chan struct{})} }

func (l *lineLog) read(r io.Reader) {
	s := bufio.NewScanner(r)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, s.Text())
		close(l.more)
		l.more = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.done = true
	close(l.more)
	l.mu.Unlock()
}

// all returns the lines read so far.
func (l *lineLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// waitFrom waits for the first line at index *from or later for which
// match is true, and moves *from past it. It fails the test at EOF or
// after waitFor, naming what it waited for.
func (l *lineLog) waitFrom(t *testing.T, from *int, what string, match func(string) bool) string {
	t.Helper()
	timeout := time.NewTimer(waitFor)
	defer timeout.Stop()
	for {
		l.mu.Lock()
		lines, done, more := l.lines, l.done, l.more
		l.mu.Unlock()
		for ; *from < len(lines); *from++ {
			if match(lines[*from]) {
				*from++
				return lines[*from-1]
			}
		}
		if done {
			t.Fatalf("the output ended without %s:\n%s", what, strings.Join(lines, "\n"))
		}
		select {
		case <-more:
		case <-timeout.C:
			t.Fatalf("no %s after %v:\n%s", what, waitFor, strings.Join(lines, "\n"))
		}
	}
}

// proc is a running haka-proxy binary.
type proc struct {
	cmd            *exec.Cmd
	stderr, stdout *lineLog
	exited         chan struct{} // closed once Wait returned
	err            error         // Wait's error, once exited is closed
	logAt, recAt   int           // where waitLog and waitRecord look next
	addr           string
}

// launch starts cmd (a haka-proxy binary, possibly behind `ip netns
// exec`, which execs it in place) and reads its outputs; the process is
// killed when the test ends if it still runs.
func launch(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: newLineLog(), stdout: newLineLog(), exited: make(chan struct{})}
	// Dies with the test process, even one killed by a timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); p.stderr.read(errPipe) }()
	go func() { defer readers.Done(); p.stdout.read(outPipe) }()
	go func() {
		// Wait closes the pipes: read them to the end first.
		readers.Wait()
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// startBinary runs the binary and waits until it listens.
func startBinary(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := launch(t, exec.Command(bin, args...))
	p.addr = p.waitLog(t, "listening")["addr"].(string)
	return p
}

// logEntry decodes a JSON log line; other lines (the final error line of
// a failed start) come back as {"msg": "not JSON: ..."}.
func logEntry(line string) map[string]any {
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) != nil {
		return map[string]any{"msg": "not JSON: " + line}
	}
	return m
}

// waitLogMatch waits for the next log entry for which match is true.
func (p *proc) waitLogMatch(t *testing.T, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	line := p.stderr.waitFrom(t, &p.logAt, what, func(l string) bool { return match(logEntry(l)) })
	return logEntry(line)
}

// waitLog waits for the next log line whose message starts with msg.
func (p *proc) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	return p.waitLogMatch(t, "log line "+msg, func(m map[string]any) bool {
		s, _ := m["msg"].(string)
		return strings.HasPrefix(s, msg)
	})
}

// exitCode waits for the process to end and returns its exit code.
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(waitFor):
		t.Fatal("haka-proxy did not exit")
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("haka-proxy: %v", p.err)
	return -1
}

// wait waits for the process to end and fails the test unless it exited 0.
func (p *proc) wait(t *testing.T) {
	t.Helper()
	if code := p.exitCode(t); code != 0 {
		t.Fatalf("haka-proxy exited %d:\n%s", code, strings.Join(p.stderr.all(), "\n"))
	}
}
