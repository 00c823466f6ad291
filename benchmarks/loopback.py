"""Loopback HTTP servers for the benchmarks, each in its own process so its Python work does not share the
measured side's interpreter lock.

    python benchmarks/loopback.py images DIR      # GET /N.jpg -> the N-th (mod count) JPEG of DIR
    python benchmarks/loopback.py llm LATENCY     # an OpenAI-compatible chat/completions server

Each prints its base URL on the first line of stdout, then serves until killed or until its stdin closes
(so a server started by `serve(...)` below, which yields that URL, ends with the benchmark that started it,
however that ends). HTTP/1.1 keep-alive, threaded, a backlog large enough for a burst of clients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connections of a burst of clients

    def handle_error(self, request, client_address):
        pass  # a client that gives up mid-reply is not the server's error


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body leave in one packet: no delayed-ACK wait on keep-alive replies

    def log_message(self, *args):
        pass

    def send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def image_handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    files = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]

    class Images(_Handler):
        def do_GET(self):
            self.send(200, "image/jpeg", files[int(self.path.strip("/").split(".")[0]) % len(files)])

    return Images


def llm_handler(latency: float) -> type[BaseHTTPRequestHandler]:
    """Answers every chat or completion request after `latency` seconds with a chatty reply wrapped around the
    prompt's raw text, as instruction-tuned models do, so rsyn's clean-up has its usual work."""

    class LLM(_Handler):
        def do_GET(self):
            self.send(200, "application/json", json.dumps({"object": "list", "data": [{"id": "loopback"}]}).encode())

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            chat = self.path.endswith("/chat/completions")
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            raw = next((line[10:] for line in prompt.splitlines() if line.startswith("Raw text: ")), "a photo")
            content = f'Sure! Here is the description:\n\n"{raw.rstrip(".")}."'
            choice = {"index": 0, "finish_reason": "stop"}
            choice.update({"message": {"role": "assistant", "content": content}} if chat else {"text": content})
            usage = {"prompt_tokens": 50, "completion_tokens": len(content.split())}
            reply = {"object": "chat.completion" if chat else "text_completion", "choices": [choice], "usage": usage}
            self.send(200, "application/json", json.dumps(reply).encode())

    return LLM


@contextmanager
def serve(kind: str, arg: object) -> Iterator[str]:
    """Start `loopback.py KIND ARG` in its own process; yield its base URL; stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, __file__, kind, str(arg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        url = proc.stdout.readline().strip()
        if not url:
            sys.exit(f"the loopback {kind} server did not start")
        yield url
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    kind, arg = sys.argv[1], sys.argv[2]
    if kind == "images":
        handler, suffix = image_handler(Path(arg)), ""
    elif kind == "llm":
        handler, suffix = llm_handler(float(arg)), "/v1"
    else:
        sys.exit(f"unknown server {kind!r}: images or llm")
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    print(f"http://127.0.0.1:{server.server_address[1]}{suffix}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
