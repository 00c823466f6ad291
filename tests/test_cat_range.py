"""`rsyn cat --range K/N`: contiguous ranges of one stream, so that N split passes line up with N files."""

import json
from pathlib import Path

from conftest import rsyn_here


def records(path: Path) -> list[str]:
    from rsyn.stream import iter_line_blocks

    return [line.decode() for _, block in iter_line_blocks(str(path)) for line in block if line.strip()]


def test_ranges_are_contiguous_nearly_equal_and_concatenate_to_the_input(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"id": f"a{i}", "kind": "text", "text": "x"}) + "\n" for i in range(7)) + "\n")
    b.write_text(
        "".join(json.dumps({"id": f"b{i}", "kind": "text", "text": "y"}) + "\n" for i in range(4)) + "not json\n"
    )
    parts = []
    for k in range(3):
        out = tmp_path / f"part-{k}.jsonl.zst"
        proc = rsyn_here(
            "cat",
            a,
            b,
            "--range",
            f"{k}/3",
            "--on-error",
            "skip",
            "--stats",
            tmp_path / f"s{k}.json",
            "-q",
            "-o",
            out,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        parts.append(records(out))
    # 12 non-blank lines (11 records, one bad line at position 11): ranges [0,4) [4,8) [8,12)
    ids = [[json.loads(line)["id"] for line in part] for part in parts]
    assert ids == [["a0", "a1", "a2", "a3"], ["a4", "a5", "a6", "b0"], ["b1", "b2", "b3"]]
    # the bad line is reported by the one part whose range holds it
    errors = [json.loads((tmp_path / f"s{k}.json").read_text()).get("errors", {}) for k in range(3)]
    assert [sum(e.values()) if isinstance(e, dict) else e for e in errors] == [0, 0, 1]


def test_range_refuses_shard_and_stdin(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": "1"}\n')
    proc = rsyn_here("cat", src, "--range", "0/2", "--shard", "0/2", text=True)
    assert (
        proc.returncode == 2
        and proc.stderr == "rsyn: error: --range and --shard are two ways to slice the input: give one\n"
    )
    proc = rsyn_here("cat", "-", "--range", "0/2", input=b'{"id": "1"}\n', text=True)
    assert proc.returncode == 2 and "give files, not stdin" in proc.stderr and "Traceback" not in proc.stderr
    proc = rsyn_here("cat", src, "--range", "2/2", text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
