#!/usr/bin/env python3
"""Writes docs/gpu-report.md from the results folder of scripts/gpu-check.sh,
or from several: the folders of gpu-check commands run one after another on
one machine, in that order (a device command returns its own folder):

    gpu_report.py RESULTS [MORE_RESULTS ...] > docs/gpu-report.md

Only this script writes the report: every number in it comes from a log or
JSON file that the check produced in the same run.
"""
import glob
import json
import os
import re
import sys


def read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def without_results_folder(text):
    """A bench's or the CLI's "wrote <file> [...]" lines name the file only: the folder is
    the GPU machine's (the report lives in the repository, which must not
    point at paths of one machine)."""
    return re.sub(r"^wrote (?:\S*/)?([^/\s]+)(?=\s|$)", r"wrote <results>/\1", text, flags=re.M)


class Results:
    """The results folders of one or more gpu-check.sh commands, run one after
    another (each device command returns its own folder; facts.txt's gpu_uuid
    says which machine ran it). A
    file is read from the last folder that has it, except the C++ test
    results (a table per command that ran the binary); steps and skipped
    tests are concatenated in command order."""

    def __init__(self, folders):
        self.folders = folders

    def path(self, name):
        for folder in reversed(self.folders):
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
        return os.path.join(self.folders[-1], name)

    def read(self, name, default=""):
        return read(self.path(name), default)

    def read_all(self, name):
        return "".join(read(os.path.join(folder, name)) for folder in self.folders)

    def glob_every(self, pattern):
        """(file name, [(command index, path), ...]) for every file matching pattern,
        by name, with each folder that holds it, in command order."""
        found = {}
        for i, folder in enumerate(self.folders):
            for p in sorted(glob.glob(os.path.join(folder, pattern))):
                found.setdefault(os.path.basename(p), []).append((i, p))
        return sorted(found.items())

    def glob(self, pattern):
        """The path of every file matching pattern, by name, from the last folder that has it."""
        return [runs[-1][1] for _, runs in self.glob_every(pattern)]

    def facts(self):
        """Per folder, its facts.txt as a dict."""
        return [dict(line.split("=", 1) for line in read(os.path.join(folder, "facts.txt")).splitlines() if "=" in line)
                for folder in self.folders]

    def steps(self):
        """(name, exit code) of every step; gpu-check's skipped-GPU-test count once, the last one."""
        steps = [line.split() for line in self.read_all("steps.txt").splitlines() if line.strip()]
        skipped = [s for s in steps if s[0] == "gpu_tests_skipped"]
        return [s for s in steps if s[0] != "gpu_tests_skipped"] + skipped[-1:]


def gtest_rows(path):
    """(test name, PASS/FAIL/SKIP, seconds) for every test of a gtest JSON file."""
    data = json.loads(read(path, "{}") or "{}")
    rows = []
    for suite in data.get("testsuites", []):
        for case in suite.get("testsuite", []):
            name = f"{suite['name']}.{case['name']}"
            if case.get("failures"):
                verdict = "FAIL"
            elif case.get("result") == "SKIPPED" or case.get("status") == "NOTRUN":
                verdict = "SKIP"
            else:
                verdict = "PASS"
            rows.append((name, verdict, case.get("time", "")))
    return rows


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: gpu_report.py RESULTS_FOLDER [MORE_FOLDERS ...]  (in command order)")
    res = Results(sys.argv[1:])
    per_folder = res.facts()
    facts = {}
    for f in per_folder:  # a later command's facts win (a rest-only folder has commit_rest alone)
        facts.update(f)
    steps = res.steps()
    out = []
    w = out.append
    w("# GPU report")
    w("")
    w("Written by `scripts/gpu-check.sh` (via `scripts/gpu_report.py`); do not edit by hand.")
    w("")
    w(f"- GPU: {facts.get('gpu', 'unknown')} (name, driver, memory, max SM clock)")
    w(f"- CUDA (driver): {facts.get('cuda_runtime', '?')}; compute-sanitizer: {facts.get('sanitizer', '?')}")
    w(f"- date: {facts.get('date', '?')}")
    if len(per_folder) > 1:
        # Which machines ran them: each command's GPU UUID (older results folders have none,
        # and then the report does not say).
        uuids = [f.get("gpu_uuid", "") for f in per_folder]
        if all(uuids) and len(set(uuids)) == 1:
            where = " on this machine"
        elif all(uuids):
            where = f" on {len(set(uuids))} machines"
        else:
            where = ""
        w(f"- {len(per_folder)} commands{where}, in order (date, commit of the binaries{', GPU' if any(uuids) else ''}):")
        for i, f in enumerate(per_folder, 1):
            commit = f.get("commit") or f.get("commit_rest", "?")
            gpu = f", {f['gpu_uuid']}" if f.get("gpu_uuid") else ""
            w(f"  {i}. {f.get('date', 'no date (a rest phase alone)')}, {commit}{gpu}")
    elif facts.get("commit_rest"):
        w(f"- commit: {facts.get('commit', '?')} (C++ tests, sanitizers); {facts['commit_rest']} (CLI, benchmarks, "
          "Python: run again after a fix, on the same machine kind)")
    else:
        w(f"- commit: {facts.get('commit', '?')}")
    w("")
    w("## Steps")
    w("")
    w("| step | exit code | verdict |")
    w("|---|---|---|")
    for name, rc in steps:
        w(f"| {name} | {rc} | {'ok' if rc == '0' else ('TIMEOUT' if rc == '124' else 'FAILED')} |")
    # Steps that should have run but have no exit code: a sanitizer run cut
    # off by the command's time limit (its log exists), or one never started.
    recorded = {n for n, _ in steps}
    # (A binary that some tool found no GPU test in is left out for every tool:
    # the slower tools' filters exclude more than memcheck's.)
    tools = facts.get("sanitizer_tools", "").split()
    no_gpu = set()
    for line in res.read_all("skipped.txt").splitlines():
        for tool in tools:
            if line.startswith(f"sanitizer_{tool}_"):
                no_gpu.add(line.split()[0][len(f"sanitizer_{tool}_"):])
    binaries = sorted(os.path.basename(p)[5:-5] for p in res.glob("test_*.json"))
    for tool in tools:
        for binary in binaries:
            name = f"sanitizer_{tool}_{binary}"
            if name in recorded or binary in no_gpu:
                continue
            started = os.path.exists(res.path(name + ".log"))
            w(f"| {name} | - | {'NOT FINISHED' if started else 'NOT RUN'} |")
    w("")

    w("## C++ tests (every test of every binary)")
    w("")
    # A binary run by several commands (e.g. two builds, one before a fix):
    # one table per command, named by its number and commit.
    for file_name, runs in res.glob_every("test_*.json"):
        for i, path in runs:
            rows = gtest_rows(path)
            counts = {v: sum(1 for r in rows if r[1] == v) for v in ("PASS", "FAIL", "SKIP")}
            which = ""
            if len(runs) > 1:
                commit = per_folder[i].get("commit") or per_folder[i].get("commit_rest", "?")
                which = f" (command {i + 1}, {commit})"
            w(f"### {file_name[5:-5]}{which}: {counts['PASS']} passed, {counts['FAIL']} failed, "
              f"{counts['SKIP']} skipped")
            w("")
            w("| test | result | time |")
            w("|---|---|---|")
            for name, verdict, t in rows:
                w(f"| {name} | {verdict} | {t} |")
            w("")

    w("## compute-sanitizer")
    w("")
    w("| tool / binary | error summary | exit code |")
    w("|---|---|---|")
    rc_of = dict((n, rc) for n, rc in steps)
    for path in res.glob("sanitizer_*.log"):
        name = os.path.basename(path)[:-4]
        text = read(path)
        summary = re.findall(r"ERROR SUMMARY: .*|RACECHECK SUMMARY: .*", text)
        ran = re.findall(r"\[  PASSED  \] (\d+) test", text)
        w(f"| {name[10:]} | {'; '.join(summary) or 'no summary'} ({ran[0] if ran else '?'} tests passed) | {rc_of.get(name, '?')} |")
    w("")

    for title, name in (("nsa info", "cli_info"), ("nsa selftest", "cli_selftest"), ("nsa bench (default scenario)", "cli_bench"),
                        ("nsa bench --scenario prefill", "cli_bench_prefill"),
                        ("nsa bench --l2 cold (L2 flushed between timed calls)", "cli_bench_cold_l2"),
                        ("wheel: installed into a fresh venv, nsa selftest (scripts/check-wheel.sh)", "wheel_check")):
        text = res.read(name + ".log")
        if text:
            w(f"## {title}")
            w("")
            w("```")
            w(without_results_folder(text.rstrip()))
            w("```")
            w("")
    sglang = json.loads(res.read("metadata_bench.json", "{}") or "{}").get("sglang_shaped", [])
    if sglang:
        w("## metadata_bench: SGLang-shaped buffers (cold L2, graph replay)")
        w("")
        w("Ratios are to the upstream-shaped fused copy measured in the same run; targets: build <= "
          f"{sglang[0]['build_target']}x, copy <= {sglang[0]['copy_target']}x. Floors: page tables alone into "
          "the destinations (build: req_to_token rows at each request's length; copy: the precomputed rows), "
          "same run; FLOOR = missed with the target below that floor.")
        w("")
        w("| mode | bs | D | ctx | upstream us | build us | build floor us | build ratio | copy us | copy floor us "
          "| copy ratio |")
        w("|---|---|---|---|---|---|---|---|---|---|---|")

        def verdict(r, op):
            if r[f"{op}_target_met"]:
                return "MET"
            return "FLOOR" if r.get(f"{op}_target_below_floor") else "MISSED"

        def us(r, key):
            return "-" if r.get(key) is None else f"{r[key]:.2f}"

        for r in sglang:
            w(f"| {r['mode']} | {r['batch']} | {r['destinations']} | {r['context']} | "
              f"{r['upstream_fused_copy_cold_gpu_us']:.2f} | {r['build_cold_gpu_us']:.2f} | "
              f"{us(r, 'build_floor_cold_gpu_us')} | {r['build_over_upstream']:.2f}x {verdict(r, 'build')} | "
              f"{r['copy_cold_gpu_us']:.2f} | {us(r, 'copy_floor_cold_gpu_us')} | "
              f"{r['copy_over_upstream']:.2f}x {verdict(r, 'copy')} |")
        for op in ("build", "copy"):
            met = sum(1 for r in sglang if r[f"{op}_target_met"])
            floor = sum(1 for r in sglang if not r[f"{op}_target_met"] and r.get(f"{op}_target_below_floor"))
            w("")
            w(f"{op}: target met at {met} of {len(sglang)} sizes; missed with the target below the floor at {floor}; "
              f"missed above the floor at {len(sglang) - met - floor}.")
        w("")
    topk = json.loads(res.read("topk_bench.json", "{}") or "{}")
    if topk.get("results"):
        w("## topk_transform targets (from topk_bench.json)")
        w("")
        # The output floor (K indices written per row) where the bench measured it.
        out_floor = any("output_floor_gpu_us" in r for r in topk["results"])
        # The identity rows' own floor (length and table reads, both outputs written) where measured.
        id_floor = any(r.get("identity_floor_gpu_us") is not None for r in topk["results"])
        w("| case | ours us | floor us | x floor | " + ("out floor us | " if out_floor else "") +
          ("identity floor us | " if id_floor else "") + "sort us | target | verdict |")
        w("|---|---|---|---|" + ("---|" if out_floor else "") + ("---|" if id_floor else "") + "---|---|---|")
        for r in topk["results"]:
            sort_us = r.get("sort_baseline_gpu_us")
            met = r.get("target_met")
            verdict = "" if met is None else "MET" if met else "MISSED"
            if met is False and r.get("target_below_identity_floor"):
                verdict = f"FLOOR ({r['ours_gpu_us'] / r['identity_floor_gpu_us']:.2f}x identity floor)"
            elif met is False and r.get("target_below_output_floor"):
                verdict = f"FLOOR ({r['ours_gpu_us'] / r['output_floor_gpu_us']:.2f}x out floor)"
            of = r.get("output_floor_gpu_us")
            of_cell = ("-" if of is None else f"{of:.2f}") + " | " if out_floor else ""
            idf = r.get("identity_floor_gpu_us")
            idf_cell = ("-" if idf is None else f"{idf:.2f}") + " | " if id_floor else ""
            w(f"| {r['case']} | {r['ours_gpu_us']:.2f} | {r['floor_gpu_us']:.2f} | {r['ratio_to_floor']:.2f} | "
              f"{of_cell}{idf_cell}{'-' if sort_us is None else f'{sort_us:.2f}'} | {r['target']} | {verdict} |")
        w("")
    # Same-run comparisons, case by case against this build: experiment builds of topk_bench
    # (topk_<variant>_bench.json, e.g. NSA_EXPERIMENT_BUILDS targets; not the phase probes) and full runs of an
    # earlier commit's topk_bench (topk_bench_<commit>.json).
    variants = [os.path.basename(p) for p in res.glob("topk_*_bench.json")]
    others = [(f"{name[len('topk_'):-len('_bench.json')]} (experiment build)", name) for name in variants
              if not name.startswith("topk_probe")] + [
        (f"{os.path.basename(p)[len('topk_bench_'):-len('.json')]} (earlier commit)", os.path.basename(p))
        for p in res.glob("topk_bench_*.json")]
    others = [(label, json.loads(res.read(name, "{}") or "{}")) for label, name in others]
    others = [(label, {r["case"]: r for r in o["results"]}) for label, o in others if o.get("results")]
    if topk.get("results") and others:
        w("## topk_transform: this build against an experiment build or an earlier commit (same run)")
        w("")
        w("GPU us per call (CUDA-graph replays, cold L2); ratio = the other build / this build.")
        w("")
        w("| case | this build us | " + " | ".join(f"{label}: us | ratio" for label, _ in others) + " |")
        w("|---|---|" + "---|---|" * len(others))
        for lib in topk["results"]:
            cells = []
            for _, by_case in others:
                r = by_case.get(lib["case"])
                cells.append("- | -" if r is None else
                             f"{r['ours_gpu_us']:.2f} | {r['ours_gpu_us'] / lib['ours_gpu_us']:.2f}")
            w(f"| {lib['case']} | {lib['ours_gpu_us']:.2f} | " + " | ".join(cells) + " |")
        w("")
    logits = json.loads(res.read("paged_mqa_logits_bench.json", "{}") or "{}")
    if logits.get("results"):
        w("## paged_mqa_logits (from paged_mqa_logits_bench.json)")
        w("")
        # The persistent wgmma schedule's columns only where the bench timed it.
        pers = any("persistent_gpu_us" in r for r in logits["results"])
        # The wgmma kernel's fastest chunk length (columns per CTA) where the bench swept them.
        chunks = any("wgmma_us_by_chunk_columns" in r for r in logits["results"])
        # The read-floor kernel (the same cache bytes through the same tables, nothing else) where the bench timed it.
        read_floor = any("read_floor_kernel_us" in r for r in logits["results"])
        w("| case | ours kernel | ours us | copy us (same traffic) | cache-read floor us | " +
          ("read-floor kernel us | x read floor | " if read_floor else "") + "GB/s | of copy | x floor | "
          "mma.sync us | " + ("persistent us | persistent of copy | " if pers else "") +
          ("fastest chunk: columns, us, of copy | " if chunks else "") + "target | verdict |")
        w("|---|---|---|---|---|" + ("---|---|" if read_floor else "") + "---|---|---|---|" + ("---|---|" if pers else "") +
          ("---|" if chunks else "") + "---|---|")
        for r in logits["results"]:
            met = r.get("target_met")
            verdict = "" if met is None else ("MET" if met else "MISSED")
            mma = r.get("mma_sync_gpu_us")
            extra = ""
            if pers:
                p_us, p_of = r.get("persistent_gpu_us"), r.get("persistent_fraction_of_copy")
                extra = f"{'-' if p_us is None else f'{p_us:.2f}'} | {'-' if p_of is None else f'{p_of:.2f}'} | "
            if chunks:
                by = r.get("wgmma_us_by_chunk_columns") or {}
                if by:
                    cols, us = min(by.items(), key=lambda kv: kv[1])
                    of_copy = f"{r['copy_same_traffic_us'] / us:.2f}" if us > 0 else "-"
                    extra += f"{cols}, {us:.2f}, {of_copy} | "
                else:
                    extra += "- | "
            read_cells = ""
            if read_floor:
                rf = r.get("read_floor_kernel_us")
                read_cells = "- | - | " if rf is None else f"{rf:.2f} | {r['ours_gpu_us'] / rf:.2f} | "
            w(f"| {r['case']} | {r.get('ours_kernel', '?')} | {r['ours_gpu_us']:.2f} | {r['copy_same_traffic_us']:.2f} | "
              f"{r['cache_read_floor_us']:.2f} | {read_cells}{r['ours_gbps']:.0f} | {r['fraction_of_copy']:.2f} | "
              f"{r['ratio_to_floor']:.2f} | {'-' if mma is None else f'{mma:.2f}'} | {extra}{r['target']} | {verdict} |")
        w("")
    indexer = json.loads(res.read("indexer_topk_bench.json", "{}") or "{}")
    if indexer.get("results"):
        w("## indexer_topk targets (from indexer_topk_bench.json)")
        w("")
        w("| case | ours us | logits us | top-k us (ours - logits) | fused floor us | x floor | target | verdict |")
        w("|---|---|---|---|---|---|---|---|")
        for r in indexer["results"]:
            met = r.get("target_met")
            verdict = "" if met is None else "MET" if met else "MISSED"
            w(f"| {r['case']} | {r['ours_gpu_us']:.2f} | {r['logits_gpu_us']:.2f} | {r['topk_part_us']:.2f} | "
              f"{r['fused_floor_us']:.2f} | {r['ratio_to_floor']:.2f} | {r['target']} | {verdict} |")
        w("")
    for path in res.glob("bench_*.log"):
        w(f"## {os.path.basename(path)[6:-4]}")
        w("")
        w("```")
        w(without_results_folder(read(path).rstrip()))
        w("```")
        w("")
    for title, name in (("Python tests", "python_tests"), ("Python call overhead", "python_overhead")):
        text = res.read(name + ".log")
        if text:
            w(f"## {title}")
            w("")
            w("```")
            w(text.rstrip()[-6000:])
            w("```")
            w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
