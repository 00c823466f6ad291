"""A stand-in for an rsyn stage in the runner tests: fails or hangs on demand, else writes its outputs.

    FAKE_STATE=DIR FAKE_FAIL=N FAKE_FAIL_SHARD=K/N python runner_fake_stage.py extract ... -o OUT

The first N attempts of the part given --shard FAKE_FAIL_SHARD exit 3 (attempts are counted in
FAKE_STATE). With FAKE_HANG=1 it leaves a temporary beside its output and one in TMPDIR, as a
killed rsyn command would, writes its pid to FAKE_STATE/pid and sleeps.
"""

import os
import sys
import time
from pathlib import Path

args = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
state.mkdir(parents=True, exist_ok=True)
shard = args[args.index("--shard") + 1] if "--shard" in args else "-"
outputs = [args[i + 1] for i, a in enumerate(args) if a in ("-o", "--save-word-counts", "--stats")]
if os.environ.get("FAKE_HANG") and shard == os.environ.get("FAKE_FAIL_SHARD"):
    out = Path(outputs[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f".{out.name}.rsyn-tmp-{os.getpid()}").write_bytes(b"half")
    (Path(os.environ["TMPDIR"]) / "rsyn-dedup-spill").mkdir()
    (state / "pid").write_text(str(os.getpid()))
    time.sleep(600)
if os.environ.get("FAKE_SLEEP"):  # record the GPUs it was given and when it ran
    began = time.time()
    time.sleep(float(os.environ["FAKE_SLEEP"]))
    (state / f"ran-{shard.replace('/', '-')}").write_text(
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')} {began} {time.time()}"
    )
counter = state / f"attempts-{shard.replace('/', '-')}"
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
print(f"fake stage: shard {shard} attempt {n}", file=sys.stderr)
if shard == os.environ.get("FAKE_FAIL_SHARD") and n <= int(os.environ.get("FAKE_FAIL", "0")):
    print("fake stage: failing on purpose", file=sys.stderr)
    sys.exit(3)
for path in outputs:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f'{{"in": 10, "out": 10, "shard": "{shard}"}}\n')
