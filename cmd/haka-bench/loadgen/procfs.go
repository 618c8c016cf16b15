package loadgen

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
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
