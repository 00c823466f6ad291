"""Misbehaving HTTP answers for the loopback servers of the tests (image server, LLM server).

Each takes a BaseHTTPRequestHandler `h` and writes to its socket directly. Every loop is bounded (bytes and
seconds) and a client that hangs up ends it, so a server thread never outlives the test by much.
"""

import socket
import struct
import time


def _write(h, data: bytes) -> bool:
    try:
        h.wfile.write(data)
        h.wfile.flush()
        return True
    except OSError:  # the client gave up: what a deadline or a byte cap should make it do
        return False


def drip(h, data: bytes, every: float, limit_s: float) -> None:
    """`data` one byte at a time, a byte every `every` seconds, for at most `limit_s` seconds."""
    h.close_connection = True
    end = time.monotonic() + limit_s
    for i in range(len(data)):
        if time.monotonic() > end or not _write(h, data[i : i + 1]):
            return
        time.sleep(every)


def drip_headers(h, every: float = 0.1, limit_s: float = 8.0) -> None:
    """A status line and headers that never end: each byte comes well within any per-read timeout."""
    drip(h, b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"a" * 10_000, every, limit_s)


def drip_body(h, every: float = 0.2, limit_s: float = 8.0, content_type: str = "image/jpeg") -> None:
    """Headers at once, then a body of 100 kB one byte at a time."""
    h.close_connection = True
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n").encode()
    if _write(h, head):
        drip(h, b'{"choices": [' + b" " * 99_986, every, limit_s)


def stream_huge(
    h, total: int = 1 << 30, chunked: bool = True, declared: bool = False, content_type: str = "image/jpeg"
) -> int:
    """Up to `total` bytes (1 GiB) as fast as the client reads; chunked, Content-Length or close-delimited.
    Returns the bytes sent before the client hung up."""
    h.close_connection = True
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
    if chunked:
        head += "Transfer-Encoding: chunked\r\n"
    elif declared:
        head += f"Content-Length: {total}\r\n"
    else:
        head += "Connection: close\r\n"
    if not _write(h, (head + "\r\n").encode()):
        return 0
    block = b"\0" * (1 << 16)
    framed = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    sent = 0
    while sent < total:
        if not _write(h, framed):
            break
        sent += len(block)
    else:
        if chunked:
            _write(h, b"0\r\n\r\n")
    return sent


def gzip_bomb(h, inflated: int = 100 << 20) -> None:
    """A gzip body (chunked) that is ~1000 times smaller on the wire than inflated, made on the fly."""
    import zlib

    h.close_connection = True
    if not _write(
        h,
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
    ):
        return
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: with the gzip header
    block = b"\0" * (1 << 20)
    for i in range(inflated // len(block) + 1):
        data = packer.compress(block) if i < inflated // len(block) else packer.flush()
        if data and not _write(h, f"{len(data):x}\r\n".encode() + data + b"\r\n"):
            return
    _write(h, b"0\r\n\r\n")


def reset(h) -> None:
    """Read the request, then reset the connection (RST, no answer)."""
    h.close_connection = True
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()


def redirect(h, location: str, status: int = 302) -> None:
    h.send_response(status)
    h.send_header("Location", location)
    h.send_header("Content-Length", "0")
    h.end_headers()
