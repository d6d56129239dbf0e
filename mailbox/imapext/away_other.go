//go:build !linux

package imapext

import "errors"

// Without the poller, connections do not go away.
const awaySupported = false

func pollAdd(*layer) error { return errors.ErrUnsupported }

func pollFire(uint64) {}
