package courier

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// newHTTPClient returns the client for /mxdeliv: connections come from
// LocalAddr through our resolver, and redirects are not followed (a POST
// of a message has nowhere legitimate to be redirected to).
func (c *Courier) newHTTPClient(insecure bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, p, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			port, err := strconv.Atoi(p)
			if err != nil {
				return nil, err
			}
			// URLs name a static route's domain (so TLS is verified
			// against it); connect to the route's host instead.
			if route, ok := c.opts.StaticRoutes[host]; ok {
				host = route
				if h, _, err := net.SplitHostPort(route); err == nil {
					host = h
				}
			}
			return c.dial(ctx, host, port)
		},
		TLSClientConfig: &tls.Config{
			RootCAs:            c.opts.RootCAs,
			InsecureSkipVerify: insecure,
			MinVersion:         tls.VersionTLS12,
		},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 30 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// mxdeliv POSTs the message to https://<host>/mxdeliv. A nil error means
// every recipient has it. A refusal that carries an SMTP reply wraps it as
// *smtp.SMTPError.
func (c *Courier) mxdeliv(ctx context.Context, t target, from string, rcpts []string, sig string, body func() (io.ReadCloser, error)) error {
	// The transport may need the body twice: it resends a request that
	// could not be written on a kept-alive connection the peer had just
	// closed, which needs GetBody.
	open := func() (io.ReadCloser, error) {
		rc, err := body()
		if err != nil {
			return nil, fmt.Errorf("open message: %w", err)
		}
		return sigBody{io.MultiReader(strings.NewReader(sig), rc), rc}, nil
	}
	first, err := open()
	if err != nil {
		return err
	}
	size := int64(-1)
	if f, ok := first.(sigBody).Closer.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if st, err := f.Stat(); err == nil {
			size = int64(len(sig)) + st.Size()
		}
	}
	host := t.name
	if c.opts.HTTPSPort != 443 {
		host = net.JoinHostPort(t.name, strconv.Itoa(c.opts.HTTPSPort))
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	u := url.URL{Scheme: "https", Host: host, Path: "/mxdeliv"}
	ctx, cancel := context.WithTimeout(ctx, c.opts.HTTPTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), first)
	if err != nil {
		first.Close()
		return err
	}
	req.GetBody = open
	if size >= 0 {
		req.ContentLength = size
	}
	req.Header.Set("Content-Type", "message/rfc822")
	if from != "" {
		req.Header.Set("X-Mail-From", from)
	}
	for _, r := range rcpts {
		req.Header.Add("X-Mail-To", r)
	}
	client := c.strict
	if t.insecure {
		client = c.relaxed
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", u.String(), err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	// Drain a little more so the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	if se := parseReply(string(text)); se != nil {
		return fmt.Errorf("/mxdeliv at %s refused (HTTP %d): %w", t.name, resp.StatusCode, se)
	}
	return fmt.Errorf("/mxdeliv at %s answered HTTP %d", t.name, resp.StatusCode)
}

// sigBody is the DKIM signature followed by the message file.
type sigBody struct {
	io.Reader
	io.Closer
}

// parseReply reads an SMTP failure reply ("550 5.1.1 text", RFC 5321
// section 4.2 and RFC 3463) from the start of s; nil if there is none.
func parseReply(s string) *smtp.SMTPError {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	line = strings.TrimRight(line, "\r")
	if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
		return nil
	}
	code, err := strconv.Atoi(line[:3])
	if err != nil || code < 400 || code > 599 {
		return nil
	}
	se := &smtp.SMTPError{Code: code, Message: strings.TrimSpace(line[min(len(line), 4):])}
	if first, rest, ok := strings.Cut(se.Message, " "); ok {
		var ec smtp.EnhancedCode
		if n, _ := fmt.Sscanf(first, "%d.%d.%d", &ec[0], &ec[1], &ec[2]); n == 3 && ec[0] == code/100 {
			se.EnhancedCode, se.Message = ec, rest
		}
	}
	return se
}
