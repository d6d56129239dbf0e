package dkim

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/emersion/go-msgauth/dkim"
)

// Why a message did not pass Verify; a *VerifyError wraps one of these.
var (
	ErrNoSignature    = errors.New("dkim: message has no DKIM signature")
	ErrDomainMismatch = errors.New("dkim: no signature from the From domain")
	ErrBadSignature   = errors.New("dkim: signature did not verify")
	ErrKeyLookup      = errors.New("dkim: key lookup failed")
)

// ErrNoKey is what a lookup function returns (or wraps) when the name
// certainly has no key, so the failure is permanent. A *net.DNSError with
// IsNotFound set means the same.
var ErrNoKey = errors.New("dkim: no such key")

// maxSignatures bounds the work one message can cause: each signature
// costs a key lookup and an RSA verification.
const maxSignatures = 5

// VerifyError is a message that did not pass Verify.
type VerifyError struct {
	// Kind is ErrNoSignature, ErrDomainMismatch, ErrBadSignature or
	// ErrKeyLookup.
	Kind error
	// Temporary is true when trying again later may succeed (the key could
	// not be looked up); the receiver should answer 4xx, not 5xx.
	Temporary bool
	// Detail is a short explanation for logs and the SMTP reply.
	Detail string
}

func (e *VerifyError) Error() string {
	if e.Detail == "" {
		return e.Kind.Error()
	}
	// Detail may be another error of this package: say "dkim:" once.
	return e.Kind.Error() + ": " + strings.TrimPrefix(e.Detail, "dkim: ")
}

func (e *VerifyError) Unwrap() error { return e.Kind }

// IsTemporary tells whether Verify failed for a reason that may go away:
// a key lookup that timed out or got SERVFAIL.
func IsTemporary(err error) bool {
	var ve *VerifyError
	return errors.As(err, &ve) && ve.Temporary
}

// Verify checks that the message from r carries a valid DKIM signature
// whose d= is fromDomain (compared case-insensitively: strict alignment, a
// signature by a parent or sub-domain does not count). lookup returns the
// TXT records at a name (a DNS lookup, or the keys published by a static
// route's peer); it is only asked about keys of fromDomain, so a message
// cannot make us query names of its choosing elsewhere.
//
// A nil error means the message passed. Otherwise the error is a
// *VerifyError, except for an error reading r, which is returned as is.
func Verify(r io.Reader, fromDomain string, lookup func(domain string) ([]string, error)) error {
	fromDomain = strings.TrimSuffix(strings.ToLower(fromDomain), ".")
	if fromDomain == "" {
		return &VerifyError{Kind: ErrDomainMismatch, Detail: "no From domain"}
	}
	suffix := "._domainkey." + fromDomain
	var (
		mu         sync.Mutex
		lookupErrs []error // failed lookups, found again by lookupTag
	)
	opts := &dkim.VerifyOptions{
		MaxVerifications: maxSignatures,
		LookupTXT: func(name string) ([]string, error) {
			lname := strings.TrimSuffix(strings.ToLower(name), ".")
			if !strings.HasSuffix(lname, suffix) {
				return nil, ErrNoKey
			}
			txts, err := lookup(name)
			if err != nil {
				// go-msgauth keeps only the text of this error; the tag
				// lets classify find the original again.
				mu.Lock()
				defer mu.Unlock()
				lookupErrs = append(lookupErrs, err)
				return nil, fmt.Errorf("%s %w", lookupTag(len(lookupErrs)-1), err)
			}
			return txts, nil
		},
	}
	verifs, err := dkim.VerifyWithOptions(r, opts)
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		return err
	}
	if len(verifs) == 0 {
		return &VerifyError{Kind: ErrNoSignature}
	}

	var (
		matched   bool
		temporary *VerifyError
		permanent *VerifyError
		others    []string
	)
	for _, v := range verifs {
		if !strings.EqualFold(strings.TrimSuffix(v.Domain, "."), fromDomain) {
			others = append(others, v.Domain)
			continue
		}
		matched = true
		if v.Err == nil {
			return nil
		}
		ve := classify(v.Err, lookupErrs)
		if ve.Temporary {
			temporary = ve
		} else if permanent == nil {
			permanent = ve
		}
	}
	switch {
	case temporary != nil:
		// Another signature of the same domain might have passed, but
		// none did: retrying later is better than rejecting mail because
		// our resolver had a bad moment.
		return temporary
	case permanent != nil:
		return permanent
	case !matched:
		return &VerifyError{Kind: ErrDomainMismatch, Detail: fmt.Sprintf("From domain %s, signed by %s", fromDomain, strings.Join(others, ", "))}
	}
	return &VerifyError{Kind: ErrBadSignature}
}

// classify turns a go-msgauth verification error into a VerifyError.
// go-msgauth calls a lookup error temporary only when it implements
// net.Error's deprecated Temporary method; we decide from the lookup error
// itself.
func classify(err error, lookupErrs []error) *VerifyError {
	msg := strings.TrimPrefix(err.Error(), "dkim: ")
	for i, lerr := range lookupErrs {
		if strings.Contains(msg, lookupTag(i)) {
			return &VerifyError{Kind: ErrKeyLookup, Temporary: lookupTemporary(lerr), Detail: lerr.Error()}
		}
	}
	return &VerifyError{Kind: ErrBadSignature, Detail: msg}
}

func lookupTag(i int) string { return fmt.Sprintf("[lookup %d]", i) }

// lookupTemporary decides whether a failed key lookup may succeed later.
// Only an answer that the name does not exist (or ErrNoKey) is permanent;
// anything we do not recognise is treated as temporary, so the sender
// retries instead of bouncing.
func lookupTemporary(err error) bool {
	if errors.Is(err, ErrNoKey) {
		return false
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return !dnsErr.IsNotFound
	}
	return true
}
