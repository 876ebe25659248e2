"""Helpers for the gRPC end-to-end tests: a real gRPC server and client
(Python `grpcio`, generic handlers: raw bytes, no generated code), and an
HTTP/1.1 origin that streams a cacheable-looking response slowly. Loopback
addresses only."""

import json
import socket
import threading
import time
from collections import namedtuple
from concurrent import futures

import grpc

SERVICE = "test.v1.Echo"
OTHER_SERVICE = "test.v1.Other"


class GrpcServer:
    """A gRPC server on 127.0.0.1 (HTTP/2 without TLS).

    Services `test.v1.Echo` and `test.v1.Other`, methods:
    - `Unary`: answers the request bytes, with trailing metadata
      `x-echo-trailer: 1`; `mode` makes it fail instead:
      `"unavailable-trailers"` (response headers first, then UNAVAILABLE in
      the trailers), `"unavailable-trailers-only"` (UNAVAILABLE as a
      trailers-only response, no headers before it), `"not-found"`
      (NOT_FOUND, trailers-only: an answer about the call, not a failure).
    - `Stream` (server streaming): the request is JSON `{"n": 3,
      "interval": 0, "hold": false, "fail": null}`: `n` messages
      `msg-<i>`, `interval` seconds apart; with `hold`, after the first
      message it waits for `release` (set by the test once its client saw
      that message; `held_until_release` tells whether it came, or 15 s
      passed); `fail`: a status name to end with instead of OK.
    `calls` counts the calls that reached it."""

    def __init__(self):
        self.mode = "ok"
        self.calls = 0
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.held_until_release = None
        self.cancelled = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self._stream),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),
             grpc.method_handlers_generic_handler(OTHER_SERVICE, handlers)))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _count(self):
        with self.lock:
            self.calls += 1

    def _unary(self, request, context):
        self._count()
        mode = self.mode
        if mode == "unavailable-trailers":
            # Headers go out on their own first: the status then travels in
            # the trailers of a normal response.
            context.send_initial_metadata((("x-server", "1"),))
            time.sleep(0.05)
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend down (trailers)")
        if mode == "unavailable-trailers-only":
            context.abort(grpc.StatusCode.UNAVAILABLE, "backend down (trailers-only)")
        if mode == "not-found":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        context.set_trailing_metadata((("x-echo-trailer", "1"),))
        return request

    def _stream(self, request, context):
        self._count()
        spec = json.loads(request or b"{}")
        context.add_callback(self.cancelled.set)
        for i in range(spec.get("n", 3)):
            if i > 0 and spec.get("interval"):
                time.sleep(spec["interval"])
            if not context.is_active():
                return
            yield f"msg-{i}".encode()
            if i == 0 and spec.get("hold"):
                self.held_until_release = self.release.wait(15)
        if spec.get("fail"):
            context.abort(getattr(grpc.StatusCode, spec["fail"]), "stream failed")

    def stop(self):
        self.server.stop(0)


Result = namedtuple("Result", "code details initial trailing body")


def _md(pairs):
    out = {}
    for k, v in pairs or ():
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


class GrpcClient:
    """A gRPC client over one HTTP/2 connection to 127.0.0.1:`port`
    (grpcio's own retries off: every call is one attempt)."""

    def __init__(self, port):
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.enable_retries", 0)])

    def close(self):
        self.channel.close()

    def unary(self, payload=b"hello", metadata=None, method="Unary", service=SERVICE, timeout=10):
        """One unary call: Result(code, details, initial, trailing, body)."""
        fn = self.channel.unary_unary(f"/{service}/{method}")
        try:
            body, call = fn.with_call(payload, metadata=metadata, timeout=timeout)
            return Result(call.code(), call.details(), _md(call.initial_metadata()),
                          _md(call.trailing_metadata()), body)
        except grpc.RpcError as e:
            return Result(e.code(), e.details(), _md(e.initial_metadata()),
                          _md(e.trailing_metadata()), None)

    def stream(self, spec=None, metadata=None, service=SERVICE, timeout=30):
        """Starts a server-streaming call; returns the call (an iterator of
        messages, with `.code()`, `.cancel()`...)."""
        fn = self.channel.unary_stream(f"/{service}/Stream")
        return fn(json.dumps(spec or {}).encode(), metadata=metadata, timeout=timeout)

    def stream_all(self, spec=None, metadata=None, service=SERVICE):
        """A whole streaming call: Result(code, details, initial, trailing,
        [messages])."""
        call = self.stream(spec, metadata, service)
        msgs = []
        try:
            for m in call:
                msgs.append(m)
        except grpc.RpcError:
            pass
        return Result(call.code(), call.details(), _md(call.initial_metadata()),
                      _md(call.trailing_metadata()), msgs)


class TrailersOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 answering every request with HTTP
    200 `content-type: application/grpc`, a chunked body of one empty gRPC
    message and the chunked trailers `trailers` (a list of raw lines, e.g.
    `[b"grpc-status: banana"]`): what a gRPC server ending with such
    trailers looks like to Envoy's filters."""

    def __init__(self, trailers):
        self.trailers = trailers
        self.hits = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    buf += conn.recv(4096)
                buf = buf[length:]
                self.hits += 1
                msg = b"\x00\x00\x00\x00\x00"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                             b"transfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n"
                             + b"%x\r\n%s\r\n" % (len(msg), msg) + b"0\r\n"
                             + b"".join(t + b"\r\n" for t in self.trailers) + b"\r\n")

    def stop(self):
        self.sock.close()


class SlowStreamingOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 answering every request with a
    chunked `text/event-stream` that looks cacheable (`cache-control:
    max-age=60`): one event, then a wait for `release` (set by the test
    once its client saw the event; at most 15 s, `held_until_release`
    tells which), then a second event and the end."""

    def __init__(self):
        self.release = threading.Event()
        self.held_until_release = None
        self.hits = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.hits += 1

            def chunk(b):
                conn.sendall(b"%x\r\n%s\r\n" % (len(b), b))

            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"cache-control: public, max-age=60\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk(b"data: first\n\n")
            self.held_until_release = self.release.wait(15)
            chunk(b"data: second\n\n")
            conn.sendall(b"0\r\n\r\n")

    def stop(self):
        self.sock.close()
