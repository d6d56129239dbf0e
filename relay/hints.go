package relay

// WebURL is the https URL of the relay's web page as a client reaches it:
// the relay's name (or IP), and the port when it is not 443. A dev relay
// names its loopback address, never a wildcard listener address.
func (s *Server) WebURL() string { return s.web.baseURL() }

// SelfSigned reports whether the relay serves a self-signed certificate,
// which Delta Chat accepts only through a dclogin: code with ic=3.
func (s *Server) SelfSigned() bool { return s.certs.SelfSigned() }
