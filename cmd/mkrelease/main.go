// Command mkrelease finishes a release folder for `make release`: the
// SHA256SUMS file and the minisign signatures. It also makes a key pair
// (for a new release key, or for tests):
//
//	mkrelease finish --dir dist --version 1.2.3 --time 1765000000 --targets linux/amd64,linux/arm64 [--key release.key]
//	mkrelease keygen --out DIR      # DIR/release.key (secret, keep it out of the repository) and DIR/release.pub
package main

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"aead.dev/minisign"

	"github.com/chatrelay/chatrelay/mailbox"
	"github.com/chatrelay/chatrelay/release"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkrelease:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: mkrelease finish|keygen ...")
	}
	switch args[0] {
	case "finish":
		fs := flag.NewFlagSet("finish", flag.ContinueOnError)
		dir := fs.String("dir", "dist", "release folder")
		version := fs.String("version", "", "release version")
		when := fs.Int64("time", 0, "the commit's time, unix seconds")
		targets := fs.String("targets", "linux/amd64,linux/arm64", "GOOS/GOARCH list")
		keyPath := fs.String("key", "", "minisign secret key file (none: unsigned)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *version == "" {
			return errors.New("finish: --version is required")
		}
		d := release.Dist{Dir: *dir, Version: *version, Targets: strings.Split(*targets, ","), Schema: mailbox.SchemaVersion, Time: *when}
		var key *minisign.PrivateKey
		if *keyPath != "" {
			k, err := release.LoadSecretKey(*keyPath)
			if err != nil {
				return err
			}
			key = &k
		} else {
			fmt.Fprintln(os.Stderr, "mkrelease: no RELEASE_KEY: the release is NOT signed")
		}
		return d.Finish(key)
	case "keygen":
		fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
		out := fs.String("out", ".", "folder for release.key and release.pub")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		pub, priv, err := minisign.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		privText, _ := priv.MarshalText()
		pubText, _ := pub.MarshalText()
		secret := filepath.Join(*out, "release.key")
		if err := os.WriteFile(secret, privText, 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(*out, "release.pub"), append(pubText, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Printf("key %s: secret %s (keep it off the repository), public %s\n", release.KeyID(pub.ID()), secret, filepath.Join(*out, "release.pub"))
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}
