package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// ProcRSSKiB returns the resident set size of process pid (VmRSS in
// /proc/PID/status), in KiB.
func ProcRSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("rss of %d: %w", pid, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) == 3 && string(f[0]) == "VmRSS:" && string(f[2]) == "kB" {
			v, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("rss of %d: VmRSS %q: %w", pid, f[1], err)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("rss of %d: no VmRSS line (a zombie or a kernel thread?)", pid)
}

// ProcFDs returns how many descriptors process pid has open.
func ProcFDs(pid int) (int, error) {
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("fds of %d: %w", pid, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, fmt.Errorf("fds of %d: %w", pid, err)
	}
	return len(names), nil
}

// userHZ is the unit of the CPU times in /proc/PID/stat: USER_HZ, 100 on
// every Linux architecture Go runs on (it is the ABI's, not the
// kernel's tick rate).
const userHZ = 100

// ProcCPU returns the CPU time process pid (all its threads) has spent
// in user space and in the kernel (utime and stime of /proc/PID/stat),
// to a hundredth of a second.
func ProcCPU(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("cpu of %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: the fields
	// counted are those after its closing parenthesis, from state (3).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("cpu of %d: no command name in %q", pid, b)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("cpu of %d: %d fields after the command name", pid, len(f))
	}
	var ticks [2]int64
	for k, field := range f[11:13] { // utime (14) and stime (15)
		if ticks[k], err = strconv.ParseInt(string(field), 10, 64); err != nil {
			return 0, 0, fmt.Errorf("cpu of %d: field %d %q: %w", pid, 14+k, field, err)
		}
	}
	return time.Duration(ticks[0]) * time.Second / userHZ, time.Duration(ticks[1]) * time.Second / userHZ, nil
}

// CPUPerOp is the CPU a process spent per successful operation of a
// run, in microseconds.
type CPUPerOp struct {
	UserUS float64 `json:"user_us"`
	SysUS  float64 `json:"sys_us"`
}

// measureCPU runs run and, when pid is not 0, sets the CPU process pid
// spent during it per successful operation.
func measureCPU(pid int, run func() Run) (Run, error) {
	if pid == 0 {
		return run(), nil
	}
	u0, s0, err := ProcCPU(pid)
	if err != nil {
		return Run{}, err
	}
	r := run()
	u1, s1, err := ProcCPU(pid)
	if err != nil {
		return r, err
	}
	if r.OK > 0 {
		n := float64(r.OK)
		r.ProxyCPU = &CPUPerOp{UserUS: float64(u1-u0) / 1e3 / n, SysUS: float64(s1-s0) / 1e3 / n}
	}
	return r, nil
}
