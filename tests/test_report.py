"""asrkd report: the recipe's results.json / results.md from decode folders (no models needed)."""

from __future__ import annotations

import json
from pathlib import Path

from asrkd.eval.report import collect, ood_gap_closed, table, variants, write_report


def _wer(folder: Path, wer: float, cer: float, words: int = 100, chars: int = 500) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    obj = {"wer": wer, "cer": cer, "words": words, "cer_details": {"chars": chars}}
    (folder / "wer.json").write_text(json.dumps(obj))


def _exp(tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    scores = {"teacher": (40.0, 10.0, 30.0, 12.0), "student_ctc": (90.0, 30.0, 95.0, 60.0)}
    scores["student_kd"] = (80.0, 20.0, 85.0, 44.0)
    scores["student_kd_nopool"] = (82.0, 22.0, 90.0, 50.0)
    scores["teacher_base"] = (35.0, 9.0, 25.0, 10.0)
    for name, (wer, cer, ood_wer, ood_cer) in scores.items():
        _wer(exp / "decode" / name, wer, cer)
        _wer(exp / "decode" / f"{name}_ood", ood_wer, ood_cer, words=304, chars=1614)
    (exp / "student_kd_nopool").mkdir()
    (exp / "student_kd_nopool" / "best.pt").write_bytes(b"")  # only its presence is read here
    (exp / "teacher_base.pt").write_bytes(b"")  # another teacher (teacher-adapt writes exp/<name>.pt)
    # a decode folder without a trained model is not a variant
    _wer(exp / "decode" / "stray", 1.0, 1.0)
    return exp


def test_ood_entries_variants_and_gap(tmp_path, monkeypatch):
    import asrkd.eval.report as report

    monkeypatch.setattr(report, "_params", lambda ckpt: None)
    exp = _exp(tmp_path)
    assert variants(exp) == ["student_kd_nopool", "teacher_base"]
    results = collect(exp)
    assert results["student_kd"]["ood"] == {"wer": 85.0, "cer": 44.0, "words": 304, "chars": 1614}
    assert results["teacher"]["ood"]["cer"] == 12.0 and results["teacher"]["cer"] == 10.0
    assert results["variants"]["student_kd_nopool"]["ood"]["cer"] == 50.0
    assert results["variants"]["teacher_base"]["cer"] == 9.0
    # (60 - 44) / (60 - 12) = 1/3
    assert results["ood_cer_gap_closed"] == round(16 / 48, 4)
    assert ood_gap_closed(results, "student_kd_nopool") == round(10 / 48, 4)
    assert results["kd_cer_ratio"] == round(20 / 30, 4)
    md = table(results)
    assert "| student_kd_nopool |" in md and "| 85.00 | 44.00 |" in md
    assert "304 words / 1614 characters" in md and "closed by KD: 0.333" in md


def test_no_ood_set_gives_no_ood_keys(tmp_path, monkeypatch):
    import asrkd.eval.report as report

    monkeypatch.setattr(report, "_params", lambda ckpt: None)
    exp = tmp_path / "exp"
    for name, cer in (("teacher", 10.0), ("student_ctc", 30.0), ("student_kd", 20.0)):
        _wer(exp / "decode" / name, 50.0, cer)
    results, md, written = write_report(exp)
    assert all("ood" not in results[m] for m in ("teacher", "student_ctc", "student_kd"))
    assert "ood_cer_gap_closed" not in results and "variants" not in results
    assert "OOD = " not in md and json.loads((exp / "results.json").read_text()) == results
