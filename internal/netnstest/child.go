package netnstest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A child is the test binary run again to execute one test under
// restrictions that cannot be undone in the process that sets them:
// capabilities dropped from the bounding set, or a seccomp filter. The
// environment carries the restrictions to the child.
const (
	envChild       = "HAKA_NETNSTEST_CHILD"
	envDropCaps    = "HAKA_NETNSTEST_DROP_CAPS"
	envCapsDropped = "HAKA_NETNSTEST_CAPS_DROPPED"
	envNoNetfilter = "HAKA_NETNSTEST_NO_NFNETLINK"
	envNS          = "HAKA_NETNSTEST_NS"
)

// Main is the TestMain of packages that use RunChild:
//
//	func TestMain(m *testing.M) { netnstest.Main(m) }
//
// In a child it applies the restrictions before any test runs.
func Main(m *testing.M) {
	if InChild() {
		if err := prepareChild(); err != nil {
			fmt.Fprintf(os.Stderr, "netnstest child: %v\n", err)
			os.Exit(3)
		}
	}
	os.Exit(m.Run())
}

// InChild reports whether this process is a child started by RunChild.
func InChild() bool { return os.Getenv(envChild) != "" }

// ChildNS returns the namespace the parent passed to the child; its Do
// enters it. It is not destroyed by the child.
func ChildNS() (*NS, error) {
	name := os.Getenv(envNS)
	if name == "" {
		return nil, errors.New("no namespace was passed to the child")
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	return &NS{Name: name, h: h}, nil
}

// ExitChild ends the child: it prints err on standard error and exits 1,
// or exits 0 when err is nil.
func ExitChild(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Child describes how RunChild runs a test again.
type Child struct {
	// Test is the name of a top-level test of the same package whose body
	// begins with `if netnstest.InChild() { ...; netnstest.ExitChild(err) }`.
	Test string
	// DropCaps are capabilities (unix.CAP_*) removed from the child's
	// bounding, inheritable and ambient sets before it re-executes
	// itself, so that it runs as root without them.
	DropCaps []int
	// NoNetfilterNetlink makes socket(AF_NETLINK, ..., NETLINK_NETFILTER)
	// fail in the child with EPROTONOSUPPORT (a seccomp filter), which is
	// what a kernel built without nfnetlink answers.
	NoNetfilterNetlink bool
	// NS, if set, is passed to the child (ChildNS).
	NS *NS
	// Env is added to the child's environment.
	Env []string
}

// ChildResult is how a child ended.
type ChildResult struct {
	ExitCode       int
	Stdout, Stderr string
}

// RunChild runs c.Test in a new process of the test binary and returns how
// it ended.
func RunChild(t testing.TB, c Child) ChildResult {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("test binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^"+regexp.QuoteMeta(c.Test)+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"=1")
	if len(c.DropCaps) > 0 {
		s := make([]string, len(c.DropCaps))
		for i, cp := range c.DropCaps {
			s[i] = strconv.Itoa(cp)
		}
		cmd.Env = append(cmd.Env, envDropCaps+"="+strings.Join(s, ","))
	}
	if c.NoNetfilterNetlink {
		cmd.Env = append(cmd.Env, envNoNetfilter+"=1")
	}
	if c.NS != nil {
		cmd.Env = append(cmd.Env, envNS+"="+c.NS.Name)
	}
	cmd.Env = append(cmd.Env, c.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	res := ChildResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	default:
		t.Fatalf("run child %s: %v", c.Test, err)
	}
	if res.ExitCode == 3 {
		t.Fatalf("child %s could not set up its restrictions: %s", c.Test, res.Stderr)
	}
	return res
}

func prepareChild() error {
	if s := os.Getenv(envDropCaps); s != "" {
		var caps []int
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("%s=%q: %w", envDropCaps, s, err)
			}
			caps = append(caps, n)
		}
		if os.Getenv(envCapsDropped) == "" {
			return dropCapsAndReexec(caps)
		}
		// After the exec: make sure the kernel did what we meant, so that
		// a test "without CAP_X" cannot pass with it.
		eff, err := effectiveCaps()
		if err != nil {
			return err
		}
		for _, c := range caps {
			if eff&(1<<uint(c)) != 0 {
				return fmt.Errorf("capability %d is still effective after dropping it", c)
			}
		}
	}
	if os.Getenv(envNoNetfilter) != "" {
		return blockNetfilterNetlink()
	}
	return nil
}

// dropCapsAndReexec removes caps from the bounding set of this thread and
// executes the test binary again from the same thread. Capabilities are
// per thread, and a capset on one Go thread leaves the others untouched;
// but execve builds the new process's credentials from the calling
// thread's alone: as root, its permitted and effective sets become the
// bounding set (plus inheritable ∩ file-inheritable, which is why the
// inheritable and ambient sets are cleared too).
func dropCapsAndReexec(caps []int) error {
	runtime.LockOSThread() // never unlocked: the exec replaces the process
	for _, c := range caps {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear the ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	env := append(os.Environ(), envCapsDropped+"=1")
	return syscall.Exec(exe, os.Args, env)
}

// effectiveCaps reads CapEff of the process from /proc/self/status.
func effectiveCaps() (uint64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// blockNetfilterNetlink installs, for every thread of the process, a
// seccomp filter under which socket(AF_NETLINK, *, NETLINK_NETFILTER)
// fails with EPROTONOSUPPORT and every other system call is allowed.
func blockNetfilterNetlink() error {
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		return fmt.Errorf("no seccomp filter for %s", runtime.GOARCH)
	}
	// Offsets in struct seccomp_data: nr, arch, instruction_pointer,
	// args[6]; the low 32 bits of args[i] on a little-endian machine.
	const (
		offNr   = 0
		offArch = 4
		offArg0 = 16
		offArg2 = 32
	)
	ld := func(off uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: off}
	}
	// jne skips to the final ALLOW (index 9) when the value differs.
	jne := func(pc uint8, k uint32) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 9 - pc - 1, K: k}
	}
	prog := []unix.SockFilter{
		0: ld(offArch),
		1: jne(1, arch),
		2: ld(offNr),
		3: jne(3, uint32(unix.SYS_SOCKET)),
		4: ld(offArg0),
		5: jne(5, unix.AF_NETLINK),
		6: ld(offArg2),
		7: jne(7, unix.NETLINK_NETFILTER),
		8: {Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPROTONOSUPPORT)},
		9: {Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	runtime.KeepAlive(prog)
	return nil
}
