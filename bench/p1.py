#!/usr/bin/env python3
"""P1 delivery latency, measured by a second, independent client.

The load generator's own P1 client is Go (crypto/tls, go-smtp). This one
is Python's ssl and sockets, written apart from it, so that a figure has
to survive two client stacks: one IMAP connection in IDLE (a reader
thread timestamps every `* N EXISTS` as it arrives), one submission
connection sending a message at a time after a random pause, each timed
from the end of DATA (the final CRLF.CRLF about to be sent) to the EXISTS
that announces it.

Settings come from the environment (the load generator sets them):
BENCH_IMAPS, BENCH_SUBMISSIONS (host:port, implicit TLS), BENCH_FROM,
BENCH_FROM_PASS, BENCH_TO, BENCH_TO_PASS, BENCH_N (messages),
BENCH_GAP_MIN_MS and BENCH_GAP_MAX_MS (the pause before each message),
BENCH_MSG_FILE (the message, the same encrypted-format message the Go
client sends, so both measure the same work), BENCH_REIDLE=1 (after each
EXISTS, DONE and a new IDLE, as Delta Chat does; the Go client stays in
one IDLE). SIGTERM ends it after the message under way (the load
generator measures P1 during a login storm that way). Prints one JSON
object. Loopback only; every wait is bounded.
"""

import base64
import json
import os
import random
import re
import signal
import socket
import ssl
import threading
import time

TIMEOUT = 15.0


def tls_connect(hostport):
    host, port = hostport.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="localhost")


class Lines:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")


def imap_cmd(lines, tag, cmd):
    lines.sock.sendall(f"{tag} {cmd}\r\n".encode())
    for _ in range(10000):
        line = lines.line()
        if line.startswith(tag + " "):
            if not line[len(tag) + 1:].upper().startswith("OK"):
                raise RuntimeError(f"{cmd.split()[0]}: {line}")
            return
    raise RuntimeError("no tagged reply")


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Idler(threading.Thread):
    """Reads the IDLE connection and timestamps each EXISTS count. With
    reidle, it answers each EXISTS as Delta Chat does: DONE, then IDLE
    again once the server has ended the first."""

    def __init__(self, lines, reidle=False):
        super().__init__(daemon=True)
        self.lines = lines
        self.reidle = reidle
        self.tag = 3
        self.cond = threading.Condition()
        self.exists = 0
        self.at = {}  # count -> perf_counter when read
        self.error = None

    def run(self):
        pat = re.compile(r"^\* (\d+) EXISTS$", re.I)
        try:
            self.lines.sock.settimeout(None)
            while True:
                line = self.lines.line()
                now = time.perf_counter()
                m = pat.match(line)
                if m:
                    self.note(int(m.group(1)), now)
                    if self.reidle:
                        self.again(pat)
        except Exception as e:  # closed at the end, or a failure
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def note(self, n, now):
        with self.cond:
            self.exists = n
            self.at.setdefault(n, now)
            self.cond.notify_all()

    def again(self, pat):
        """DONE, then IDLE again, noting any EXISTS on the way."""
        self.lines.sock.sendall(b"DONE\r\n")
        for done, want in ((f"a{self.tag} ", None), ("+", f"a{self.tag + 1} IDLE\r\n")):
            if want:
                self.tag += 1
                self.lines.sock.sendall(want.encode())
            for _ in range(1000):
                line = self.lines.line()
                m = pat.match(line)
                if m:
                    self.note(int(m.group(1)), time.perf_counter())
                if line.startswith(done):
                    break

    def wait_for(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.exists < n and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.at.get(n) if self.exists >= n else None


def smtp_reply(lines):
    for _ in range(100):
        line = lines.line()
        if len(line) < 4 or line[3] != "-":
            return int(line[:3]), line
    raise RuntimeError("reply too long")


def smtp_cmd(lines, cmd, want):
    lines.sock.sendall(cmd.encode() + b"\r\n")
    code, line = smtp_reply(lines)
    if code != want:
        raise RuntimeError(f"{cmd.split()[0]}: {line}")


def pct(xs, p):
    if not xs:
        return 0.0
    xs = sorted(xs)
    i = max(0, min(len(xs) - 1, int(p * len(xs) + 0.999999) - 1))
    return xs[i]


def main():
    env = os.environ
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    n = int(env.get("BENCH_N", "500"))
    gmin = float(env.get("BENCH_GAP_MIN_MS", "100")) / 1000
    gmax = float(env.get("BENCH_GAP_MAX_MS", "500")) / 1000
    sender, rcpt = env["BENCH_FROM"], env["BENCH_TO"]

    imap = Lines(tls_connect(env["BENCH_IMAPS"]))
    imap.line()  # greeting
    imap_cmd(imap, "a1", f"LOGIN {quote(rcpt)} {quote(env['BENCH_TO_PASS'])}")
    exists = 0
    imap.sock.sendall(b"a2 SELECT INBOX\r\n")
    for _ in range(1000):
        line = imap.line()
        m = re.match(r"^\* (\d+) EXISTS$", line, re.I)
        if m:
            exists = int(m.group(1))
        if line.startswith("a2 "):
            break
    imap.sock.sendall(b"a3 IDLE\r\n")
    if not imap.line().startswith("+"):
        raise RuntimeError("IDLE refused")
    idler = Idler(imap, reidle=env.get("BENCH_REIDLE", "") == "1")
    idler.exists = exists
    idler.start()

    smtp = Lines(tls_connect(env["BENCH_SUBMISSIONS"]))
    smtp_reply(smtp)
    smtp_cmd(smtp, "EHLO bench.localhost", 250)
    auth = base64.b64encode(f"\0{sender}\0{env['BENCH_FROM_PASS']}".encode()).decode()
    smtp_cmd(smtp, "AUTH PLAIN " + auth, 235)

    with open(env["BENCH_MSG_FILE"], "rb") as f:
        msg = f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    # Dot-stuffing, as any SMTP client does.
    msg = re.sub(rb"(?m)^\.", b"..", msg)
    end_to_exists, end_to_250, failures = [], [], 0
    for i in range(n):
        if stop.wait(random.uniform(gmin, gmax)):
            break
        smtp_cmd(smtp, f"MAIL FROM:<{sender}>", 250)
        smtp_cmd(smtp, f"RCPT TO:<{rcpt}>", 250)
        smtp_cmd(smtp, "DATA", 354)
        smtp.sock.sendall(msg)
        t0 = time.perf_counter()
        smtp.sock.sendall(b".\r\n")
        code, line = smtp_reply(smtp)
        t250 = time.perf_counter()
        if code != 250:
            raise RuntimeError(f"end of DATA: {line}")
        exists += 1
        at = idler.wait_for(exists, TIMEOUT)
        if at is None:
            failures += 1
            if failures > 5:
                break
            continue
        end_to_exists.append((at - t0) * 1000)
        end_to_250.append((t250 - t0) * 1000)

    def summary(xs):
        return {"n": len(xs), "p50_ms": round(pct(xs, 0.5), 3), "p90_ms": round(pct(xs, 0.9), 3),
                "p99_ms": round(pct(xs, 0.99), 3), "max_ms": round(max(xs) if xs else 0, 3)}

    client = "python ssl/socket" + (", DONE and IDLE again after each EXISTS" if idler.reidle else "")
    print(json.dumps({"client": client, "end_of_data_to_exists": summary(end_to_exists),
                      "end_of_data_to_250": summary(end_to_250), "failures": failures}))
    try:
        smtp.sock.sendall(b"QUIT\r\n")
        imap.sock.close()
        smtp.sock.close()
    except OSError:
        pass


if __name__ == "__main__":
    main()
