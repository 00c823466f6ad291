"""Fail at once, with one line, when a Hugging Face model id cannot be had: before transformers spends a minute on
retries. A model that is on disk (a local directory, or an id already in the Hugging Face cache) is never checked
against the network."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

PROBE_SECONDS = 5.0  # one TCP connect to the hub, DNS included; the retries it replaces take over a minute


def looks_like_hub_id(name: str) -> bool:
    """'name' or 'org/name' that is not a file or folder here (a path with more slashes is a missing folder)."""
    if not name or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return False
    return not Path(name).expanduser().exists()


def require_hub_model(name: str, what: str, hint: str, probe_file: str = "config.json") -> None:
    """Raise RsynError when `name` is a Hub id that is neither cached nor downloadable now.

    Offline (HF_HUB_OFFLINE=1) only the cache counts; online, a hub that cannot be
    reached (no DNS, no route, refused) fails the same way instead of being retried.
    """
    if not looks_like_hub_id(name):
        return
    from huggingface_hub import constants, try_to_load_from_cache

    from rsyn.errors import RsynError

    try:
        cached = try_to_load_from_cache(name, probe_file)
    except ValueError:  # not a valid repo id: let the loader say so
        return
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise RsynError(
            f"cannot load {what} {name!r} (Hugging Face id): not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; {hint}"
        )
    unreachable = hub_unreachable(constants.ENDPOINT)
    if unreachable:
        raise RsynError(
            f"cannot load {what} {name!r} (Hugging Face id): not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {constants.ENDPOINT} cannot be reached ({unreachable}); "
            f"{hint}"
        )


def hub_unreachable(endpoint: str, timeout: float = PROBE_SECONDS) -> str | None:
    """Why a TCP connection to the hub fails (short), or None when it opens (or a proxy decides reachability)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None  # a direct connection says nothing about the proxy's
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(exc.strerror or type(exc).__name__)

    # in a thread: name resolution (getaddrinfo) has no timeout of its own
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer within {timeout:g}s"
    return result[0]
