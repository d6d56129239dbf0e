//go:build !linux

package lifecycle

import "errors"

// Without the poller, connections do not go away.
const awaySupported = false

func pollAdd(*Machine) error { return errors.ErrUnsupported }

func pollRemove(uint64) bool { return false }

func pollFire(uint64) {}

func (m *Machine) stopPollTimer() {}
