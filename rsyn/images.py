"""Getting the pixels of an image record, whatever the web did to them.

Sources, tried in this order for each record:

1. `path`: a local file;
2. `--images DIR`: an img2dataset output folder (webdataset tars or plain
   files, with their parquet/json metadata), looked up by the record's `url`;
3. `url`: fetched over http(s) with timeouts, a byte cap, bounded retries.

Decoding survives truncated and corrupt files, non-image bytes, pixel bombs,
odd modes (CMYK, palette, alpha, 16-bit), animations (first frame) and EXIF
rotation, and returns an RGB image plus the size the picture really has.
Everything that goes wrong raises `ImageError(reason, detail)`; the stage turns
it into a counted drop. Nothing here imports torch.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from PIL import Image, ImageOps, UnidentifiedImageError

from rsyn.errors import CountedError, RsynError
from rsyn.image_limits import (  # noqa: F401 - re-exported: callers know them as rsyn.images.*
    DEFAULT_DEADLINE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    MAX_ASPECT,
    MAX_REDIRECTS,
    MIN_SIDE,
    size_rule,
)
from rsyn.localfiles import LocalFileError, allowed_root, read_local_file, resolve_under

METADATA_MAX_BYTES = 1 << 20  # an img2dataset KEY.json is a few hundred bytes
PARQUET_IMAGE_COLUMNS = ("jpg", "png", "webp")  # img2dataset's encode_format names the image column
PARQUET_CACHE_BYTES = 256 << 20  # row groups of images kept decoded: img2dataset writes them 100 rows each
EXPECTED_LAYOUTS = (
    "webdataset SHARD.tar (+ SHARD.parquet), parquet SHARD.parquet with a jpg/png/webp column, "
    "or files SHARD/KEY.jpg with SHARD/KEY.json"
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")

# We enforce our own pixel cap before decoding; PIL's warning about big images is noise then.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageError(CountedError):
    """An image that cannot be had; `reason` is the drop reason (fetch_failed, http_404, decode_failed...)."""


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    image: Image.Image  # RGB, upright; may be smaller than width x height (see decode_image's draft)
    width: int  # the picture's real size, upright
    height: int


_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None) -> Decoded:
    """Bytes -> upright RGB image and its real size. Raises ImageError.

    draft_side: when the image will be shrunk to about this many pixels on its
    shorter side anyway, let libjpeg decode at 1/2, 1/4 or 1/8 scale (never
    below draft_side): several times faster on large photos, the same pixels
    to within resampling noise.
    """
    if not data:
        raise ImageError("not_an_image", "empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        # never quote the bytes: they may be any file a hostile record pointed at
        raise ImageError("not_an_image", f"{_looks_like(data)}, not an image format PIL reads") from None
    except Exception as exc:  # a corrupt header can raise almost anything inside a PIL plugin
        raise ImageError("decode_failed", _short(exc)) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError("decode_failed", f"image has size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError("too_many_pixels", f"{width}x{height} is over the cap of {max_pixels:,} pixels")
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is common and harmless: ignore the rotation
        orientation = 1
    if orientation in _TRANSPOSED:
        width, height = height, width
    try:
        if draft_side and image.format == "JPEG":
            image.draft("RGB", (draft_side, draft_side))
        image.load()  # first frame of an animation; raises on truncated or corrupt data
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        image = to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", str(exc)) from None
    except Exception as exc:
        raise ImageError("decode_failed", _short(exc)) from None
    return Decoded(image, width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency over white, 16/32-bit and float scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        # transparent pixels keep whatever colour they stored (often black); show them on white,
        # as a browser would on a white page
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    top = float(np.nanmax(array)) if array.size else 0.0
    if top <= 255:
        scale = 1.0 if top > 1.0 or array.dtype.kind != "f" else 255.0
    elif top <= 65535:
        scale = 255.0 / 65535.0  # 16-bit data
    else:
        scale = 255.0 / top
    return np.clip(np.nan_to_num(array * scale), 0, 255).astype(np.uint8)


def _looks_like(data: bytes) -> str:
    """What non-image bytes seem to be, said without quoting them."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "HTML"
    if head.startswith((b"{", b"[")):
        return "JSON or other text"
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < 500:  # a cut multi-byte character at the end is still text
            return f"{len(data):,} bytes of binary data"
    return "text"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# --------------------------------------------------------------------------- http(s)


class Fetcher:
    """Thread-safe http(s) downloads (rsyn.net): one deadline for the whole download, retries included, a byte
    cap, bounded retries with backoff, up to MAX_REDIRECTS redirects, and by default no private addresses."""

    RETRY_STATUS = (429, 500, 502, 503, 504)
    # what rsyn.net calls a failure -> the drop reason
    REASONS = {"timeout": "fetch_timeout", "connect_failed": "fetch_failed", "transport": "fetch_failed"}

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        retries: int = DEFAULT_RETRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        user_agent: str = DEFAULT_USER_AGENT,
        pool_size: int = 16,
        allow_private: bool = False,
    ):
        from rsyn.net import BoundedHTTP

        self.deadline = deadline
        self.retries = retries
        self.max_bytes = max_bytes
        self.allow_private = allow_private
        self._http = BoundedHTTP(
            timeout=timeout,
            pool_size=pool_size,
            headers={"User-Agent": user_agent, "Accept": "image/avif,image/webp,image/*,*/*;q=0.8"},
        )

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, or ImageError (http_NNN, fetch_timeout, fetch_failed, too_large, bad_url,
        private_address, too_many_redirects, bad_redirect)."""
        from rsyn.net import HTTPFailure

        until = time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                reply = self._http.request(
                    "GET",
                    url,
                    until=until,
                    max_bytes=self.max_bytes,
                    max_redirects=MAX_REDIRECTS,
                    allow_private=self.allow_private,
                )
            except HTTPFailure as exc:
                reason = self.REASONS.get(exc.reason, exc.reason)
                if reason == "fetch_timeout" and time.monotonic() >= until:
                    raise ImageError(reason, f"download took more than {self.deadline:g}s") from None
                if last or reason not in ("fetch_timeout", "fetch_failed") or not self._back_off(attempt, until):
                    raise ImageError(reason, exc.detail) from None
                continue
            if reply.status in self.RETRY_STATUS and not last and self._back_off(attempt, until):
                continue
            if not 200 <= reply.status < 300:
                raise ImageError(f"http_{reply.status}", url[:200])
            return reply.body
        raise AssertionError("unreachable")

    @staticmethod
    def _back_off(attempt: int, until: float) -> bool:
        """Sleep before the next attempt; False when the deadline leaves no time for one."""
        pause = min(4.0, 0.5 * 2**attempt)
        if time.monotonic() + pause >= until:
            return False
        time.sleep(pause)
        return True

    def close(self) -> None:
        self._http.close()


# --------------------------------------------------------------------------- img2dataset folders


@dataclass(frozen=True)
class _Stored:
    source: int  # index into ImageFolder.sources (a tar or parquet file), -1 for plain files
    location: str | int | tuple[int, int]  # file path, byte offset in the tar, or (row group, row) in the parquet
    size: int  # -1: not known before reading (parquet)
    original_width: int | None = None  # img2dataset's size before it resized, when it says
    original_height: int | None = None


class ImageFolder:
    """An img2dataset output folder, indexed by URL, in any of its output formats: `*.tar` (webdataset),
    `*.parquet` with the image bytes in a column named by the encode format (parquet), or `SHARD/KEY.jpg` (files).

    The URL of each image comes from the shard's parquet (`url`, `key`,
    `status`, `error_message` columns) when there is one, else from the
    `KEY.json` next to the image. Images are read straight from the tar at
    their offset (os.pread, safe from many threads); from a parquet, a row group
    at a time (kept in a bounded cache: records usually come in the order
    img2dataset downloaded them). Failed downloads listed in
    the parquet are remembered so the drop can say why. Only regular files are
    read (a FIFO named `x.tar` would block), none larger than `max_bytes`, and
    plain files only inside the folder.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"--images {root}: no such folder")
        self.real_root = allowed_root(self.root)
        self.max_bytes = max_bytes
        self.sources: list[str] = []
        self.index: dict[str, _Stored] = {}
        self.failed: dict[str, str] = {}  # url -> img2dataset's error message
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        self._parquet: dict[int, tuple[object, str]] = {}  # source -> (pq.ParquetFile, image column)
        self._row_groups: dict[tuple[int, int], list] = {}  # (source, row group) -> image bytes, oldest first
        self._cached_bytes = 0
        self._parquet_lock = threading.Lock()
        self._build()

    def __len__(self) -> int:
        return len(self.index)

    # ---- index
    def _build(self) -> None:
        for tar_path in sorted(self.root.rglob("*.tar")):
            if tar_path.is_file():
                self._index_tar(tar_path)
        for parquet_path in sorted(self.root.rglob("*.parquet")):
            if parquet_path.is_file() and not parquet_path.with_suffix(".tar").exists():
                self._index_parquet(parquet_path)
        for json_path in sorted(self.root.rglob("*.json")):
            if json_path.is_file():
                self._index_file(json_path)

    def _index_parquet(self, path: Path) -> None:
        """img2dataset's parquet output_format: key, url, status... and the image bytes in one column."""
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
            names = set(parquet.schema_arrow.names)
        except Exception:  # not a parquet file, or a damaged one: not part of the folder's images
            return
        column = next((c for c in PARQUET_IMAGE_COLUMNS if c in names), None)
        if column is None or "url" not in names:
            return  # a files-format shard's metadata (its images are SHARD/KEY.jpg), or some other table
        wanted = [c for c in ("url", "status", "error_message", "original_width", "original_height") if c in names]
        source = len(self.sources)
        self.sources.append(str(path))
        self._parquet[source] = (parquet, column)
        try:
            for group in range(parquet.num_row_groups):
                rows = parquet.read_row_group(group, columns=wanted).to_pydict()
                for row in range(len(rows["url"])):
                    url = rows["url"][row]
                    if not isinstance(url, str):
                        continue
                    status = rows["status"][row] if "status" in rows else "success"
                    if status not in (None, "success"):
                        message = rows["error_message"][row] if "error_message" in rows else None
                        self.failed.setdefault(url, message or str(status))
                        continue
                    self.index.setdefault(
                        url,
                        _Stored(
                            source,
                            (group, row),
                            -1,
                            _int_or_none(rows["original_width"][row]) if "original_width" in rows else None,
                            _int_or_none(rows["original_height"][row]) if "original_height" in rows else None,
                        ),
                    )
        except Exception:  # a truncated shard: keep the row groups before the cut
            return

    def _parquet_image(self, stored: _Stored) -> bytes:
        group, row = stored.location
        key = (stored.source, group)
        with self._parquet_lock:  # one reader per ParquetFile at a time; the cache is shared
            images = self._row_groups.pop(key, None)
            if images is None:
                parquet, column = self._parquet[stored.source]
                images = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
                self._cached_bytes += sum(len(b) for b in images if b)
            self._row_groups[key] = images  # most recently used last
            while self._cached_bytes > PARQUET_CACHE_BYTES and len(self._row_groups) > 1:
                oldest = next(iter(self._row_groups))
                self._cached_bytes -= sum(len(b) for b in self._row_groups.pop(oldest) if b)
        data = images[row] if row < len(images) else None
        if not data:
            raise ImageError("read_failed", "the parquet row holds no image")
        return data

    def _parquet_meta(self, shard: Path) -> dict[str, dict] | None:
        """key -> {url, status, error_message, original_width, original_height} from SHARD.parquet."""
        parquet = shard.with_suffix(".parquet")
        if not parquet.is_file():
            return None
        import pyarrow.parquet as pq

        try:
            names = set(pq.read_schema(parquet).names)
            if not {"key", "url"} <= names:
                return None
            wanted = [
                c for c in ("key", "url", "status", "error_message", "original_width", "original_height") if c in names
            ]
            table = pq.read_table(parquet, columns=wanted).to_pydict()
        except Exception:  # an unreadable parquet: fall back to the json files
            return None
        rows = {}
        for i, key in enumerate(table["key"]):
            row = {c: table[c][i] for c in wanted}
            rows[str(key)] = row
            if row.get("status") not in (None, "success") and row.get("url"):
                self.failed.setdefault(row["url"], row.get("error_message") or str(row.get("status")))
        return rows

    def _index_tar(self, tar_path: Path) -> None:
        meta = self._parquet_meta(tar_path)
        source = len(self.sources)
        self.sources.append(str(tar_path))
        images: dict[str, tarfile.TarInfo] = {}
        jsons: dict[str, tarfile.TarInfo] = {}
        try:
            tar = tarfile.open(tar_path, "r:")
        except (tarfile.TarError, OSError):
            return
        with tar:
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    stem, suffix = os.path.splitext(member.name)
                    suffix = suffix.lower()
                    if suffix in IMAGE_SUFFIXES:
                        images[stem] = member
                    elif suffix == ".json" and meta is None:
                        jsons[stem] = member
            except (tarfile.TarError, OSError):
                pass  # a truncated last shard (img2dataset killed mid-write): keep the members before the cut
            json_meta = {}
            for stem, member in jsons.items():  # small files, read while the tar is open
                if stem in images and member.size <= METADATA_MAX_BYTES:
                    try:
                        json_meta[stem] = orjson.loads(tar.extractfile(member).read())
                    except (orjson.JSONDecodeError, OSError, tarfile.TarError):
                        continue
        size = tar_path.stat().st_size
        for stem, member in images.items():
            key = os.path.basename(stem)
            info = (meta or {}).get(key) if meta is not None else json_meta.get(stem)
            url = _url_of(info)
            if url is None:
                continue
            if member.offset_data + member.size > size:
                continue  # cut off by the truncation
            self.index[url] = _Stored(
                source,
                member.offset_data,
                member.size,
                _int_or_none(info.get("original_width")),
                _int_or_none(info.get("original_height")),
            )

    def _index_file(self, json_path: Path) -> None:
        # plain-files layout: SHARD/KEY.json beside SHARD/KEY.jpg (tars were handled above)
        stem = json_path.with_suffix("")
        image_path = next((stem.with_suffix(s) for s in IMAGE_SUFFIXES if stem.with_suffix(s).exists()), None)
        if image_path is None:
            return
        try:
            info = orjson.loads(read_local_file(str(json_path), root=self.real_root, max_bytes=METADATA_MAX_BYTES))
        except (orjson.JSONDecodeError, LocalFileError):
            return
        url = _url_of(info)
        if url is not None:
            self.index.setdefault(
                url,
                _Stored(
                    -1,
                    str(image_path),
                    image_path.stat().st_size,
                    _int_or_none(info.get("original_width")),
                    _int_or_none(info.get("original_height")),
                ),
            )

    # ---- lookup
    def get(self, url: str) -> tuple[bytes, _Stored]:
        stored = self.index.get(url)
        if stored is None:
            detail = self.failed.get(url, "URL not in the --images folder")
            raise ImageError("not_downloaded", detail)
        try:
            if stored.source < 0:
                return read_local_file(stored.location, root=self.real_root, max_bytes=self.max_bytes), stored
            if stored.source in self._parquet:
                data = self._parquet_image(stored)
                if len(data) > self.max_bytes:
                    raise ImageError("too_large", f"{len(data):,} bytes > {self.max_bytes:,}")
                return data, stored
            if stored.size > self.max_bytes:
                raise ImageError("too_large", f"{stored.size:,} bytes > {self.max_bytes:,}")
            data = os.pread(self._fd(stored.source), stored.size, stored.location)
        except LocalFileError as exc:
            raise ImageError(exc.reason, exc.message) from None
        except OSError as exc:
            raise ImageError("read_failed", _short(exc)) from None
        except ImageError:
            raise
        except Exception as exc:  # pyarrow's errors on a damaged parquet (ArrowInvalid is not an OSError)
            raise ImageError("read_failed", _short(exc)) from None
        if len(data) != stored.size:
            raise ImageError("read_failed", "the tar is shorter than its index says")
        return data, stored

    def _fd(self, source: int) -> int:
        fd = self._fds.get(source)
        if fd is None:
            with self._lock:
                fd = self._fds.get(source)
                if fd is None:
                    fd = self._fds[source] = os.open(self.sources[source], os.O_RDONLY)
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
        with self._parquet_lock:
            self._row_groups.clear()
            self._cached_bytes = 0


def open_image_folder(
    root: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, note: Callable[[str], None] | None = None
) -> ImageFolder:
    """The --images folder of every command that takes one (embed, caption, pack), announced through `note`.

    Refused (RsynError, one line) when it indexes no image and lists no failed download: a wrong folder
    would otherwise drop every record as not_downloaded.
    """
    try:
        folder = ImageFolder(root, max_bytes)
    except FileNotFoundError as exc:
        raise RsynError(str(exc)) from None
    if not folder.index and not folder.failed:
        folder.close()
        raise RsynError(
            f"--images {root}: no img2dataset output found in it (expected {EXPECTED_LAYOUTS}, each image with its url)"
        )
    if note is not None:
        note(f"--images {root}: {len(folder):,} images indexed by URL")
    return folder


def _url_of(info) -> str | None:
    """The image URL an img2dataset KEY.json names (`url`), or an rsyn pack KEY.json (`raw_image_url`)."""
    if not isinstance(info, dict):
        return None
    url = info.get("url", info.get("raw_image_url"))
    return url if isinstance(url, str) else None


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- one record -> pixels


@dataclass
class Loaded:
    image: Image.Image  # upright RGB
    width: int  # the picture's real size (before any img2dataset resize, when known)
    height: int
    source: str  # "path", "images" or "url"


class ImageLoader:
    """Record -> Loaded, from `path`, the --images folder or `url`. Thread-safe; raises ImageError.

    A `path` is read only under `root` (default: the current directory), only
    as a regular file and at most `max_bytes` of it (rsyn.localfiles).
    """

    def __init__(
        self,
        images: ImageFolder | None = None,
        fetcher: Fetcher | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        draft_side: int | None = None,
        root: str | os.PathLike | None = None,
    ):
        self.images = images
        self.fetcher = fetcher
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.draft_side = draft_side
        self.root = allowed_root(root)

    def load(self, record: dict) -> Loaded:
        data, source, original = self.read_bytes(record)
        decoded = decode_image(data, self.max_pixels, self.draft_side)
        width, height = decoded.width, decoded.height
        if original and original[0] and original[1]:
            width, height = original
        return Loaded(decoded.image, width, height, source)

    def read_bytes(self, record: dict) -> tuple[bytes, str, tuple | None]:
        """(bytes, source, img2dataset's original (width, height) or None) of the record's image."""
        path = record.get("path")
        url = record.get("url")
        if url is not None and not isinstance(url, str):
            raise ImageError("bad_url", f"`url` is {_json_type(url)}, not a string")
        if path is not None and not isinstance(path, str):
            raise ImageError("bad_path", f"`path` is {_json_type(path)}, not a string")
        if path:
            try:
                real = resolve_under(path, self.root)  # outside the root: refused even when a url follows
                # a missing file falls back to the url; anything else at `path` is read (or refused) as it is
                if os.path.lexists(real) or not url:
                    return read_local_file(path, root=self.root, max_bytes=self.max_bytes), "path", None
            except LocalFileError as exc:
                raise ImageError(exc.reason, exc.message) from None
        if not url:
            raise ImageError("no_source", "the record has no url or path")
        if self.images is not None:
            data, stored = self.images.get(url)
            return data, "images", (stored.original_width, stored.original_height)
        if not url.startswith(("http://", "https://")):
            raise ImageError("unsupported_url", url[:200])
        if self.fetcher is None:
            raise ImageError("fetch_failed", "fetching is switched off")
        return self.fetcher.fetch(url), "url", None
