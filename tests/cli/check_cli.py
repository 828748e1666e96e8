#!/usr/bin/env python3
"""Checks of the `nsa` CLI that need more than an exit code (stdlib only).

  check_cli.py usage NSA   argument errors: exit code 2 and a clear message on stderr
  check_cli.py json  NSA   `nsa bench --json --plot` on CPU: JSON parses and has the fields; SVG is an SVG
"""
import json
import os
import subprocess
import sys
import tempfile


def run(nsa, *args):
    p = subprocess.run([nsa, *args], capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def check_usage(nsa):
    tiny = ["--device", "cpu", "--batch", "2", "--context", "100", "--layers", "1", "--no-progress"]
    cases = [
        ([], "A subcommand is required"),
        (["frobnicate"], "frobnicate"),
        (["bench", "--bogus"], "--bogus"),
        (["bench", "--batch", "0"], "--batch"),
        (["bench", "--batch", "abc"], "--batch"),
        (["bench", "--scenario", "training"], "--scenario"),
        (["bench", "--device", "gpu"], "--device"),
        (["bench", "--draft-tokens", "5"], "--draft-tokens"),  # the indexer takes at most 4 rows per request
        (["bench", "--json"], "--json"),
        (["bench", "--plot", "steps.png", *tiny], ".svg"),
        (["bench", "--scenario", "prefill", "--draft-steps", "5", *tiny], "--draft-steps"),
        (["selftest", "--seconds", "-1"], "--seconds"),
        (["info", "extra"], "extra"),
    ]
    for args, needle in cases:
        rc, out, err = run(nsa, *args)
        if rc != 2:
            fail(f"nsa {' '.join(args)}: exit code {rc}, expected 2\nstdout: {out}\nstderr: {err}")
        if needle not in err:
            fail(f"nsa {' '.join(args)}: stderr does not mention {needle!r}:\n{err}")
        print(f"ok: nsa {' '.join(args)} -> 2: {err.strip().splitlines()[0]}")
    for args in (["--help"], ["bench", "--help"], ["--version"]):
        rc, out, _ = run(nsa, *args)
        if rc != 0 or not out:
            fail(f"nsa {' '.join(args)}: exit code {rc}, expected 0 with output")
    print("ok: --help and --version exit 0")


def check_json(nsa):
    with tempfile.TemporaryDirectory() as tmp:
        jpath, svg = os.path.join(tmp, "bench.json"), os.path.join(tmp, "steps.svg")
        rc, out, err = run(nsa, "bench", "--device", "cpu", "--batch", "4", "--context", "256", "--layers", "2",
                           "--no-progress", "--json", jpath, "--plot", svg)
        if rc != 0:
            fail(f"bench exited {rc}\n{out}\n{err}")
        if not out.startswith("nsa bench on the CPU backend"):
            fail(f"first line does not say the CPU backend runs: {out.splitlines()[0]!r}")
        with open(jpath) as f:
            doc = json.load(f)
        for key in ("tool", "version", "scenario", "backend", "device", "config", "limits", "verified", "parts",
                    "step", "summary", "sweep"):
            if key not in doc:
                fail(f"JSON lacks {key!r}")
        if doc["backend"] != "cpu" or doc["verified"] is not True or doc["scenario"] != "decode":
            fail(f"unexpected backend/verified/scenario: {doc['backend']} {doc['verified']} {doc['scenario']}")
        for key in ("batch", "context", "layers", "draft_steps", "draft_tokens", "topk", "page_size"):
            if key not in doc["config"]:
                fail(f"config lacks {key!r}")
        if doc["config"]["batch"] != 4 or doc["config"]["layers"] != 2:
            fail("config does not echo the options")
        names = [p["name"] for p in doc["parts"]]
        if names != ["metadata", "indexer K store", "indexer"]:
            fail(f"parts: {names}")
        pieces = [p["role"] for p in doc["parts"][2].get("pieces", [])]
        if pieces != ["baseline logits", "baseline top-k"]:
            fail(f"indexer pieces: {pieces}")
        for p in doc["parts"][2]["pieces"]:
            if not p["gpu_us"] > 0 or not p["launches"] > 0:
                fail(f"indexer/{p['role']}: non-positive time or launches")
        for part in doc["parts"]:
            roles = [p["role"] for p in part["paths"]]
            if roles[0] != "baseline" or roles[-1] != "ours":
                fail(f"{part['name']}: paths {roles}")
            for p in part["paths"]:
                for key in ("gpu_us", "host_us", "launches", "gbps", "fraction_of_copy_bw", "speedup_gpu", "speedup_host"):
                    if key not in p:
                        fail(f"{part['name']}/{p['role']} lacks {key!r}")
                if not p["gpu_us"] > 0 or not p["launches"] > 0:
                    fail(f"{part['name']}/{p['role']}: non-positive time or launches")
        meta = doc["parts"][0]["paths"]
        if meta[-1]["launches"] != 3 or meta[0]["launches"] <= meta[-1]["launches"]:
            fail(f"metadata launches: baseline {meta[0]['launches']}, ours {meta[-1]['launches']}")
        for key in ("baseline_gpu_us", "ours_gpu_us", "baseline_host_us", "ours_host_us", "baseline_launches",
                    "ours_launches", "floor_bytes", "floor_us"):
            if key not in doc["step"]:
                fail(f"step lacks {key!r}")
        for key in ("metadata_gpu_speedup", "metadata_host_speedup", "step_gpu_speedup", "floor_us",
                    "step_ours_over_floor", "step_baseline_over_floor"):
            if key not in doc["summary"]:
                fail(f"summary lacks {key!r}")
        # 132 B per visible cached token per layer: L_b = prefix + N, prefix in [3/4 context, context].
        cfg = doc["config"]
        per_layer = doc["step"]["floor_bytes"] / 132 / cfg["layers"] / cfg["batch"]
        if not 256 * 3 // 4 + cfg["draft_tokens"] <= per_layer <= 256 + cfg["draft_tokens"]:
            fail(f"floor bytes: {per_layer} tokens per request per layer")
        if not all(r.get("floor_us", 0) > 0 for r in doc["sweep"]):
            fail("sweep rows lack floor_us")
        if [r["batch"] for r in doc["sweep"]] != [1, 2, 4, 8]:
            fail(f"sweep batches {[r['batch'] for r in doc['sweep']]}")
        with open(svg) as f:
            text = f.read()
        if not text.startswith("<svg") or "</svg>" not in text or "baseline" not in text or "<polyline" not in text:
            fail("the plot is not a complete SVG with the two series")
        if "cache read floor" not in text or "Parts of the step" not in text or "baseline top-k" not in text:
            fail("the plot lacks the floor series or the parts chart")
    print("ok: JSON fields present, SVG written")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("usage", "json"):
        print(__doc__)
        sys.exit(2)
    {"usage": check_usage, "json": check_json}[sys.argv[1]](sys.argv[2])
