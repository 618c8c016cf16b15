//go:build !linux

package proxy

import "errors"

// Without epoll, every pump keeps a goroutine of its own, waiting in the
// runtime's poller (see dir.hot).
const pollerSupported = false

type poller struct{ ended []*conn }

func newPoller(*reporter, bool) (*poller, error) { return nil, errors.New("no epoll on this system") }

func (*poller) register(*conn)   {}
func (*poller) unregister(*conn) {}
func (*poller) arm(*dir) error   { return errors.New("no epoll on this system") }
func (*poller) disarm(*dir)      {}
func (*poller) close()           {}
