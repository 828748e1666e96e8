"""scripts/gpu_report.py: the report quotes bench logs without the GPU
machine's folders (the repository must not point at one machine's paths), and
one report can cover the results folders of several commands."""
import importlib.util
import json
import pathlib
import sys

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "gpu_report.py"
_spec = importlib.util.spec_from_file_location("gpu_report", _SCRIPT)
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)


def test_wrote_lines_keep_only_the_file_name():
    log = "case  us\nB=8  19.03\nwrote /root/out/res/paged_mqa_logits_bench.json\nwrote topk_bench.json"
    got = gpu_report.without_results_folder(log)
    assert got == "case  us\nB=8  19.03\nwrote <results>/paged_mqa_logits_bench.json\nwrote <results>/topk_bench.json"
    assert "/root" not in got


def test_wrote_lines_with_a_comment_keep_it():
    log = "wrote /root/out/res2/nsa_bench.svg (step time vs batch size, batches 1, 8)"
    assert gpu_report.without_results_folder(log) == "wrote <results>/nsa_bench.svg (step time vs batch size, batches 1, 8)"


def test_cli_logs_are_quoted_without_the_results_folder(tmp_path, monkeypatch, capsys):
    only = _folder(tmp_path, "only", {"facts.txt": "commit=c\n", "steps.txt": "cli_bench 0\n",
                                      "cli_bench.log": "step: ours\nwrote /root/out/res/nsa_bench.json\n"})
    out = _report(monkeypatch, capsys, [only])
    assert "wrote <results>/nsa_bench.json" in out and "/root" not in out


def test_other_lines_are_untouched():
    log = "limits: D2D copy 2442 GB/s\n  wrote /abs/indented.json\nrewrote /x/y.json"
    assert gpu_report.without_results_folder(log) == log


def _folder(root, name, files):
    folder = root / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return str(folder)


def _report(monkeypatch, capsys, folders):
    monkeypatch.setattr(sys, "argv", ["gpu_report.py", *folders])
    gpu_report.main()
    return capsys.readouterr().out


def test_several_folders_make_one_report_in_command_order(tmp_path, monkeypatch, capsys):
    facts = "date=2026-01-01T00:00:00Z\ncommit=aaa\ngpu=GPU X\nsanitizer_tools=memcheck\n"
    first = _folder(tmp_path, "first", {
        "facts.txt": facts,
        "steps.txt": "test_a_test 0\ngpu_tests_skipped 1\n",
        "bench_x_bench.log": "old x\n",
    })
    second = _folder(tmp_path, "second", {
        "facts.txt": "commit_rest=bbb\n",
        "steps.txt": "bench_x_bench 0\ngpu_tests_skipped 0\n",
        "bench_x_bench.log": "new x\n",
        "bench_y_bench.log": "y\n",
    })
    out = _report(monkeypatch, capsys, [first, second])
    assert "- GPU: GPU X" in out
    assert "  1. 2026-01-01T00:00:00Z, aaa" in out and "  2. no date (a rest phase alone), bbb" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and " | " in line[2:]]
    names = [r.split(" | ")[0][2:] for r in rows if not r.startswith("| step")]
    # Steps in command order; the skipped-GPU-test count once, the last command's.
    assert names[:3] == ["test_a_test", "bench_x_bench", "gpu_tests_skipped"]
    assert "| gpu_tests_skipped | 0 | ok |" in out and "| gpu_tests_skipped | 1 |" not in out
    # A file both folders hold is the later command's; every bench log appears once.
    assert "new x" in out and "old x" not in out and "## y_bench" in out
    assert out.count("## x_bench") == 1 and out.count("## y_bench") == 1


def test_commands_say_which_machines_ran_them(tmp_path, monkeypatch, capsys):
    def folder(name, uuid):
        return _folder(tmp_path, name, {"facts.txt": f"date=d\ncommit={name}\ngpu=G\ngpu_uuid={uuid}\n",
                                        "steps.txt": "test_a_test 0\n"})
    out = _report(monkeypatch, capsys, [folder("a1", "GPU-1"), folder("a2", "GPU-1")])
    assert "- 2 commands on this machine, in order (date, commit of the binaries, GPU):" in out
    assert "  2. d, a2, GPU-1" in out
    out = _report(monkeypatch, capsys, [folder("b1", "GPU-1"), folder("b2", "GPU-2")])
    assert "- 2 commands on 2 machines, in order" in out and "  1. d, b1, GPU-1" in out and "  2. d, b2, GPU-2" in out
    # Without a UUID in every folder the report makes no claim about machines.
    plain = _folder(tmp_path, "c2", {"facts.txt": "date=d\ncommit=c2\ngpu=G\n", "steps.txt": "test_a_test 0\n"})
    out = _report(monkeypatch, capsys, [folder("c1", "GPU-1"), plain])
    assert "- 2 commands, in order" in out and "machine" not in out.split("## Steps")[0]


def test_one_folder_reports_its_commit(tmp_path, monkeypatch, capsys):
    only = _folder(tmp_path, "only", {"facts.txt": "date=d\ncommit=ccc\ngpu=G\n", "steps.txt": "test_a_test 0\n"})
    out = _report(monkeypatch, capsys, [only])
    assert "- commit: ccc" in out and "commands on this machine" not in out


def _gtest_json(*cases):
    suite = [{"name": name, **({"failures": [{"failure": "x"}]} if verdict == "FAIL" else {})}
             for name, verdict in cases]
    return json.dumps({"testsuites": [{"name": "S", "testsuite": suite}]})


def test_a_binary_of_two_builds_gets_a_table_per_command(tmp_path, monkeypatch, capsys):
    first = _folder(tmp_path, "first", {"facts.txt": "date=d1\ncommit=aaa\ngpu=G\n", "steps.txt": "test_a_test 1\n",
                                        "test_a_test.json": _gtest_json(("T1", "FAIL"), ("T2", "PASS"))})
    second = _folder(tmp_path, "second", {"facts.txt": "date=d2\ncommit=bbb\ngpu=G\n", "steps.txt": "test_a_test 0\n",
                                          "test_a_test.json": _gtest_json(("T1", "PASS"), ("T2", "PASS")),
                                          "test_b_test.json": _gtest_json(("U", "PASS"))})
    out = _report(monkeypatch, capsys, [first, second])
    assert "### a_test (command 1, aaa): 1 passed, 1 failed, 0 skipped" in out
    assert "### a_test (command 2, bbb): 2 passed, 0 failed, 0 skipped" in out
    assert out.index("(command 1, aaa)") < out.index("(command 2, bbb)")
    # A binary only one command ran keeps the plain heading.
    assert "### b_test: 1 passed, 0 failed, 0 skipped" in out


def test_topk_identity_rows_below_their_own_floor_say_so(tmp_path, monkeypatch, capsys):
    def row(case, ours, identity_floor, below_identity):
        return {"case": case, "ours_gpu_us": ours, "floor_gpu_us": 2.0, "ratio_to_floor": ours / 2.0,
                "output_floor_gpu_us": 1.5, "identity_floor_gpu_us": identity_floor,
                "sort_baseline_gpu_us": 40.0, "target": "<=1.10x floor", "target_met": False,
                "target_below_output_floor": False, "target_below_identity_floor": below_identity}
    topk = {"results": [row("64 x 2048 (identity)", 2.7, 2.5, True), row("1 x 8K", 14.0, None, False)]}
    only = _folder(tmp_path, "only", {"facts.txt": "commit=c\n", "steps.txt": "bench_topk_bench 0\n",
                                      "topk_bench.json": json.dumps(topk)})
    out = _report(monkeypatch, capsys, [only])
    assert "| identity floor us |" in out
    assert "| 64 x 2048 (identity) | 2.70 | 2.00 | 1.35 | 1.50 | 2.50 | 40.00 | <=1.10x floor | " \
           "FLOOR (1.08x identity floor) |" in out
    assert "| 1 x 8K | 14.00 | 2.00 | 7.00 | 1.50 | - | 40.00 | <=1.10x floor | MISSED |" in out


def test_topk_builds_of_the_same_run_are_compared_case_by_case(tmp_path, monkeypatch, capsys):
    def bench(*cases):
        return json.dumps({"results": [{"case": c, "ours_gpu_us": us, "floor_gpu_us": 1.0, "ratio_to_floor": us,
                                        "target": "-", "target_met": None} for c, us in cases]})
    only = _folder(tmp_path, "only", {"facts.txt": "commit=c\n", "steps.txt": "bench_topk_bench 0\n",
                                      "topk_bench.json": bench(("1 x 8K", 10.0), ("64 x 128K", 40.0)),
                                      "topk_chunked_bench.json": bench(("1 x 8K", 10.5), ("64 x 128K", 30.0)),
                                      "topk_probe_uniform_bench.json": bench(("1 x 8K", 99.0)),
                                      "topk_bench_abc1234.json": bench(("1 x 8K", 12.0))})
    out = _report(monkeypatch, capsys, [only])
    assert "| case | this build us | chunked (experiment build): us | ratio | abc1234 (earlier commit): us | " \
           "ratio |" in out
    assert "| 1 x 8K | 10.00 | 10.50 | 1.05 | 12.00 | 1.20 |" in out
    assert "| 64 x 128K | 40.00 | 30.00 | 0.75 | - | - |" in out
