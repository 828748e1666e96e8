"""scripts/gpu_report.py: the report quotes bench logs without the GPU
machine's folders (the repository must not point at one machine's paths)."""
import importlib.util
import pathlib

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "gpu_report.py"
_spec = importlib.util.spec_from_file_location("gpu_report", _SCRIPT)
gpu_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_report)


def test_wrote_lines_keep_only_the_file_name():
    log = "case  us\nB=8  19.03\nwrote /root/out/res/paged_mqa_logits_bench.json\nwrote topk_bench.json"
    got = gpu_report.without_results_folder(log)
    assert got == "case  us\nB=8  19.03\nwrote <results>/paged_mqa_logits_bench.json\nwrote <results>/topk_bench.json"
    assert "/root" not in got


def test_other_lines_are_untouched():
    log = "limits: D2D copy 2442 GB/s\n  wrote /abs/indented.json\nrewrote /x/y.json"
    assert gpu_report.without_results_folder(log) == log
