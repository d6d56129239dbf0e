// Package control is the admin control socket: a unix socket in the data
// directory through which `chatrelay status`, `account`, `invite`, `queue`
// and `backup` reach the running relay (the store is locked by the server,
// so the admin commands cannot open it themselves).
//
// Protocol, version 1: the client connects, writes one Request as a line of
// JSON, and reads lines of JSON Responses until one has Done set; then the
// connection closes. Responses before the last carry only Progress, for long
// jobs such as a backup. One request per connection keeps both ends simple;
// an unknown version or command is answered with an Error, never by
// dropping the connection.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Version is the protocol version this package speaks.
const Version = 1

// Request is what the client sends.
type Request struct {
	V    int             `json:"v"`
	Cmd  string          `json:"cmd"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is one line from the server: progress, or the final answer
// (Done) holding either Result or Error.
type Response struct {
	V        int             `json:"v"`
	Done     bool            `json:"done,omitempty"`
	Progress *Progress       `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *Error          `json:"error,omitempty"`
}

// Progress of a long job.
type Progress struct {
	Stage string `json:"stage,omitempty"`
	Done  int    `json:"done"`
	Total int    `json:"total"`
}

// Error codes: the client decides on them, the message is for people.
const (
	CodeBadRequest = "bad_request" // malformed request or arguments
	CodeUnknownCmd = "unknown_command"
	CodeNotFound   = "not_found" // no such account, invite or queue item
	CodeExists     = "exists"    // the account already exists
	CodeBusy       = "busy"      // e.g. a backup is already running
	CodeInternal   = "internal"
)

// Error is a refusal from the server.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an *Error with a code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// IsCode tells whether err is an *Error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Command names and their arguments and results. The server and the CLI
// share these types.
const (
	CmdStatus        = "status"
	CmdAccountList   = "account.list"
	CmdAccountAdd    = "account.add"
	CmdAccountDelete = "account.delete"
	CmdAccountBlock  = "account.block"
	CmdAccountUnblk  = "account.unblock"
	CmdAccountPasswd = "account.passwd"
	CmdInviteCreate  = "invite.create"
	CmdInviteList    = "invite.list"
	CmdInviteRevoke  = "invite.revoke"
	CmdQueueList     = "queue.list"
	CmdQueueRetry    = "queue.retry"
	CmdQueueDrop     = "queue.drop"
	CmdBackup        = "backup"
	CmdProxyShow     = "proxy.show"
	CmdProxyRotate   = "proxy.rotate"
)

// Proxy is the answer to CmdProxyShow and CmdProxyRotate: the ss:// URL
// of the current key.
type Proxy struct {
	URL    string `json:"url"`
	Method string `json:"method"`
	Listen string `json:"listen"`
	// OldKeys is how many rotated keys are still in their grace period.
	OldKeys int `json:"old_keys"`
}

// Status is the answer to CmdStatus.
type Status struct {
	Version      string            `json:"version"`
	MailDomain   string            `json:"mail_domain"`
	Registration string            `json:"registration"`
	DataDir      string            `json:"data_dir"`
	Started      time.Time         `json:"started"`
	Uptime       Duration          `json:"uptime"`
	Listeners    map[string]string `json:"listeners"`
	// NewURL is the https URL of /new, for invite links.
	NewURL       string       `json:"new_url"`
	Certificate  CertStatus   `json:"certificate"`
	Queue        *QueueStatus `json:"queue,omitempty"` // nil: no queue
	Accounts     int          `json:"accounts"`
	DiskFree     int64        `json:"disk_free"` // bytes available in the data dir, -1 unknown
	RecentErrors []string     `json:"recent_errors,omitempty"`
	TURN         *TURNStatus  `json:"turn,omitempty"` // nil: no TURN offered
	// Schema is the index schema version the relay reads and writes.
	Schema uint64 `json:"schema,omitempty"`
	// LastUpgrade is what the last `chatrelay upgrade` did, nil if none.
	LastUpgrade *Upgrade   `json:"last_upgrade,omitempty"`
	Iroh        IrohStatus `json:"iroh"`
}

// UpgradeFile is where `chatrelay upgrade` records its outcome, in the
// data directory; `status` shows it.
const UpgradeFile = "upgrade-status.json"

// Upgrade outcomes.
const (
	UpgradeDone       = "upgraded"
	UpgradeRolledBack = "rolled back"
	UpgradeFailed     = "failed" // and the rollback failed too: see Reason
	UpgradeRefused    = "refused"
	UpgradeRunning    = "in progress"
)

// Upgrade is the record of one `chatrelay upgrade`.
type Upgrade struct {
	Time     time.Time `json:"time"`
	From     string    `json:"from"`
	To       string    `json:"to"`
	Outcome  string    `json:"outcome"`
	Reason   string    `json:"reason,omitempty"`
	Steps    []string  `json:"steps,omitempty"`
	IndexBak string    `json:"index_backup,omitempty"`
}

// TURNStatus is TURN for calls: an external server, or the built-in one
// with its counters since start.
type TURNStatus struct {
	// External is the external server's host:port; the rest is empty then.
	External string `json:"external,omitempty"`
	// Announced is the host:port METADATA names; empty: not announced.
	Announced string `json:"announced,omitempty"`
	UDP       string `json:"udp,omitempty"`
	TCP       string `json:"tcp,omitempty"`
	RelayIP   string `json:"relay_ip,omitempty"`
	MinPort   int    `json:"min_port,omitempty"`
	MaxPort   int    `json:"max_port,omitempty"`

	Allocations      int    `json:"allocations"`
	AllocationsTotal uint64 `json:"allocations_total"`
	BytesIn          uint64 `json:"bytes_in"`
	BytesOut         uint64 `json:"bytes_out"`
	RefusedAuth      uint64 `json:"refused_auth"`
	RefusedPeer      uint64 `json:"refused_peer"`
	RefusedQuota     uint64 `json:"refused_quota"`
	DroppedDatagrams uint64 `json:"dropped_datagrams"`
}

// IrohStatus is the webxdc realtime relay at a glance.
type IrohStatus struct {
	// Served: the built-in iroh relay answers on the HTTPS listener.
	Served bool `json:"served"`
	// Announced is the URL given to Delta Chat in METADATA; empty: none
	// (core then uses n0's public relays).
	Announced string `json:"announced,omitempty"`
	// Nodes is how many iroh nodes are connected to the built-in relay.
	Nodes int `json:"nodes"`
	// Note says why realtime through this relay cannot work, when so.
	Note string `json:"note,omitempty"`
}

// CertStatus describes the certificate served.
type CertStatus struct {
	Mode        string    `json:"mode,omitempty"`
	Names       []string  `json:"names,omitempty"`
	Issuer      string    `json:"issuer,omitempty"`
	NotAfter    time.Time `json:"not_after,omitzero"`
	SelfSigned  bool      `json:"self_signed"`
	Waiting     []string  `json:"waiting,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
}

// QueueStatus is the outbound queue at a glance.
type QueueStatus struct {
	Depth  int       `json:"depth"`
	Oldest time.Time `json:"oldest,omitzero"`
}

// AddrArgs names an account.
type AddrArgs struct {
	Addr string `json:"addr"`
}

// PasswordArgs sets an account's password; an empty Password asks the
// server to generate one.
type PasswordArgs struct {
	Addr     string `json:"addr"`
	Password string `json:"password,omitempty"`
}

// PasswordResult is the password set (generated or given back empty when
// the client chose it).
type PasswordResult struct {
	Addr      string `json:"addr"`
	Password  string `json:"password,omitempty"`
	Generated bool   `json:"generated,omitempty"`
}

// Account is one account as the admin sees it.
type Account struct {
	Addr      string    `json:"addr"`
	Created   time.Time `json:"created"`
	LastLogin string    `json:"last_login,omitempty"`
	UsedBytes int64     `json:"used_bytes"`
	Blocked   bool      `json:"blocked,omitempty"`
}

// InviteArgs creates an invite: Uses 0 means unlimited, TTL 0 never
// expires.
type InviteArgs struct {
	Uses int      `json:"uses"`
	TTL  Duration `json:"ttl"`
}

// Invite is one invite token and its link.
type Invite struct {
	Token    string    `json:"token"`
	URL      string    `json:"url"`
	Uses     int       `json:"uses"` // 0: unlimited
	Used     int       `json:"used"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires,omitzero"`
	Usable   bool      `json:"usable"`
	Disabled string    `json:"disabled,omitempty"` // "expired" or "used up"
	// SelfSigned: URL is the web page (https://D/?token=T), which shows a
	// dclogin: code, since Delta Chat refuses DCACCOUNT: over a
	// self-signed certificate.
	SelfSigned   bool   `json:"self_signed,omitempty"`
	Registration string `json:"registration,omitempty"` // the relay's mode now
}

// TokenArgs names an invite.
type TokenArgs struct {
	Token string `json:"token"`
}

// IDArgs names a queue item; an empty ID means every item (retry only).
type IDArgs struct {
	ID string `json:"id"`
}

// QueueItem is one queued message.
type QueueItem struct {
	ID          string    `json:"id"`
	From        string    `json:"from"`
	Rcpts       []string  `json:"rcpts"` // pending ones
	Size        int64     `json:"size"`
	Created     time.Time `json:"created"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
}

// BackupArgs asks for a backup into Dir (absolute, absent or empty,
// writable by the server).
type BackupArgs struct {
	Dir string `json:"dir"`
}

// BackupResult describes a finished backup.
type BackupResult struct {
	Dir         string `json:"dir"`
	Accounts    int    `json:"accounts"`
	Messages    int    `json:"messages"`
	QueueItems  int    `json:"queue_items"`
	OtherFiles  int    `json:"other_files"`
	Bytes       int64  `json:"bytes"`
	IndexSHA256 string `json:"index_sha256"`
}

// Duration is a time.Duration that travels as a string ("168h0m0s").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
