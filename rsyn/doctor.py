"""`rsyn doctor`: what this machine offers rsyn, on one screen (or as JSON for scripts).

Versions come from the installed packages' metadata where that is enough; torch and faiss are imported to
learn their CUDA build and GPU support. GPUs are read from nvidia-smi or /proc/driver/nvidia first (no CUDA
context is created); torch.cuda is asked only when neither exists. vLLM is imported in a child process with
a time limit, since importing it can take long or fail on a machine without CUDA. Nothing here raises: a
check that fails reports why.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys

PACKAGES = ("torch", "faiss", "open_clip_torch", "transformers", "timm", "spacy", "vllm", "numpy", "pyarrow")
_DISTRIBUTIONS = {"faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")}
VLLM_IMPORT_SECONDS = 60


def _version(package: str) -> str | None:
    for name in _DISTRIBUTIONS.get(package, (package,)):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _torch() -> dict:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    try:
        import torch
    except Exception as exc:  # a broken install is a finding, not a crash
        return {"installed": True, "error": f"import failed: {type(exc).__name__}"}
    return {
        "installed": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }


def _faiss() -> dict:
    if importlib.util.find_spec("faiss") is None:
        return {"installed": False}
    try:
        import faiss
    except Exception as exc:
        return {"installed": True, "error": f"import failed: {type(exc).__name__}"}
    gpu_build = hasattr(faiss, "StandardGpuResources")
    gpus = faiss.get_num_gpus() if gpu_build and hasattr(faiss, "get_num_gpus") else 0
    return {
        "installed": True,
        "version": getattr(faiss, "__version__", _version("faiss")),
        "gpu_build": gpu_build,
        "gpus": gpus,
    }


def _vllm() -> dict:
    version = _version("vllm")
    if version is None or importlib.util.find_spec("vllm") is None:
        return {"installed": False}
    try:
        proc = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, timeout=VLLM_IMPORT_SECONDS)
    except subprocess.TimeoutExpired:
        return {
            "installed": True,
            "version": version,
            "imports": False,
            "error": f"import took over {VLLM_IMPORT_SECONDS} s",
        }
    result = {"installed": True, "version": version, "imports": proc.returncode == 0}
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        result["error"] = last[0][:200]
    return result


def _spacy() -> dict:
    version = _version("spacy")
    if version is None:
        return {"installed": False}
    from rsyn.filters import SPACY_MODELS

    found = [name for name in SPACY_MODELS if importlib.util.find_spec(name) is not None]
    return {"installed": True, "version": version, "models": found, "cat_model": found[0] if found else None}


def _gpus() -> dict:
    """Visible NVIDIA GPUs: nvidia-smi, else /proc/driver/nvidia, else torch.cuda (imported only then)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            proc = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if proc.returncode == 0:
                gpus = []
                for line in proc.stdout.strip().splitlines():
                    name, memory, driver = (part.strip() for part in line.split(",", 2))
                    gpus.append({"name": name, "memory": memory, "driver": driver})
                return {"source": "nvidia-smi", "gpus": gpus}
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass
    infos = sorted(glob.glob("/proc/driver/nvidia/gpus/*/information"))
    if infos:
        gpus = []
        for path in infos:
            fields = dict(line.split(":", 1) for line in open(path, errors="replace") if ":" in line)
            gpus.append({"name": fields.get("Model", "?").strip()})
        return {"source": "/proc/driver/nvidia", "gpus": gpus}
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or importlib.util.find_spec("torch") is None:
        return {"source": None, "gpus": []}
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return {"source": "torch.cuda", "gpus": [{"name": torch.cuda.get_device_name(i)} for i in range(n)]}
    except Exception:
        return {"source": None, "gpus": []}


def _hf_cache() -> dict:
    try:
        from huggingface_hub import constants, scan_cache_dir

        cache = constants.HF_HUB_CACHE
        if not os.path.isdir(cache):
            return {"path": cache, "models": []}
        info = scan_cache_dir(cache)
        models = sorted((repo.repo_id, repo.size_on_disk) for repo in info.repos if repo.repo_type == "model")
        return {"path": cache, "models": [{"id": repo_id, "bytes": size} for repo_id, size in models]}
    except Exception as exc:
        return {"path": None, "models": [], "error": type(exc).__name__}


def _memory() -> dict:
    fields = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return {"total_bytes": fields.get("MemTotal"), "available_bytes": fields.get("MemAvailable")}


def _disk(path: str) -> dict:
    usage = shutil.disk_usage(path)
    return {"path": path, "free_bytes": usage.free, "total_bytes": usage.total}


def diagnose() -> dict:
    from rsyn import __version__

    return {
        "rsyn": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": _torch(),
        "gpus": _gpus(),
        "faiss": _faiss(),
        "vllm": _vllm(),
        "spacy": _spacy(),
        "hf_cache": _hf_cache(),
        "memory": _memory(),
        "disk": _disk(os.getcwd()),
    }


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"


def render(report: dict) -> str:
    """The report on one screen."""
    packages = report["packages"]
    torch, faiss, vllm, spacy, gpus = report["torch"], report["faiss"], report["vllm"], report["spacy"], report["gpus"]

    def have(name: str) -> str:
        return packages[name] or "not installed"

    lines = [
        f"rsyn {report['rsyn']}  python {report['python']['version']}  ({report['python']['executable']})",
        f"platform      {report['platform']}, {report['cpus']} CPUs",
    ]
    if torch.get("installed"):
        build = f"CUDA {torch['cuda_build']}" if torch.get("cuda_build") else "CPU-only build"
        lines.append(f"torch         {torch.get('version', '?')} ({torch.get('error') or build})")
    else:
        lines.append("torch         not installed")
    if gpus["gpus"]:
        names = ", ".join(g["name"] + (f" {g['memory']}" if g.get("memory") else "") for g in gpus["gpus"])
        lines.append(f"GPUs          {len(gpus['gpus'])}: {names} (from {gpus['source']})")
    else:
        lines.append("GPUs          none visible (CPU only)")
    if faiss.get("installed"):
        gpu = (
            f"GPU build, {faiss['gpus']} GPU(s) usable"
            if faiss.get("gpu_build")
            else "CPU build: k-means and search run on CPU"
        )
        lines.append(f"faiss         {faiss.get('version', '?')} ({faiss.get('error') or gpu})")
    else:
        lines.append("faiss         not installed")
    lines.append(f"open_clip     {have('open_clip_torch')}")
    lines.append(f"transformers  {have('transformers')}   timm {have('timm')}")
    if vllm.get("installed"):
        state = "imports" if vllm.get("imports") else f"does not import: {vllm.get('error')}"
        lines.append(f"vllm          {vllm['version']} ({state})")
    else:
        lines.append("vllm          not installed (caption --llm-backend hf works without it)")
    if spacy.get("installed"):
        model = spacy["cat_model"] or "none: install en_core_web_sm, or extract with --disable cat"
        lines.append(f"spaCy         {spacy['version']}, CAT model: {model}")
    else:
        lines.append("spaCy         not installed (extract needs it for CAT, or --disable cat)")
    cache = report["hf_cache"]
    models = cache["models"]
    shown = ", ".join(f"{m['id']} ({_size(m['bytes'])})" for m in models[:6])
    more = f", and {len(models) - 6} more" if len(models) > 6 else ""
    lines.append(f"HF cache      {cache['path']}: {len(models)} model(s)" + (f": {shown}{more}" if models else ""))
    memory, disk = report["memory"], report["disk"]
    lines.append(f"memory        {_size(memory['available_bytes'])} available of {_size(memory['total_bytes'])}")
    lines.append(f"disk          {_size(disk['free_bytes'])} free of {_size(disk['total_bytes'])} at {disk['path']}")
    return "\n".join(lines)
