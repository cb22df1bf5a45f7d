#!/usr/bin/env python3
"""A reverse-proxy lab: a real HAProxy or nginx between a client and a back end, each in a
network namespace of its own, with captures of both of the proxy's legs and the proxy's own
log, turned into conntrace messages (ground truth for `conntrail correlate`).

  scripts/proxy-lab.py --proxy haproxy|nginx --out DIR [--name PREFIX] [--requests N]

PREFIX (default: pl<pid>, at most 11 characters) makes every name unique:
  PREFIX-c       namespace of the client, veth end PREFIX-cf, address 198.18.1.2/30
  PREFIX-p       namespace of the proxy: veth end PREFIX-pf (front), address 198.18.1.1/30,
                 listening on port 80; veth end PREFIX-pb (back), address 198.18.2.1/30
  PREFIX-s       namespace of the back end, veth end PREFIX-sb, address 198.18.2.2/30,
                 listening on port 8080
The addresses are of the benchmarking range (RFC 2544) and only exist on these ends: no
namespace forwards or has a default route, so no packet leaves them. IPv6 is disabled on
every end before it goes up (no neighbour discovery or MLD frames). Leftovers of a lab of the
same PREFIX are removed first; everything the lab creates (namespaces, veths, the proxy, the
back end, the client, tcpdump) is removed on any exit, SIGINT and SIGTERM included.

The back end (this script, run in PREFIX-s) is an HTTP/1.1 server on raw sockets, a thread
per connection, whose path says what it does:
  /ok      200 at once (Content-Length, Connection: close), then close (FIN)
  /slow    200 after 300 ms
  /reset   no answer: close with SO_LINGER {1,0} (RST) once the request is read
  /hang    no answer: wait until the peer closes, then close
  /early   no answer: close (FIN) once the request is read
  /abort   200 after 600 ms, within the proxy's 1 s server timeout (the client gives up
           after 200 ms)
The client (this script, run in PREFIX-c) sends N requests (default 60), one connection each
(Connection: close), one at a time, 50 ms apart, in a shuffled mix with a fixed seed (about
30% /ok, 15% /slow, 12% /reset, 12% /hang, 12% /early, 19% /abort, the aborts half closed with
RST and half with FIN), each with a header X-Lab-Seq: <n>, and reads every answer to EOF.

The proxy: HAProxy (mode http, options http-server-close and abortonclose (a client that
closes its side has gone, as browsers do), timeout connect/server 1s, client 5s, its unique
id as X-Request-Id, one JSON log line per request on stdout) or nginx (single
process, proxy_next_upstream off, proxy_connect/read_timeout 1s, $request_id as
X-Request-Id, a JSON access log). Neither retries: one back-end connection per request.
The order: back end, proxy (each waited for until it listens), both tcpdumps (waited for until
they capture), the client; 2 s after its last request (the proxy's 1 s timeouts, the back
end's late answers to aborted requests) tcpdump stops (SIGINT), then the proxy (soft stop,
its log complete), then the back end.

Files in DIR:
  front.pcap, back.pcap   tcpdump on PREFIX-pf and PREFIX-pb (pcap, TCP only, whole frames)
  client.jsonl            {"seq","path","action","local_port","status","t","error"} per
                          request: action request|abort-rst|abort-fin, status the one the
                          client received (null: none), t when it sent the request
  server.jsonl            {"req_id","peer_ip","peer_port","path","t","seq"} per request,
                          when the back end has read its headers (peer: the proxy's back
                          leg; req_id: X-Request-Id, seq: X-Lab-Seq)
  haproxy.cfg, haproxy.log (a JSON object per request, and HAProxy's "Proxy ... stopped"
                          lines) | nginx.conf, nginx-access.jsonl (a JSON object per request)
  conntrace.jsonl         a WR-SG-CONNTRACE message per request the proxy logged: req_id,
                          @timestamp (when the proxy received the request: HAProxy's
                          accept date + %Th + %Ti, nginx's $msec - $request_time; whole
                          milliseconds, up to 2 ms early), front_* and
                          back_* (null when no back-end connection was opened), status (null:
                          none) and termination (HAProxy's state, null for nginx); nginx
                          logs no upstream source port: its back leg comes from server.jsonl,
                          joined on the request id
  lab.json                proxy, version, addresses, requests sent, lines logged
  *.err, nginx-error.log  standard error of each process, nginx's error log
Prints a summary on stdout. Exit status 0 on success, 2 on usage errors, 1 on failure.
Needs root (namespaces), ip (iproute2), tcpdump and the proxy.
"""

import argparse
import ctypes
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

CLIENT_IP = "198.18.1.2"
FRONT_PROXY_IP = "198.18.1.1"
FRONT_PORT = 80
BACK_PROXY_IP = "198.18.2.1"
SERVER_IP = "198.18.2.2"
SERVER_PORT = 8080

SEED = 2544
SPACING_S = 0.05
ABORT_AFTER_S = 0.2
SETTLE_S = 2.0  # after the last request: the proxy's timeouts and the back end's late answers
MIX = [("/ok", 30), ("/slow", 15), ("/reset", 12), ("/hang", 12), ("/early", 12), ("/abort", 19)]

# Files this script writes into DIR (removed first, so that nothing stale stays behind).
OUTPUTS = [
    "front.pcap", "back.pcap", "client.jsonl", "server.jsonl", "conntrace.jsonl", "lab.json",
    "haproxy.cfg", "haproxy.log", "haproxy.err", "nginx.conf", "nginx-access.jsonl",
    "nginx-error.log", "nginx.err", "nginx.pid", "client.err", "server.err",
    "tcpdump-front.err", "tcpdump-back.err",
]

PROG = "proxy-lab"


class LabError(Exception):
    pass


class Interrupted(Exception):
    pass


def now_iso_ms(ms):
    t = datetime.datetime.fromtimestamp(ms // 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (ms % 1000)


def linger_rst(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def read_head(sock, limit=65536):
    """Bytes up to the end of the HTTP header block, None on EOF before it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        if not data:
            return None
        buf += data
        if len(buf) > limit:
            return None
    return buf


# ---------------------------------------------------------------------------------------
# The back end (runs in the server namespace: proxy-lab.py _server DIR)


def server_main(out):
    log = open(os.path.join(out, "server.jsonl"), "a", encoding="utf-8")
    lock = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def respond(c, body=b"ok\n", status="200 OK"):
        head = (
            "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            "Connection: close\r\n\r\n" % (status, len(body))
        )
        c.sendall(head.encode() + body)

    def serve(c, peer):
        try:
            c.settimeout(30)
            head = read_head(c)
            if head is None:
                return
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) > 1 else ""
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            rec = {
                "req_id": headers.get("x-request-id"),
                "peer_ip": peer[0],
                "peer_port": peer[1],
                "path": path,
                "t": time.time(),
                "seq": headers.get("x-lab-seq"),
            }
            with lock:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            kind = path.split("?", 1)[0]
            if kind == "/ok":
                respond(c)
            elif kind == "/slow":
                time.sleep(0.3)
                respond(c)
            elif kind == "/reset":
                linger_rst(c)
            elif kind == "/hang":
                while c.recv(4096):
                    pass
            elif kind == "/early":
                pass
            elif kind == "/abort":
                time.sleep(0.6)
                respond(c)
            else:
                respond(c, b"not found\n", "404 Not Found")
        except OSError:
            pass
        finally:
            c.close()

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((SERVER_IP, SERVER_PORT))
    ls.listen(256)
    while True:
        c, peer = ls.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()


# ---------------------------------------------------------------------------------------
# The client (runs in the client namespace: proxy-lab.py _client DIR N)


def plan(n, seed=SEED):
    """The requests in order: [(path, action)], a fixed mix for a given n."""
    total = sum(w for _, w in MIX)
    exact = [(p, n * w / total) for p, w in MIX]
    counts = {p: int(x) for p, x in exact}
    rest = n - sum(counts.values())
    for p, x in sorted(exact, key=lambda e: e[1] - int(e[1]), reverse=True)[:rest]:
        counts[p] += 1
    items = []
    for p, _ in MIX:
        if p == "/abort":
            rst = (counts[p] + 1) // 2
            items += [(p, "abort-rst")] * rst + [(p, "abort-fin")] * (counts[p] - rst)
        else:
            items += [(p, "request")] * counts[p]
    random.Random(seed).shuffle(items)
    return items


def client_one(seq, path, action):
    rec = {"seq": seq, "path": path, "action": action, "local_port": None, "status": None,
           "t": None, "error": None}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect((FRONT_PROXY_IP, FRONT_PORT))
        rec["local_port"] = s.getsockname()[1]
        req = (
            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: proxy-lab\r\nX-Lab-Seq: %d\r\n"
            "Connection: close\r\n\r\n" % (path, FRONT_PROXY_IP, seq)
        )
        rec["t"] = time.time()
        s.sendall(req.encode())
        if action != "request":
            time.sleep(ABORT_AFTER_S)
            if action == "abort-rst":
                linger_rst(s)
            return rec
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            rec["error"] = "reset"
        m = re.match(rb"HTTP/\d\.\d (\d{3})", data)
        if m:
            rec["status"] = int(m.group(1))
        elif rec["error"] is None:
            rec["error"] = "no answer"
    except socket.timeout:
        rec["error"] = "timeout"
    except OSError as e:
        rec["error"] = e.strerror or str(e)
    finally:
        s.close()
    return rec


def client_main(out, n):
    with open(os.path.join(out, "client.jsonl"), "a", encoding="utf-8") as log:
        for seq, (path, action) in enumerate(plan(n), 1):
            log.write(json.dumps(client_one(seq, path, action)) + "\n")
            log.flush()
            time.sleep(SPACING_S)


# ---------------------------------------------------------------------------------------
# The lab


try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _child_setup():
    # The child dies with this process even if it is killed with SIGKILL (PR_SET_PDEATHSIG).
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def run(*cmd, check=True, timeout=30):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise LabError("%s failed (%d): %s" % (" ".join(cmd), p.returncode,
                                                (p.stderr or p.stdout).strip()))
    return p


def listening(pid, ip, port):
    """Whether the network namespace of process `pid` has a TCP listener on ip:port."""
    want = "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(ip))[0], port)
    try:
        with open("/proc/%d/net/tcp" % pid) as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


class Lab:
    def __init__(self, args):
        self.proxy = args.proxy
        self.out = os.path.abspath(args.out)
        self.n = args.requests
        self.name = args.name
        self.ns = {k: "%s-%s" % (args.name, k) for k in ("c", "p", "s")}
        self.ifs = {k: "%s-%s" % (args.name, k) for k in ("cf", "pf", "pb", "sb")}
        self.procs = {}  # name -> Popen, in start order
        self.files = []
        self.created = []
        self.script = os.path.abspath(__file__)

    def path(self, name):
        return os.path.join(self.out, name)

    # -- processes

    def start(self, name, cmd, stdout=None, stderr=None):
        opened = {}

        def sink(x):
            if x is None:
                return subprocess.DEVNULL
            if x not in opened:
                opened[x] = open(self.path(x), "wb")
                self.files.append(opened[x])
            return opened[x]

        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink(stdout),
                             stderr=sink(stderr), start_new_session=True,
                             preexec_fn=_child_setup)
        self.procs[name] = p
        return p

    def stop(self, name, sig=signal.SIGTERM, timeout=5.0):
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        del self.procs[name]
        return p.returncode

    def in_ns(self, key, *cmd):
        return ["ip", "netns", "exec", self.ns[key]] + list(cmd)

    def wait_listen(self, name, ip, port, timeout=10.0):
        p = self.procs[name]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if p.poll() is not None:
                raise LabError("%s exited (%d) before listening on %s:%d, see %s"
                               % (name, p.returncode, ip, port, self.out))
            if listening(p.pid, ip, port):
                return
            time.sleep(0.05)
        raise LabError("%s does not listen on %s:%d after %gs" % (name, ip, port, timeout))

    # -- namespaces

    def remove_namespace(self, ns):
        if not os.path.exists("/run/netns/" + ns):
            return
        pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ValueError, OSError):
                pass
        run("ip", "netns", "del", ns, check=False)

    def remove_leftovers(self):
        for ns in self.ns.values():
            self.remove_namespace(ns)
        for ifname in self.ifs.values():
            if os.path.exists("/sys/class/net/" + ifname):
                run("ip", "link", "del", ifname, check=False)
        for ns in self.ns.values():
            if os.path.exists("/run/netns/" + ns):
                raise LabError("cannot remove the leftover namespace " + ns)

    def setup_network(self):
        for key in ("c", "p", "s"):
            run("ip", "netns", "add", self.ns[key])
            self.created.append(self.ns[key])
            if os.path.isdir("/proc/sys/net/ipv6"):
                run(*self.in_ns(key, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                                "net.ipv6.conf.default.disable_ipv6=1"))
            run("ip", "-n", self.ns[key], "link", "set", "lo", "up")
        legs = [("c", "cf", CLIENT_IP, "p", "pf", FRONT_PROXY_IP),
                ("s", "sb", SERVER_IP, "p", "pb", BACK_PROXY_IP)]
        for ka, ia, ipa, kb, ib, ipb in legs:
            run("ip", "link", "add", self.ifs[ia], "netns", self.ns[ka], "type", "veth",
                "peer", "name", self.ifs[ib], "netns", self.ns[kb])
        for key, ifk, ip in [(ka, ia, ipa) for ka, ia, ipa, _, _, _ in legs] + \
                            [(kb, ib, ipb) for _, _, _, kb, ib, ipb in legs]:
            if os.path.isdir("/proc/sys/net/ipv6"):
                run(*self.in_ns(key, "sysctl", "-qw",
                                "net.ipv6.conf.%s.disable_ipv6=1" % self.ifs[ifk]))
            run("ip", "-n", self.ns[key], "addr", "add", ip + "/30", "dev", self.ifs[ifk])
            run("ip", "-n", self.ns[key], "link", "set", self.ifs[ifk], "up")

    # -- tcpdump

    def start_tcpdump(self, which):
        name = "tcpdump-" + which
        ifname = self.ifs["pf" if which == "front" else "pb"]
        cmd = self.in_ns("p", "tcpdump", "-i", ifname, "-U", "-s", "0", "--immediate-mode",
                         "-Z", "root", "-nn", "-w", self.path(which + ".pcap"), "tcp")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=_child_setup)
        self.procs[name] = p
        ready = threading.Event()
        lines = []

        def drain():
            with open(self.path(name + ".err"), "w") as f:
                for raw in p.stderr:
                    line = raw.decode("utf-8", "replace")
                    lines.append(line.rstrip("\n"))
                    f.write(line)
                    f.flush()
                    if "listening on" in line:
                        ready.set()
            ready.set()

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        return p, ready, lines, t

    def wait_tcpdumps(self, dumps, timeout=10.0):
        end = time.monotonic() + timeout
        for which, (p, ready, lines, _) in dumps.items():
            if not ready.wait(max(0.0, end - time.monotonic())) or p.poll() is not None:
                raise LabError("tcpdump on the %s leg is not capturing: %s"
                               % (which, " / ".join(lines) or "no output"))
        time.sleep(0.2)

    # -- proxies

    def write_haproxy(self):
        fmt = (
            '{"id":"%ID","Ts":"%Ts","ms":"%ms","Th":"%Th","Ti":"%Ti",'
            '"ci":"%ci","cp":"%cp","fi":"%fi","fp":"%fp","bi":"%bi","bp":"%bp",'
            '"si":"%si","sp":"%sp","status":"%ST","tsc":"%tsc","TR":"%TR","Tw":"%Tw",'
            '"Tc":"%Tc","Tr":"%Tr","Ta":"%Ta","bytes":"%B","retries":"%rc",'
            '"path":"%{+E}HPO","seq":"%{+E}[capture.req.hdr(0)]"}'
        )
        cfg = """\
global
    log stdout format raw local0
    nbthread 1

defaults
    mode http
    log global
    option http-server-close
    option abortonclose
    retries 0
    timeout connect 1s
    timeout client 5s
    timeout server 1s

frontend lab
    bind {fip}:{fport}
    unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request capture req.hdr(x-lab-seq) len 12
    http-request set-header X-Request-Id %[unique-id]
    log-format '{fmt}'
    default_backend lab

backend lab
    http-reuse never
    server back {sip}:{sport}
""".format(fip=FRONT_PROXY_IP, fport=FRONT_PORT, fmt=fmt, sip=SERVER_IP, sport=SERVER_PORT)
        cfgpath = self.path("haproxy.cfg")
        with open(cfgpath, "w") as f:
            f.write(cfg)
        p = run(*self.in_ns("p", "haproxy", "-c", "-f", cfgpath), check=False)
        if p.returncode != 0:
            raise LabError("haproxy -c rejects %s: %s" % (cfgpath, (p.stderr + p.stdout).strip()))
        return self.in_ns("p", "haproxy", "-db", "-f", cfgpath), "haproxy.log", "haproxy.err"

    def write_nginx(self):
        tmp = self.path("nginx-tmp")
        os.makedirs(tmp, exist_ok=True)
        fields = [
            ("time_iso8601", "$time_iso8601"), ("msec", "$msec"),
            ("request_id", "$request_id"), ("remote_addr", "$remote_addr"),
            ("remote_port", "$remote_port"), ("server_addr", "$server_addr"),
            ("server_port", "$server_port"), ("status", "$status"),
            ("upstream_addr", "$upstream_addr"), ("upstream_status", "$upstream_status"),
            ("request_time", "$request_time"),
            ("upstream_connect_time", "$upstream_connect_time"),
            ("upstream_response_time", "$upstream_response_time"),
            ("request_uri", "$request_uri"), ("bytes_sent", "$bytes_sent"),
            ("seq", "$http_x_lab_seq"),
        ]
        fmt = "{" + ",".join('"%s":"%s"' % kv for kv in fields) + "}"
        built = run("nginx", "-V", check=False).stderr
        temps = ["client_body", "proxy", "fastcgi"] + [
            m for m in ("uwsgi", "scgi") if "--without-http_%s_module" % m not in built]
        temp_lines = "".join("    %s_temp_path %s/%s;\n" % (t, tmp, t) for t in temps)
        cfg = """\
daemon off;
master_process off;
worker_processes 1;
user root;
pid {out}/nginx.pid;
error_log {out}/nginx-error.log info;

events {{
    worker_connections 256;
}}

http {{
{temps}    log_format lab escape=json '{fmt}';
    access_log {out}/nginx-access.jsonl lab;

    upstream lab {{
        server {sip}:{sport} max_fails=0;
    }}

    server {{
        listen {fip}:{fport};
        location / {{
            proxy_pass http://lab;
            proxy_http_version 1.0;
            proxy_set_header Connection close;
            proxy_set_header X-Request-Id $request_id;
            proxy_connect_timeout 1s;
            proxy_read_timeout 1s;
            proxy_send_timeout 1s;
            proxy_next_upstream off;
        }}
    }}
}}
""".format(out=self.out, temps=temp_lines, fmt=fmt, sip=SERVER_IP, sport=SERVER_PORT,
           fip=FRONT_PROXY_IP, fport=FRONT_PORT)
        cfgpath = self.path("nginx.conf")
        with open(cfgpath, "w") as f:
            f.write(cfg)
        base = ["nginx", "-p", self.out + "/", "-c", cfgpath, "-e", self.path("nginx-error.log")]
        p = run(*self.in_ns("p", *base, "-t", "-q"), check=False)
        if p.returncode != 0:
            raise LabError("nginx -t rejects %s: %s" % (cfgpath, (p.stderr + p.stdout).strip()))
        return self.in_ns("p", *base), "nginx.err", "nginx.err"

    def proxy_version(self):
        if self.proxy == "haproxy":
            m = re.search(r"version (\S+)", run("haproxy", "-v", check=False).stdout)
        else:
            m = re.search(r"nginx/(\S+)", run("nginx", "-v", check=False).stderr)
        return m.group(1) if m else None

    # -- the run

    def execute(self):
        os.makedirs(self.out, exist_ok=True)
        for name in OUTPUTS:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
        for name in ("server.jsonl", "client.jsonl"):
            open(self.path(name), "w").close()
        self.remove_leftovers()
        self.setup_network()

        self.start("server", self.in_ns("s", sys.executable, self.script, "_server", self.out),
                   stderr="server.err")
        self.wait_listen("server", SERVER_IP, SERVER_PORT)

        cmd, out, err = self.write_haproxy() if self.proxy == "haproxy" else self.write_nginx()
        self.start("proxy", cmd, stdout=out, stderr=err)
        self.wait_listen("proxy", FRONT_PROXY_IP, FRONT_PORT)

        dumps = {w: self.start_tcpdump(w) for w in ("front", "back")}
        self.wait_tcpdumps(dumps)

        client = self.start("client", self.in_ns("c", sys.executable, self.script, "_client",
                                                 self.out, str(self.n)),
                            stdout="client.err", stderr="client.err")
        try:
            client.wait(timeout=self.n * 3 + 30)
        except subprocess.TimeoutExpired:
            raise LabError("the client did not finish in %ds" % (self.n * 3 + 30))
        del self.procs["client"]
        if client.returncode != 0:
            raise LabError("the client failed (%d), see %s" % (client.returncode,
                                                               self.path("client.err")))
        time.sleep(SETTLE_S)

        stats = {}
        for which, (p, _, lines, t) in dumps.items():
            self.stop("tcpdump-" + which, signal.SIGINT)
            t.join(5)
            stats[which] = {k: int(v) for v, k in
                            (re.match(r"(\d+) packets? (captured|dropped by kernel)", l).groups()
                             for l in lines if re.match(r"\d+ packets? (captured|dropped)", l))}
        rc = self.stop("proxy", signal.SIGUSR1 if self.proxy == "haproxy" else signal.SIGQUIT)
        if rc not in (0, None):
            print("%s: warning: %s exited with status %d" % (PROG, self.proxy, rc),
                  file=sys.stderr)
        self.stop("server")
        for f in self.files:
            f.close()
        self.files = []
        return self.report(stats)

    # -- conntrace

    def read_jsonl(self, name):
        """JSON objects of a file, one a line, and the number of lines that are not.

        Lines that do not start with "{" (HAProxy's own "Proxy ... stopped" messages on its
        log output) are skipped and not counted."""
        recs, bad = [], 0
        try:
            with open(self.path(name), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.startswith("{"):
                        continue
                    try:
                        recs.append(json.loads(line))
                    except ValueError:
                        bad += 1
        except FileNotFoundError:
            pass
        return recs, bad

    def report(self, stats):
        server, _ = self.read_jsonl("server.jsonl")
        by_id = {}
        for r in server:
            by_id.setdefault(r.get("req_id"), []).append(r)
        client, _ = self.read_jsonl("client.jsonl")

        def num(v):
            try:
                return int(v)
            except (TypeError, ValueError):
                return None

        msgs, mismatches = [], 0
        if self.proxy == "haproxy":
            log, bad = self.read_jsonl("haproxy.log")
            for r in log:
                ms = (num(r.get("Ts")) or 0) * 1000 + (num(r.get("ms")) or 0) \
                    + max(0, num(r.get("Th")) or 0) + max(0, num(r.get("Ti")) or 0)
                status = num(r.get("status"))
                m = self.message(r.get("id"), ms, r.get("ci"), num(r.get("cp")), r.get("fi"),
                                 num(r.get("fp")), status if status != -1 else None,
                                 r.get("tsc"))
                if (num(r.get("bp")) or 0) > 0:
                    m.update(back_src_ip=r.get("bi"), back_src_port=num(r.get("bp")),
                             back_dst_ip=r.get("si"), back_dst_port=num(r.get("sp")))
                    seen = by_id.get(r.get("id"), [])
                    if len(seen) != 1 or seen[0].get("peer_port") != m["back_src_port"]:
                        mismatches += 1
                elif by_id.get(r.get("id")):
                    mismatches += 1
                msgs.append(m)
        else:
            log, bad = self.read_jsonl("nginx-access.jsonl")
            for r in log:
                try:
                    ms = round(float(r["msec"]) * 1000) - round(float(r["request_time"]) * 1000)
                except (KeyError, TypeError, ValueError):
                    ms = 0
                m = self.message(r.get("request_id"), ms, r.get("remote_addr"),
                                 num(r.get("remote_port")), r.get("server_addr"),
                                 num(r.get("server_port")), num(r.get("status")), None)
                seen = by_id.get(r.get("request_id"), [])
                if len(seen) > 1:
                    mismatches += 1
                if seen:
                    up = (r.get("upstream_addr") or "").split(",")[-1].strip()
                    dst_ip, _, dst_port = up.rpartition(":")
                    m.update(back_src_ip=seen[0]["peer_ip"], back_src_port=seen[0]["peer_port"],
                             back_dst_ip=dst_ip or SERVER_IP,
                             back_dst_port=num(dst_port) or SERVER_PORT)
                msgs.append(m)
        msgs.sort(key=lambda m: m["@timestamp"])
        with open(self.path("conntrace.jsonl"), "w") as f:
            for m in msgs:
                f.write(json.dumps(m) + "\n")
        lab = {
            "proxy": self.proxy, "version": self.proxy_version(),
            "front_proxy_ip": FRONT_PROXY_IP, "back_proxy_ip": BACK_PROXY_IP,
            "requests": self.n, "logged": len(log),
            "client_ip": CLIENT_IP, "front_port": FRONT_PORT,
            "server_ip": SERVER_IP, "server_port": SERVER_PORT, "seed": SEED,
            "back_legs": sum(1 for m in msgs if m["back_src_port"] is not None),
            "back_end_requests": len(server), "back_leg_mismatches": mismatches,
            "captured": {w: s.get("captured") for w, s in stats.items()},
            "dropped": {w: s.get("dropped by kernel") for w, s in stats.items()},
        }
        with open(self.path("lab.json"), "w") as f:
            json.dump(lab, f, indent=2)
            f.write("\n")

        statuses = {}
        for m in msgs:
            key = "none" if m["status"] is None else str(m["status"])
            statuses[key] = statuses.get(key, 0) + 1
        answered = sum(1 for c in client if c.get("status") is not None)
        print("%s: %s %s: %d requests sent (%d answered), %d logged by the proxy, %d of them "
              "with a back-end connection (%d requests reached the back end); proxy statuses: "
              "%s; captured %s packets on the front leg, %s on the back leg (dropped: %s/%s); "
              "output in %s."
              % (PROG, self.proxy, lab["version"], len(client), answered, len(log),
                 lab["back_legs"], len(server),
                 ", ".join("%s x%d" % kv for kv in sorted(statuses.items())),
                 lab["captured"].get("front"), lab["captured"].get("back"),
                 lab["dropped"].get("front"), lab["dropped"].get("back"), self.out))
        problems = []
        if len(client) != self.n:
            problems.append("the client sent %d of %d requests" % (len(client), self.n))
        if bad:
            problems.append("%d proxy log lines are not JSON" % bad)
        if len(log) != self.n:
            problems.append("the proxy logged %d of %d requests" % (len(log), self.n))
        if mismatches:
            problems.append("%d proxy log lines disagree with server.jsonl" % mismatches)
        if any(lab["dropped"].values()):
            problems.append("tcpdump dropped packets")
        if any(v is None for v in lab["captured"].values()):
            problems.append("a tcpdump did not report its count")
        for p in problems:
            print("%s: warning: %s" % (PROG, p), file=sys.stderr)
        return 0

    def message(self, req_id, ms, fsip, fsport, fdip, fdport, status, termination):
        return {
            "log_id": "WR-SG-CONNTRACE", "req_id": req_id, "@timestamp": now_iso_ms(ms),
            "front_src_ip": fsip, "front_src_port": fsport,
            "front_dst_ip": fdip, "front_dst_port": fdport,
            "back_src_ip": None, "back_src_port": None,
            "back_dst_ip": None, "back_dst_port": None,
            "status": status, "termination": termination,
        }

    # -- cleanup

    def cleanup(self):
        for name in list(reversed(list(self.procs))):
            sig = signal.SIGINT if name.startswith("tcpdump") else signal.SIGTERM
            try:
                self.stop(name, sig, timeout=3.0)
            except Exception:
                pass
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass
        left = []
        for ns in reversed(self.created):
            self.remove_namespace(ns)
            if os.path.exists("/run/netns/" + ns):
                left.append(ns)
        self.created = []
        if left:
            print("%s: could not remove namespaces %s" % (PROG, " ".join(left)),
                  file=sys.stderr)


def main(argv):
    if argv[:1] == ["_server"]:
        server_main(argv[1])
        return 0
    if argv[:1] == ["_client"]:
        client_main(argv[1], int(argv[2]))
        return 0

    ap = argparse.ArgumentParser(
        prog="proxy-lab.py",
        description="A reverse-proxy lab in network namespaces: captures of both legs of a "
                    "real HAProxy or nginx, and its log as conntrace messages.")
    ap.add_argument("--proxy", required=True, choices=["haproxy", "nginx"])
    ap.add_argument("--out", required=True, metavar="DIR")
    ap.add_argument("--name", default="pl%d" % os.getpid(), metavar="PREFIX",
                    help="prefix of the namespaces and interfaces (1-11 letters, digits, _)")
    ap.add_argument("--requests", type=int, default=60, metavar="N")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_]{1,11}", args.name):
        ap.error("--name must be 1-11 letters, digits or _ (interface names are short)")
    if not 1 <= args.requests <= 10000:
        ap.error("--requests must be 1-10000")

    if os.geteuid() != 0:
        print("%s: needs root (network namespaces)" % PROG, file=sys.stderr)
        return 1
    for tool in ("ip", "tcpdump", args.proxy):
        if shutil.which(tool) is None:
            print("%s: %s is not installed" % (PROG, tool), file=sys.stderr)
            return 1

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    lab = Lab(args)
    try:
        return lab.execute()
    except Interrupted as e:
        print("%s: interrupted by %s, removing the lab" % (PROG, e), file=sys.stderr)
        return 1
    except (LabError, OSError, subprocess.SubprocessError) as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        lab.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
