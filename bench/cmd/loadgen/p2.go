package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/chatrelay/chatrelay/bench/load"
	"github.com/chatrelay/chatrelay/internal/dctest"
)

// cheapArgon2 is maddy's "argon2:" password format with the cheapest
// parameters (1 pass, 64 KiB): time:memory:threads:base64(salt):base64(key).
func cheapArgon2(pass string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey([]byte(pass), salt, 1, 64, 1, 64)
	return "1:64:1:" + base64.StdEncoding.EncodeToString(salt) + ":" + base64.StdEncoding.EncodeToString(key)
}

// PingResult is P2.
type PingResult struct {
	RTT load.Summary `json:"round_trip"`
	// Each leg (ping and pong) split at core's SmtpMessageSent event:
	// Send is core composing, encrypting and submitting; Deliver is from
	// there until the other account's IncomingMsg (server delivery, IDLE,
	// core fetching and decrypting).
	Send    load.Summary `json:"leg_send"`
	Deliver load.Summary `json:"leg_deliver"`
	Error   string       `json:"error,omitempty"`
}

// pings (P2) runs Delta Chat core with two accounts on the server, makes
// an encrypted chat between them (vCard exchange, as in e2e), and times n
// ping/pong round trips: ping sent by A until A sees B's pong, each
// message end-to-end encrypted by core.
func pings(ctx context.Context, t load.Target, a, b int, n int, dir string) (PingResult, error) {
	var res PingResult
	bin, err := dctest.Binary()
	if err != nil {
		return res, fmt.Errorf("%s (%v)", dctest.SkipMessage, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	dc, err := dctest.Start(ctx, bin, dir)
	if err != nil {
		return res, err
	}
	defer dc.Close()
	params := func(i int) dctest.TransportParams {
		host, ip, _ := net.SplitHostPort(t.IMAPS)
		_, sp, _ := net.SplitHostPort(t.Submissions)
		iport, _ := strconv.Atoi(ip)
		sport, _ := strconv.Atoi(sp)
		return dctest.TransportParams{
			Addr: t.User(i), Password: t.Pass(i),
			IMAPServer: host, IMAPPort: iport, IMAPSecurity: dctest.SecuritySSL,
			SMTPServer: host, SMTPPort: sport, SMTPSecurity: dctest.SecuritySSL,
			CertificateChecks: dctest.CertsAcceptInvalid,
		}
	}
	setup := func(i int) (uint32, error) {
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		acc, err := dc.AddAccount(cctx)
		if err != nil {
			return 0, err
		}
		dc.SetConfig(cctx, acc, "displayname", fmt.Sprintf("bench %d", i))
		if err := dc.AddOrUpdateTransport(cctx, acc, params(i)); err != nil {
			return 0, fmt.Errorf("configure %s: %w", t.User(i), err)
		}
		return acc, nil
	}
	accA, err := setup(a)
	if err != nil {
		return res, err
	}
	accB, err := setup(b)
	if err != nil {
		return res, err
	}
	cctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	vcard, err := dc.MakeVcard(cctx, accB, dctest.SelfContactID)
	if err != nil {
		return res, err
	}
	contacts, err := dc.ImportVcardContents(cctx, accA, vcard)
	if err != nil || len(contacts) != 1 {
		return res, fmt.Errorf("import vCard: %v %v", contacts, err)
	}
	chatA, err := dc.CreateChatByContactID(cctx, accA, contacts[0])
	if err != nil {
		return res, err
	}
	if _, err := dc.SendText(cctx, accA, chatA, "hello"); err != nil {
		return res, err
	}
	m, _, err := dc.WaitIncoming(cctx, accB, "hello")
	if err != nil {
		return res, fmt.Errorf("first message: %w", err)
	}
	if !m.ShowPadlock {
		return res, fmt.Errorf("first message arrived unencrypted")
	}
	chatB := m.ChatID
	if err := dc.AcceptChat(cctx, accB, chatB); err != nil {
		return res, err
	}
	if _, err := dc.SendText(cctx, accB, chatB, "hello back"); err != nil {
		return res, err
	}
	if _, _, err := dc.WaitIncoming(cctx, accA, "hello back"); err != nil {
		return res, fmt.Errorf("first reply: %w", err)
	}
	var rtts, sends, delivers []time.Duration
	leg := func(ctx context.Context, from, to, chat uint32, text string) (time.Time, error) {
		dc.Drain(from)
		t0 := time.Now()
		if _, err := dc.SendText(ctx, from, chat, text); err != nil {
			return time.Time{}, err
		}
		sent, err := dc.WaitEvent(ctx, from, "SmtpMessageSent", nil)
		if err != nil {
			return time.Time{}, err
		}
		m, at, err := dc.WaitIncoming(ctx, to, text)
		if err != nil {
			return time.Time{}, err
		}
		if !m.ShowPadlock {
			return time.Time{}, fmt.Errorf("%q arrived unencrypted", text)
		}
		sends = append(sends, sent.At.Sub(t0))
		delivers = append(delivers, at.Sub(sent.At))
		return at, nil
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		dc.Drain(accB)
		start := time.Now()
		_, err := leg(pctx, accA, accB, chatA, fmt.Sprintf("ping %d", i))
		var at time.Time
		if err == nil {
			at, err = leg(pctx, accB, accA, chatB, fmt.Sprintf("pong %d", i))
		}
		cancel()
		if err != nil {
			res.RTT = load.Summarize(rtts)
			return res, fmt.Errorf("ping %d: %w", i, err)
		}
		rtts = append(rtts, at.Sub(start))
		res.Send, res.Deliver = load.Summarize(sends), load.Summarize(delivers)
		// Delta Chat core limits sending to a burst of 3, then one message
		// a second, and once over it sleeps until its next second; a
		// shorter pause measures that limiter, not the server (each
		// account sends once per cycle, so 1 s keeps it under the limit).
		time.Sleep(time.Second)
	}
	res.RTT = load.Summarize(rtts)
	return res, nil
}
