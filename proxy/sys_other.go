//go:build !linux

package proxy

import "golang.org/x/sys/unix"

func sysRead(fd int, p []byte) (int, error)  { return unix.Read(fd, p) }
func sysWrite(fd int, p []byte) (int, error) { return unix.Write(fd, p) }
func sysShutdownWrite(fd int) error          { return unix.Shutdown(fd, unix.SHUT_WR) }

func sysClose(fd int) error { return unix.Close(fd) }

func sysLingerZero(fd int) error {
	return unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}
