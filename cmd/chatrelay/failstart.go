//go:build chatrelay_failstart

package main

import (
	"fmt"
	"os"
)

// Built only with the tag chatrelay_failstart, for the upgrade tests: a
// release whose serve exits at start, as a broken one would. No release
// build sets the tag.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		fmt.Fprintln(os.Stderr, "chatrelay: this build exits at start (chatrelay_failstart)")
		os.Exit(3)
	}
}
