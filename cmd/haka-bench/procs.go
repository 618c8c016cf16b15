package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// stopGrace is how long a child gets to exit after SIGTERM before
	// SIGKILL.
	stopGrace = 3 * time.Second
	// listenPoll is how often /proc is read while a proxy starts: the
	// kernel gives no event for "another process now listens".
	listenPoll = 20 * time.Millisecond
	// startTimeout bounds a proxy's or the server's start.
	startTimeout = 15 * time.Second
	// startAttempts: a proxy is given a port that was free a moment
	// before; if something takes it first, the proxy exits and is
	// restarted on another.
	startAttempts = 3
)

// supervisor starts the comparison's processes and stops them all: none
// may outlive the comparison, whether it ends, fails or is interrupted.
// Children get their own process group, so a Ctrl-C reaches the
// comparison alone and it stops them in order, and die with it if it is
// killed (PR_SET_PDEATHSIG).
type supervisor struct {
	logDir string
	// started, when set, is told of every child (tests).
	started func(name string, pid int)

	mu   sync.Mutex
	live map[*child]struct{}
}

type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once the process is reaped
	err     error         // Wait's result, valid after done
}

func newSupervisor(logDir string) *supervisor {
	return &supervisor{logDir: logDir, live: make(map[*child]struct{})}
}

// start runs argv with stderr (and stdout unless given) appended to
// logDir/name.log.
func (s *supervisor) start(name string, argv []string, stdout io.Writer) (*child, error) {
	logPath := filepath.Join(s.logDir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(logf, "# %s %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	s.mu.Lock()
	s.live[c] = struct{}{}
	s.mu.Unlock()
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		s.mu.Lock()
		delete(s.live, c)
		s.mu.Unlock()
		close(c.done)
	}()
	if s.started != nil {
		s.started(name, cmd.Process.Pid)
	}
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop ends the child: SIGTERM, then SIGKILL after stopGrace. The signals
// go through os.Process, which does not signal a reaped PID.
func (c *child) stop() {
	if c.exited() {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.cmd.Process.Kill()
		<-c.done
	}
}

// logTail returns the last lines of the child's log, for error messages.
func (c *child) logTail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var keep []string
	for _, l := range lines[max(0, len(lines)-3):] {
		if !strings.HasPrefix(l, "# ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, " | ")
}

func (s *supervisor) stopAll() {
	s.mu.Lock()
	cs := make([]*child, 0, len(s.live))
	for c := range s.live {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(c.stop)
	}
	wg.Wait()
}

// measure runs a measurement child to its end and returns its stdout.
func (s *supervisor) measure(ctx context.Context, name string, argv []string, timeout time.Duration) ([]byte, error) {
	var out bytes.Buffer
	c, err := s.start(name, argv, &out)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	case <-t.C:
		c.stop()
		return nil, fmt.Errorf("no result after %v", timeout)
	}
	err = nil
	if c.err != nil {
		err = fmt.Errorf("%w: %s", c.err, c.logTail())
	}
	// The result joins the child's log, for the record.
	if f, ferr := os.OpenFile(c.logPath, os.O_WRONLY|os.O_APPEND, 0); ferr == nil {
		f.Write(out.Bytes())
		f.Close()
	}
	return out.Bytes(), err
}

// startWithReadyLine starts a child that prints one line on stdout once
// it is ready, and returns that line.
func (s *supervisor) startWithReadyLine(ctx context.Context, name string, argv []string) (*child, string, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	defer pr.Close()
	c, err := s.start(name, argv, pw)
	pw.Close()
	if err != nil {
		return nil, "", err
	}
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(pr).ReadString('\n')
		line <- l
		io.Copy(io.Discard, pr)
	}()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case l := <-line:
		if l != "" {
			return c, strings.TrimSpace(l), nil
		}
		<-c.done
		return nil, "", fmt.Errorf("%s exited before it was ready: %v: %s", name, c.err, c.logTail())
	case <-ctx.Done():
		c.stop()
		return nil, "", ctx.Err()
	case <-t.C:
		c.stop()
		return nil, "", fmt.Errorf("%s not ready after %v: %s", name, startTimeout, c.logTail())
	}
}

// startListener starts a proxy given a port to listen on, and waits until
// the proxy's own socket listens there.
func (s *supervisor) startListener(ctx context.Context, name string, argv func(port int) ([]string, error)) (*child, int, error) {
	var lastErr error
	for range startAttempts {
		port, err := freePort()
		if err != nil {
			return nil, 0, err
		}
		a, err := argv(port)
		if err != nil {
			return nil, 0, err
		}
		c, err := s.start(name, a, nil)
		if err != nil {
			return nil, 0, err
		}
		err = waitListening(ctx, c, port)
		if err == nil {
			return c, port, nil
		}
		c.stop()
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		lastErr = err
	}
	return nil, 0, lastErr
}

// freePort returns a loopback port that nobody listens on right now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening polls until a socket of c listens on port, c exits, or
// startTimeout passes. Connecting to find out would hand the proxy a
// connection it would forward; /proc tells without side effects.
func waitListening(ctx context.Context, c *child, port int) error {
	deadline := time.Now().Add(startTimeout)
	t := time.NewTicker(listenPoll)
	defer t.Stop()
	for {
		if ok, err := listensOn(c.pid(), port); err != nil {
			return err
		} else if ok {
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited: %v: %s", c.name, c.err, c.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not listen on port %d after %v: %s", c.name, port, startTimeout, c.logTail())
		}
	}
}

// listensOn reports whether process pid has a TCP socket in the LISTEN
// state on port: a socket inode of /proc/PID/fd that /proc/net/tcp{,6}
// lists as listening there.
func listensOn(pid, port int) (bool, error) {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		// The process is gone; the caller sees it exit.
		return false, nil
	}
	inodes := make(map[string]bool)
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	if len(inodes) == 0 {
		return false, nil
	}
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			i := strings.LastIndexByte(f[1], ':')
			if p, err := strconv.ParseUint(f[1][i+1:], 16, 16); err == nil && int(p) == port {
				return true, nil
			}
		}
	}
	return false, nil
}
