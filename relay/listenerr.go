package relay

import "fmt"

// ListenError is a listener that could not be opened, by its name in the
// config (imaps, imap, submissions, submission, smtp, https, http), so the
// command line can name the flag that moves it.
type ListenError struct {
	Name, Addr string
	Err        error
}

func (e *ListenError) Error() string {
	return fmt.Sprintf("listen %s on %s: %v", e.Name, e.Addr, e.Err)
}

func (e *ListenError) Unwrap() error { return e.Err }
