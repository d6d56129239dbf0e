package dctest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// SelfContactID is DC_CONTACT_ID_SELF, the account's own contact.
const SelfContactID = 1

// Socket security values of EnteredLoginParam.
const (
	SecurityAutomatic = "automatic"
	SecuritySSL       = "ssl"
	SecurityStartTLS  = "starttls"
	SecurityPlain     = "plain"
)

// Certificate check values of EnteredLoginParam.
const (
	CertsAutomatic     = "automatic"
	CertsStrict        = "strict"
	CertsAcceptInvalid = "acceptInvalidCertificates"
)

// TransportParams is core's EnteredLoginParam: what a user types into the
// "manual settings" screen. Empty fields are left to core.
type TransportParams struct {
	Addr              string `json:"addr"`
	Password          string `json:"password"`
	IMAPServer        string `json:"imapServer,omitempty"`
	IMAPPort          int    `json:"imapPort,omitempty"`
	IMAPSecurity      string `json:"imapSecurity,omitempty"`
	IMAPUser          string `json:"imapUser,omitempty"`
	SMTPServer        string `json:"smtpServer,omitempty"`
	SMTPPort          int    `json:"smtpPort,omitempty"`
	SMTPSecurity      string `json:"smtpSecurity,omitempty"`
	SMTPUser          string `json:"smtpUser,omitempty"`
	SMTPPassword      string `json:"smtpPassword,omitempty"`
	CertificateChecks string `json:"certificateChecks,omitempty"`
}

// DCLoginQR encodes p as a dclogin: code (core's src/qr/dclogin_scheme.rs):
// dclogin:ADDR?p=PW&v=1&ih=..&ip=..&is=..&sh=..&sp=..&ss=..&ic=..
// Values are form-encoded, which is how core decodes the query.
func DCLoginQR(p TransportParams) string {
	q := []struct{ k, v string }{{"p", p.Password}, {"v", "1"}}
	add := func(k, v string) {
		if v != "" && v != "0" {
			q = append(q, struct{ k, v string }{k, v})
		}
	}
	security := func(s string) string {
		if s == SecurityAutomatic {
			return "default"
		}
		return s
	}
	add("ih", p.IMAPServer)
	add("ip", strconv.Itoa(p.IMAPPort))
	add("is", security(p.IMAPSecurity))
	add("iu", p.IMAPUser)
	add("sh", p.SMTPServer)
	add("sp", strconv.Itoa(p.SMTPPort))
	add("ss", security(p.SMTPSecurity))
	add("su", p.SMTPUser)
	add("spw", p.SMTPPassword)
	switch p.CertificateChecks {
	case CertsStrict:
		add("ic", "1")
	case CertsAcceptInvalid:
		add("ic", "3")
	}
	s := "dclogin:" + p.Addr + "?"
	for i, kv := range q {
		if i > 0 {
			s += "&"
		}
		s += kv.k + "=" + url.QueryEscape(kv.v)
	}
	return s
}

// SystemInfo is get_system_info: core version and build facts.
func (r *RPC) SystemInfo(ctx context.Context) (map[string]string, error) {
	var info map[string]string
	err := r.CallResult(ctx, &info, "get_system_info")
	return info, err
}

// AddAccount creates an empty account. It also turns off webxdc realtime
// channels, so core never starts iroh, whose default relays are public hosts.
func (r *RPC) AddAccount(ctx context.Context) (uint32, error) {
	var acc uint32
	if err := r.CallResult(ctx, &acc, "add_account"); err != nil {
		return 0, err
	}
	if err := r.SetConfig(ctx, acc, "webxdc_realtime_enabled", "0"); err != nil {
		return 0, err
	}
	return acc, nil
}

// SetConfig sets one configuration key of account acc.
func (r *RPC) SetConfig(ctx context.Context, acc uint32, key, value string) error {
	_, err := r.Call(ctx, "set_config", acc, key, value)
	return err
}

// GetConfig reads one configuration key; "" if unset.
func (r *RPC) GetConfig(ctx context.Context, acc uint32, key string) (string, error) {
	var v *string
	if err := r.CallResult(ctx, &v, "get_config", acc, key); err != nil || v == nil {
		return "", err
	}
	return *v, nil
}

// AddOrUpdateTransport configures the account with p and starts its I/O.
// It returns once core has logged in to IMAP and SMTP, or failed to.
func (r *RPC) AddOrUpdateTransport(ctx context.Context, acc uint32, p TransportParams) error {
	_, err := r.Call(ctx, "add_or_update_transport", acc, p)
	return err
}

// AddTransportFromQR configures the account from a dclogin:, dcaccount: or
// DCACCOUNT: code, like AddOrUpdateTransport.
func (r *RPC) AddTransportFromQR(ctx context.Context, acc uint32, qr string) error {
	_, err := r.Call(ctx, "add_transport_from_qr", acc, qr)
	return err
}

// IsConfigured reports whether the account has a working transport.
func (r *RPC) IsConfigured(ctx context.Context, acc uint32) (bool, error) {
	var ok bool
	err := r.CallResult(ctx, &ok, "is_configured", acc)
	return ok, err
}

// CheckQR is check_qr: how core reads a scanned code. The result's "kind"
// says what it is ("login", "account", "askVerifyContact", ...).
func (r *RPC) CheckQR(ctx context.Context, acc uint32, qr string) (map[string]any, error) {
	var res map[string]any
	err := r.CallResult(ctx, &res, "check_qr", acc, qr)
	return res, err
}

// MakeVcard returns a vCard with the given contacts and their keys.
func (r *RPC) MakeVcard(ctx context.Context, acc uint32, contacts ...uint32) (string, error) {
	if contacts == nil {
		contacts = []uint32{}
	}
	var v string
	err := r.CallResult(ctx, &v, "make_vcard", acc, contacts)
	return v, err
}

// ImportVcardContents imports contacts from a vCard and returns their ids.
func (r *RPC) ImportVcardContents(ctx context.Context, acc uint32, vcard string) ([]uint32, error) {
	var ids []uint32
	err := r.CallResult(ctx, &ids, "import_vcard_contents", acc, vcard)
	return ids, err
}

// CreateChatByContactID returns the one-to-one chat with a contact.
func (r *RPC) CreateChatByContactID(ctx context.Context, acc, contact uint32) (uint32, error) {
	var chat uint32
	err := r.CallResult(ctx, &chat, "create_chat_by_contact_id", acc, contact)
	return chat, err
}

// AcceptChat accepts a contact request chat.
func (r *RPC) AcceptChat(ctx context.Context, acc, chat uint32) error {
	_, err := r.Call(ctx, "accept_chat", acc, chat)
	return err
}

// BasicChat is the part of core's BasicChat the tests read.
type BasicChat struct {
	ID               uint32 `json:"id"`
	Name             string `json:"name"`
	ChatType         any    `json:"chatType"`
	IsEncrypted      bool   `json:"isEncrypted"`
	IsContactRequest bool   `json:"isContactRequest"`
}

// BasicChatInfo is get_basic_chat_info.
func (r *RPC) BasicChatInfo(ctx context.Context, acc, chat uint32) (BasicChat, error) {
	var c BasicChat
	err := r.CallResult(ctx, &c, "get_basic_chat_info", acc, chat)
	return c, err
}

// SendText sends a text message to a chat and returns its message id.
func (r *RPC) SendText(ctx context.Context, acc, chat uint32, text string) (uint32, error) {
	var id uint32
	err := r.CallResult(ctx, &id, "misc_send_text_message", acc, chat, text)
	return id, err
}

// GetSecureJoinQR returns the SecureJoin invitation of the account
// ("setup contact") when chat is 0, or of group chat.
func (r *RPC) GetSecureJoinQR(ctx context.Context, acc, chat uint32) (string, error) {
	var c any
	if chat != 0 {
		c = chat
	}
	var qr string
	err := r.CallResult(ctx, &qr, "get_chat_securejoin_qr_code", acc, c)
	return qr, err
}

// SecureJoin starts the handshake for a scanned invitation and returns the
// chat it will happen in. The handshake runs in the background; watch
// SecurejoinJoinerProgress (1000: done) to see it finish.
func (r *RPC) SecureJoin(ctx context.Context, acc uint32, qr string) (uint32, error) {
	var chat uint32
	err := r.CallResult(ctx, &chat, "secure_join", acc, qr)
	return chat, err
}

// Message is the part of core's Message the tests read.
type Message struct {
	ID          uint32  `json:"id"`
	ChatID      uint32  `json:"chatId"`
	FromID      uint32  `json:"fromId"`
	Text        string  `json:"text"`
	Subject     string  `json:"subject"`
	ShowPadlock bool    `json:"showPadlock"`
	IsInfo      bool    `json:"isInfo"`
	State       int     `json:"state"`
	Error       *string `json:"error"`
	ViewType    string  `json:"viewType"`
	Timestamp   int64   `json:"timestamp"`
}

// GetMessage is get_message.
func (r *RPC) GetMessage(ctx context.Context, acc, msg uint32) (Message, error) {
	var m Message
	err := r.CallResult(ctx, &m, "get_message", acc, msg)
	return m, err
}

// WaitIncoming waits until account acc shows a message from someone else
// whose text is exactly text, and returns it with the time its event
// arrived. Events passed over are dropped, as in WaitEvent.
func (r *RPC) WaitIncoming(ctx context.Context, acc uint32, text string) (Message, time.Time, error) {
	seen := make(map[uint32]bool)
	var last []string
	for {
		e, err := r.WaitEvent(ctx, acc, "", func(e Event) bool {
			return (e.Kind == "IncomingMsg" || e.Kind == "MsgsChanged") && e.MsgID != 0 && !seen[e.MsgID]
		})
		if err != nil {
			return Message{}, time.Time{}, fmt.Errorf("wait for message %q on account %d (saw %q): %w", text, acc, last, err)
		}
		seen[e.MsgID] = true
		m, err := r.GetMessage(ctx, acc, e.MsgID)
		if err != nil {
			return Message{}, time.Time{}, err
		}
		if m.FromID != SelfContactID && m.Text == text {
			return m, e.At, nil
		}
		if len(last) < 20 {
			last = append(last, m.Text)
		}
	}
}

// IceServer is one entry of ice_servers: the RTCIceServer dictionary of
// WebRTC that core hands the UI for calls.
type IceServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// IceServers is ice_servers: the STUN/TURN servers core would give the
// UI's WebRTC for a call. raw is core's JSON text as returned.
func (r *RPC) IceServers(ctx context.Context, acc uint32) (servers []IceServer, raw string, err error) {
	if err := r.CallResult(ctx, &raw, "ice_servers", acc); err != nil {
		return nil, "", err
	}
	if err := json.Unmarshal([]byte(raw), &servers); err != nil {
		return nil, raw, fmt.Errorf("ice_servers %q: %w", raw, err)
	}
	return servers, raw, nil
}

// PlaceOutgoingCall starts a call in chat; info (the UI's SDP offer) goes
// to the callee's IncomingCall event. It returns the call's message id.
func (r *RPC) PlaceOutgoingCall(ctx context.Context, acc, chat uint32, info string, video bool) (uint32, error) {
	var id uint32
	err := r.CallResult(ctx, &id, "place_outgoing_call", acc, chat, info, video)
	return id, err
}

// AcceptIncomingCall accepts the call of message msg; info (the UI's SDP
// answer) goes to the caller's OutgoingCallAccepted event.
func (r *RPC) AcceptIncomingCall(ctx context.Context, acc, msg uint32, info string) error {
	_, err := r.Call(ctx, "accept_incoming_call", acc, msg, info)
	return err
}

// EndCall ends an incoming or outgoing call.
func (r *RPC) EndCall(ctx context.Context, acc, msg uint32) error {
	_, err := r.Call(ctx, "end_call", acc, msg)
	return err
}

// CallEvent is the payload of the IncomingCall and OutgoingCallAccepted
// events, whose fields core names in snake case.
type CallEvent struct {
	ChatID         uint32 `json:"chat_id"`
	MsgID          uint32 `json:"msg_id"`
	HasVideo       bool   `json:"has_video"`
	PlaceCallInfo  string `json:"place_call_info"`
	AcceptCallInfo string `json:"accept_call_info"`
}

// Call decodes a call event's payload.
func (e Event) Call() (CallEvent, error) {
	var c CallEvent
	err := json.Unmarshal(e.Raw, &c)
	return c, err
}
