//go:build !linux

package proxy

// Without splice(2), a bypassed connection is copied in user space: the
// pump keeps reading and forwards every byte without showing it to the
// inspector, and Pass runs are read and written like the rest.
const (
	spliceSupported = false
	pipeSize        = 1 << 20
	pipeFlushAt     = pipeSize
)

type pipe struct{ n int }

type pipePool struct{}

func newPipePool() *pipePool { return &pipePool{} }

func (*pipePool) close() {}

func (d *dir) spliceIn(int, int, bool) (fillResult, int) {
	panic("proxy: splice without kernel support")
}

func (d *dir) drain(bool) flushResult { return flushDone }

func (d *dir) releasePipe() {}

func sysRecvPeek(int, []byte) (int, error) { panic("proxy: peek without kernel support") }
