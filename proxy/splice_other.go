//go:build !linux

package proxy

// Without splice(2), a bypassed connection is copied in user space: the
// pump keeps reading and forwards every byte without showing it to the
// inspector.
const spliceSupported = false

type pipePool struct{}

func newPipePool() *pipePool { return &pipePool{} }

func (*pipePool) close() {}

func (d *dir) spliceable(uintptr) bool { panic("proxy: splice without kernel support") }
