"""Image loading (rsyn.images) against real files, real tars and a real HTTP server on 127.0.0.1."""

import io
import json
import os
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import faults
import numpy as np
import pytest
from PIL import Image

from rsyn.images import (
    DEFAULT_USER_AGENT,
    Fetcher,
    ImageError,
    ImageFolder,
    ImageLoader,
    decode_image,
    size_rule,
)

# --------------------------------------------------------------------------- fixtures shared with test_embed


def jpeg_bytes(width, height, color=(200, 40, 40), quality=90, exif_orientation=None, mode="RGB"):
    image = Image.new(mode, (width, height), color)
    # a gradient, so the picture is not flat and a rotation is visible
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[:, : width // 2] //= 2
    image = Image.fromarray(pixels).convert(mode)
    out = io.BytesIO()
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(out, "JPEG", quality=quality, **kwargs)
    return out.getvalue()


def png_bytes(image):
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class ImageServer:
    """A real HTTP server on 127.0.0.1 serving good, missing, slow, dripping, cut, junk and huge answers."""

    def __init__(self):
        self.files = {}  # path -> bytes (200 image/jpeg)
        self.hits = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.last_host = self.headers.get("Host")
                server.last_agent = self.headers.get("User-Agent")
                try:
                    server.answer(self, self.path)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # clients that give up (timeouts, byte caps) reset connections: expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path):
        return self.base + path

    def answer(self, h, path):
        if path in self.files:
            return self._send(h, 200, self.files[path])
        if path.startswith("/status/"):
            return self._send(h, int(path.split("/")[2]), b"no")
        if path == "/flaky":  # fails once, then works: retries must get it
            if self.hits[path] == 1:
                return self._send(h, 503, b"busy")
            return self._send(h, 200, jpeg_bytes(150, 120))
        if path == "/slow":  # headers later than any read timeout
            time.sleep(3)
            return self._send(h, 200, jpeg_bytes(150, 120))
        if path == "/drip":  # headers at once, then a byte now and then: only a deadline ends it
            h.send_response(200)
            h.send_header("Content-Length", "100000")
            h.end_headers()
            for _ in range(200):
                h.wfile.write(b"\xff")
                h.wfile.flush()
                time.sleep(0.05)
            return None
        if path == "/truncated":
            data = jpeg_bytes(400, 300, quality=95)
            return self._send(h, 200, data[: len(data) // 2])
        if path == "/garbage":
            return self._send(h, 200, b"<html><body>Not an image, a web page</body></html>", "text/html")
        if path == "/huge":  # declares more than the cap
            h.send_response(200)
            h.send_header("Content-Length", str(50_000_000))
            h.end_headers()
            h.wfile.write(b"\0" * 65536)
            return None
        if path == "/huge-undeclared":  # no Content-Length: the cap must count
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            for _ in range(40):
                h.wfile.write(b"\0" * 65536)
            return None
        if path == "/redirect":
            return faults.redirect(h, "/img/a.jpg")
        if path == "/drip-headers":
            return faults.drip_headers(h)
        if path == "/huge-chunked":
            return faults.stream_huge(h, chunked=True)
        if path == "/reset":
            return faults.reset(h)
        if path == "/gzip-bomb":
            return faults.gzip_bomb(h)
        if path == "/loop":
            return faults.redirect(h, "/loop")
        if path.startswith("/chain/"):  # /chain/N: N redirects before the image
            left = int(path.split("/")[2])
            return faults.redirect(h, f"/chain/{left - 1}" if left > 1 else "/img/a.jpg", status=301 + left % 2)
        if path.startswith("/to/"):  # /to/URL: a redirect there
            return faults.redirect(h, path[len("/to/") :])
        return self._send(h, 404, b"missing")

    @staticmethod
    def _send(h, status, body, content_type="image/jpeg"):
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = ImageServer()
    s.files["/img/a.jpg"] = jpeg_bytes(300, 200)
    yield s
    s.close()


def write_img2dataset_tar(folder, shard, samples, with_parquet=False, failed=()):
    """samples: list of (url, image bytes, original (w, h) or None). Written as img2dataset does."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
        for i, (url, data, original) in enumerate(samples):
            key = f"{shard:05d}{i:04d}"
            meta = {
                "url": url,
                "key": key,
                "status": "success",
                "error_message": None,
                "original_width": original[0] if original else None,
                "original_height": original[1] if original else None,
            }
            rows.append(meta)
            for suffix, payload in ((".jpg", data), (".txt", b"caption"), (".json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    for j, (url, message) in enumerate(failed):
        rows.append(
            {
                "url": url,
                "key": f"{shard:05d}{len(samples) + j:04d}",
                "status": "failed_to_download",
                "error_message": message,
                "original_width": None,
                "original_height": None,
            }
        )
    if with_parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")


# --------------------------------------------------------------------------- the size rule


@pytest.mark.parametrize(
    "w,h,ok",
    [
        (100, 100, True),
        (99, 500, False),
        (300, 100, True),
        (301, 100, False),
        (100, 300, True),
        (100, 301, False),
        (4000, 3000, True),
        (1, 1, False),
    ],
)
def test_size_rule_matches_the_paper(w, h, ok):
    passes, min_side, aspect = size_rule(w, h)
    assert passes is ok and min_side == min(w, h) and aspect == pytest.approx(w / h)


# --------------------------------------------------------------------------- decoding


def test_decodes_jpeg_with_real_size():
    d = decode_image(jpeg_bytes(640, 480))
    assert (d.width, d.height) == (640, 480) and d.image.mode == "RGB" and d.image.size == (640, 480)


def test_draft_decodes_big_jpegs_smaller_but_reports_the_real_size():
    d = decode_image(jpeg_bytes(1600, 1200), draft_side=224)
    assert (d.width, d.height) == (1600, 1200)
    assert min(d.image.size) >= 224 and d.image.size[0] < 1600  # decoded at a reduced scale


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_is_applied_and_swaps_the_size(orientation):
    d = decode_image(jpeg_bytes(300, 120, exif_orientation=orientation))
    assert (d.width, d.height) == (120, 300) and d.image.size == (120, 300)


def test_exif_mirror_keeps_the_size():
    d = decode_image(jpeg_bytes(300, 120, exif_orientation=2))
    assert (d.width, d.height) == (300, 120)


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (120, 110), (255, 0, 0, 0))  # fully transparent red
    d = decode_image(png_bytes(rgba))
    assert d.image.mode == "RGB" and d.image.getpixel((5, 5)) == (255, 255, 255)  # shown on white
    palette = Image.new("P", (120, 110), 3)
    assert decode_image(png_bytes(palette)).image.mode == "RGB"
    la = Image.new("LA", (120, 110), (10, 255))
    assert decode_image(png_bytes(la)).image.getpixel((0, 0)) == (10, 10, 10)
    cmyk = io.BytesIO()
    Image.new("CMYK", (120, 110), (0, 255, 255, 0)).save(cmyk, "JPEG")
    r, g, b = decode_image(cmyk.getvalue()).image.getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60  # CMYK red stays red
    sixteen = Image.fromarray(np.full((110, 120), 65535 // 2, dtype=np.uint16))
    d = decode_image(png_bytes(sixteen))
    assert d.image.mode == "RGB" and abs(d.image.getpixel((0, 0))[0] - 127) <= 1  # scaled, not clipped
    gray_one_bit = Image.new("1", (120, 110), 1)
    assert decode_image(png_bytes(gray_one_bit)).image.getpixel((0, 0)) == (255, 255, 255)


def test_animation_gives_the_first_frame():
    frames = [Image.new("RGB", (120, 120), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    r, g, b = decode_image(out.getvalue()).image.getpixel((60, 60))
    assert r > 200 and b < 50
    webp = io.BytesIO()
    frames[0].save(webp, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    r, g, b = decode_image(webp.getvalue()).image.getpixel((60, 60))
    assert r > 200 and b < 50


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "not_an_image"),
        (b"<html>hello</html>", "not_an_image"),
        (os.urandom(5000), "not_an_image"),
        (jpeg_bytes(400, 300)[:600], "decode_failed"),  # header intact, scan data cut
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not_an_image"),  # a PNG signature, then nonsense
        (png_bytes(Image.new("RGB", (300, 200), "red"))[:-40] + b"\1" * 40, "decode_failed"),  # corrupt data
    ],
)
def test_broken_bytes_raise_a_reason_not_a_crash(data, reason):
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert err.value.reason == reason


def test_pixel_bomb_is_refused_before_decoding():
    bomb = png_bytes(Image.new("L", (6000, 6000), 0))  # ~36 MP that compress to a few KB
    assert len(bomb) < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        decode_image(bomb, max_pixels=10_000_000)
    assert err.value.reason == "too_many_pixels" and time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- http


@pytest.fixture(scope="module")
def fetcher():
    f = Fetcher(timeout=0.5, deadline=2.0, retries=1, max_bytes=1_000_000, allow_private=True)
    yield f
    f.close()


def test_fetch_ok_redirect_and_retry(server, fetcher):
    assert fetcher.fetch(server.url("/img/a.jpg")) == server.files["/img/a.jpg"]
    assert fetcher.fetch(server.url("/redirect")) == server.files["/img/a.jpg"]
    assert decode_image(fetcher.fetch(server.url("/flaky"))).width == 150
    assert server.hits["/flaky"] == 2


@pytest.mark.parametrize(
    "path,reason",
    [
        ("/status/404", "http_404"),
        ("/status/403", "http_403"),
        ("/status/500", "http_500"),
        ("/slow", "fetch_timeout"),
        ("/drip", "fetch_timeout"),
        ("/huge", "too_large"),
        ("/huge-undeclared", "too_large"),
    ],
)
def test_fetch_failures_have_reasons_and_end_in_time(server, fetcher, path, reason):
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        fetcher.fetch(server.url(path))
    assert err.value.reason == reason, err.value
    assert time.perf_counter() - start < 5  # never stalls: timeouts, deadline, byte cap


def test_fetch_refused_connection_and_bad_urls(fetcher):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ImageError) as err:
        fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert err.value.reason == "fetch_failed"
    with pytest.raises(ImageError) as err:
        ImageLoader(fetcher=fetcher).load({"url": "ftp://example.com/x.jpg"})
    assert err.value.reason == "unsupported_url"
    for url in (
        "http://",
        "http:///x",
        "http://[::1",
        "http://exa mple.com/",
        "http://host:99999/",
        "http://%00/",
        "http://a\r\nb/",
    ):
        with pytest.raises(ImageError) as err:
            fetcher.fetch(url)
        assert err.value.reason == "bad_url", (url, err.value)


def _timed_failure(fetcher, url):
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        fetcher.fetch(url)
    return err.value, time.perf_counter() - start


def test_deadline_bounds_dripping_headers_and_retries(server):
    # every byte comes within the 0.5 s read timeout: only a deadline over the whole request can end it
    fetcher = Fetcher(timeout=0.5, deadline=1.0, retries=3, allow_private=True)
    error, seconds = _timed_failure(fetcher, server.url("/drip-headers"))
    assert error.reason == "fetch_timeout" and seconds < 1.0 + 0.5, (error, seconds)
    # the deadline covers the retries and their backoff too (0.5 + 1 + 2 s of backoff would be 3.5 s)
    error, seconds = _timed_failure(fetcher, server.url("/status/503"))
    assert error.reason == "http_503" and seconds < 1.0 + 0.5, (error, seconds)
    error, seconds = _timed_failure(fetcher, server.url("/drip"))
    assert error.reason == "fetch_timeout" and seconds < 1.0 + 0.5, (error, seconds)
    fetcher.close()


def test_byte_cap_holds_for_chunked_bodies_and_resets_are_failures(server, fetcher):
    error, seconds = _timed_failure(fetcher, server.url("/huge-chunked"))
    assert error.reason == "too_large" and seconds < 3
    import tracemalloc

    tracemalloc.start()
    error, seconds = _timed_failure(fetcher, server.url("/gzip-bomb"))  # the cap counts inflated bytes
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert error.reason == "too_large" and peak < 8 << 20, peak
    assert _timed_failure(fetcher, server.url("/reset"))[0].reason == "fetch_failed"


def test_redirects_are_followed_whatever_the_retries(server):
    fetcher = Fetcher(timeout=0.5, deadline=3.0, retries=0, allow_private=True)
    image = server.files["/img/a.jpg"]
    assert fetcher.fetch(server.url("/redirect")) == image
    assert fetcher.fetch(server.url("/chain/5")) == image  # five redirects, 301 and 302 mixed
    assert _timed_failure(fetcher, server.url("/chain/6"))[0].reason == "too_many_redirects"
    error, seconds = _timed_failure(fetcher, server.url("/loop"))
    assert error.reason == "too_many_redirects" and seconds < 2
    assert _timed_failure(fetcher, server.url("/to/ftp://example.com/a.jpg"))[0].reason == "bad_redirect"
    fetcher.close()


@pytest.fixture
def connects(monkeypatch):
    """Every TCP connect urllib3 makes, recorded (and made)."""
    import urllib3.util.connection

    made = []
    real = urllib3.util.connection.create_connection

    def record(address, *args, **kwargs):
        made.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", record)
    return made


def test_the_name_is_resolved_once_and_kept_for_the_host_header(server, connects):
    port = server.base.rsplit(":", 1)[1]
    fetcher = Fetcher(timeout=0.5, deadline=2.0, retries=0, allow_private=True)
    assert fetcher.fetch(f"http://localhost:{port}/img/a.jpg") == server.files["/img/a.jpg"]
    assert server.last_host == f"localhost:{port}"  # the name, though the socket went to a resolved address
    assert server.last_agent == DEFAULT_USER_AGENT
    assert connects and all(address in ("127.0.0.1", "::1") for address in connects)
    fetcher.close()


def test_private_addresses_are_refused_before_any_connect(server, connects):
    fetcher = Fetcher(timeout=0.5, deadline=2.0, retries=2)  # the default: no private addresses
    port = server.base.rsplit(":", 1)[1]
    hits = dict(server.hits)
    for url in (
        server.url("/img/a.jpg"),
        f"http://[::1]:{port}/img/a.jpg",
        "http://10.1.2.3/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{port}/img/a.jpg",
        "http://0.0.0.0/a.jpg",
        "http://224.0.0.1/a.jpg",
        "http://192.168.1.1/a.jpg",
        "http://[fe80::1]/a.jpg",
        "http://100.64.0.1/a.jpg",
        f"http://localhost:{port}/img/a.jpg",
        f"http://LOCALHOST:{port}/img/a.jpg",
        f"http://0x7f.1:{port}/img/a.jpg",
        f"http://2130706433:{port}/img/a.jpg",
        f"http://127.1:{port}/img/a.jpg",
    ):
        error, seconds = _timed_failure(fetcher, url)
        assert error.reason == "private_address", (url, error)
        assert "address" in error.detail and seconds < 0.5
    assert connects == [] and server.hits == hits  # refused before connecting, not after
    fetcher.close()


def test_every_redirect_hop_is_checked(server, connects, monkeypatch):
    # no test can host a public address: pretend 127.0.0.1 is one, so the first hop is allowed, and
    # check that its redirect into another loopback address (127.0.0.2) is refused before connecting
    import rsyn.net

    real = rsyn.net.address_refusal
    monkeypatch.setattr(rsyn.net, "address_refusal", lambda ip: None if ip == "127.0.0.1" else real(ip))
    fetcher = Fetcher(timeout=0.5, deadline=2.0, retries=0)
    assert fetcher.fetch(server.url("/redirect")) == server.files["/img/a.jpg"]
    port = server.base.rsplit(":", 1)[1]
    error, _ = _timed_failure(fetcher, server.url(f"/to/http://127.0.0.2:{port}/img/a.jpg"))
    assert error.reason == "private_address" and "127.0.0.2 is a loopback address" in error.detail
    assert set(connects) == {"127.0.0.1"}
    fetcher.close()


@pytest.mark.parametrize(
    "address,refusal",
    [
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("100.64.0.1", "non-global"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:8.8.8.8", None),
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b::808:808", None),
    ],
)
def test_address_rule(address, refusal):
    from rsyn.net import address_refusal

    assert address_refusal(address) == refusal


def test_loader_decodes_served_garbage_and_truncation_as_drops(server, fetcher):
    loader = ImageLoader(fetcher=fetcher)
    assert loader.load({"url": server.url("/img/a.jpg")}).width == 300
    for path, reason in (("/garbage", "not_an_image"), ("/truncated", "decode_failed")):
        with pytest.raises(ImageError) as err:
            loader.load({"url": server.url(path)})
        assert err.value.reason == reason


# --------------------------------------------------------------------------- local files and img2dataset folders


def test_local_path_first_then_url(tmp_path, server, fetcher):
    path = tmp_path / "x.jpg"
    path.write_bytes(jpeg_bytes(210, 200))
    loader = ImageLoader(fetcher=fetcher, root=tmp_path)
    assert loader.load({"path": str(path), "url": server.url("/img/a.jpg")}).width == 210
    # a missing local copy falls back to the URL; with no URL it is a drop
    assert loader.load({"path": str(tmp_path / "gone.jpg"), "url": server.url("/img/a.jpg")}).width == 300
    with pytest.raises(ImageError) as err:
        loader.load({"path": str(tmp_path / "gone.jpg")})
    assert err.value.reason == "file_not_found"


# --------------------------------------------------------------------------- local files a record names


def test_local_paths_outside_the_root_are_refused_even_with_a_url(tmp_path, server, fetcher):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.jpg").write_bytes(jpeg_bytes(120, 110))
    (root / "escape.jpg").symlink_to(secret)
    loader = ImageLoader(fetcher=fetcher, root=root)
    assert loader.load({"path": str(root / "ok.jpg")}).width == 120
    for path in (str(secret), str(root / ".." / "secret.txt"), str(root / "escape.jpg"), "../../../../etc/passwd"):
        with pytest.raises(ImageError) as err:
            loader.load({"path": path, "url": server.url("/img/a.jpg")})  # not silently replaced by the url
        assert err.value.reason == "outside_root" and "root:x" not in str(err.value)
    # inside the root but not an image: said without quoting the bytes
    (root / "passwd.jpg").write_bytes(secret.read_bytes())
    (root / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>secret token abc123</body></html>")
    for name, kind in (("passwd.jpg", "text"), ("page.jpg", "HTML")):
        with pytest.raises(ImageError) as err:
            loader.load({"path": str(root / name)})
        assert err.value.reason == "not_an_image" and kind in str(err.value)
        assert "root:x" not in str(err.value) and "abc123" not in str(err.value)


def test_special_files_are_refused_without_reading_or_blocking(tmp_path):
    """In a child process with a deadline and a memory cap: a regression fails here instead of hanging the suite
    (a FIFO nobody writes to blocks open()) or eating the machine (/dev/zero has st_size 0 and never ends)."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    records = [
        {"path": path, "url": "http://127.0.0.1:9/never-fetched.jpg"}
        for path in (str(fifo), "/dev/zero", str(tmp_path))
    ]
    assert _reasons_in_child("ImageLoader(root='/')", records) == ["not_a_regular_file"] * 3


def _reasons_in_child(loader: str, records: list[dict]) -> list[str]:
    """The ImageError reason of each record, loaded by `loader` (Python source) in a child process with a deadline
    and a 2 GiB memory cap."""
    import subprocess
    import sys

    script = (
        "import json, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from rsyn.images import ImageError, ImageFolder, ImageLoader\n"
        f"loader = {loader}\n"
        "for record in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        loader.load(record)\n"
        "        print('loaded')\n"
        "    except ImageError as exc:\n"
        "        print(exc.reason)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(records)], capture_output=True, text=True, timeout=30
    )
    return proc.stdout.split() or [proc.stderr]


def test_local_reads_are_capped_and_wrong_types_are_refused(tmp_path):
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(300, 300))
    loader = ImageLoader(root=tmp_path, max_bytes=100)
    with pytest.raises(ImageError) as err:
        loader.load({"path": str(tmp_path / "big.jpg")})
    assert err.value.reason == "too_large"
    for record, reason in (
        ({"path": 5}, "bad_path"),
        ({"path": ["a.jpg"]}, "bad_path"),
        ({"url": {"href": "x"}}, "bad_url"),
        ({"path": "a\x00b"}, "bad_path"),
        ({}, "no_source"),
        ({"path": None, "url": None}, "no_source"),
    ):
        with pytest.raises(ImageError) as err:
            loader.load(record)
        assert err.value.reason == reason, record


def test_img2dataset_folder_reads_are_bounded(tmp_path):
    folder_path = tmp_path / "dl"
    write_img2dataset_tar(folder_path, 0, [("https://example.com/big.jpg", jpeg_bytes(400, 400), None)], True)
    shard = folder_path / "00001"  # files layout: KEY.jpg beside KEY.json
    shard.mkdir()
    (shard / "000010000.json").write_text(json.dumps({"url": "https://example.com/fifo.jpg"}))
    os.mkfifo(shard / "000010000.jpg")
    (shard / "000010001.json").write_text(json.dumps({"url": "https://example.com/out.jpg"}))
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes(120, 120))
    (shard / "000010001.jpg").symlink_to(outside)
    os.mkfifo(folder_path / "00002.tar")  # opening it to index it would block
    loader = f"ImageLoader(images=ImageFolder({str(folder_path)!r}, max_bytes=1000))"
    records = [{"url": f"https://example.com/{name}.jpg"} for name in ("big", "fifo", "out")]
    assert _reasons_in_child(loader, records) == ["too_large", "not_a_regular_file", "outside_root"]


@pytest.mark.parametrize("with_parquet", [False, True])
def test_img2dataset_tars_are_found_by_url(tmp_path, with_parquet):
    samples = [(f"https://example.com/{i}.jpg", jpeg_bytes(120 + i, 130), None) for i in range(5)]
    samples.append(("https://example.com/resized.jpg", jpeg_bytes(256, 256), (1024, 2000)))
    write_img2dataset_tar(
        tmp_path / "dl", 0, samples[:3], with_parquet, failed=[("https://example.com/dead.jpg", "HTTP Error 410: Gone")]
    )
    write_img2dataset_tar(tmp_path / "dl", 1, samples[3:], with_parquet)
    folder = ImageFolder(tmp_path / "dl")
    assert len(folder) == 6
    loader = ImageLoader(images=folder)
    for url, data, _ in samples[:5]:
        loaded = loader.load({"url": url})
        assert loaded.source == "images" and loaded.width == Image.open(io.BytesIO(data)).width
    # img2dataset resized this one: the size rule must see the original size
    loaded = loader.load({"url": "https://example.com/resized.jpg"})
    assert (loaded.width, loaded.height) == (1024, 2000)
    with pytest.raises(ImageError) as err:
        loader.load({"url": "https://example.com/dead.jpg"})
    assert err.value.reason == "not_downloaded"
    if with_parquet:
        assert "410" in err.value.detail
    folder.close()


def test_img2dataset_files_layout(tmp_path):
    shard = tmp_path / "dl" / "00000"
    shard.mkdir(parents=True)
    (shard / "000000001.jpg").write_bytes(jpeg_bytes(150, 140))
    (shard / "000000001.json").write_text(json.dumps({"url": "https://example.com/f.jpg"}))
    (shard / "000000002.json").write_text(json.dumps({"url": "https://example.com/no-image.jpg"}))
    folder = ImageFolder(tmp_path / "dl")
    assert ImageLoader(images=folder).load({"url": "https://example.com/f.jpg"}).width == 150
    assert "https://example.com/no-image.jpg" not in folder.index


def test_truncated_tar_keeps_what_it_can(tmp_path):
    samples = [(f"https://example.com/{i}.jpg", jpeg_bytes(150, 140), None) for i in range(4)]
    write_img2dataset_tar(tmp_path / "dl", 0, samples)
    tar = tmp_path / "dl" / "00000.tar"
    data = tar.read_bytes()
    with tarfile.open(tar) as whole:
        third = whole.getmember("000000002.jpg")
    cut = third.offset_data + third.size // 2  # killed mid-write, halfway through the third image
    tar.write_bytes(data[:cut])
    loader = ImageLoader(images=ImageFolder(tmp_path / "dl"))
    # the two samples written whole before the cut load; the cut one and the one after it were never downloaded
    for url, _, _ in samples[:2]:
        loaded = loader.load({"url": url})
        assert (loaded.width, loaded.height) == (150, 140) and loaded.image.size == (150, 140)
    for url, _, _ in samples[2:]:
        with pytest.raises(ImageError) as caught:
            loader.load({"url": url})
        assert caught.value.reason == "not_downloaded", url


def test_size_rule_thresholds_can_be_changed():
    assert size_rule(80, 80, min_side=64)[0] and not size_rule(80, 80)[0]
    assert size_rule(500, 100, max_aspect=5.0)[0] and not size_rule(500, 100)[0]
