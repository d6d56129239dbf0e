//go:build !go1.26 || go1.27

package lifecycle

import "crypto/tls"

// shrinkTLS writes crypto/tls's private fields and was reviewed for Go
// 1.26 only (tlsshrink.go): on any other release it does nothing until
// someone reads that release's crypto/tls and widens the constraint.
const tlsShrinks = false

func shrinkTLS(*tls.Conn) int { return 0 }
