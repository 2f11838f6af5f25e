"""``asrkd report``: collect a recipe's scores into results.json, a markdown table and a PNG.

Reads, under an experiment folder laid out by ``recipes/*/run.sh``::

    teacher.pt                      adapted teacher checkpoint
    student_ctc/ student_kd/ ...    training folders (best.pt, history.json)
    decode/<model>[_streaming]/     test set: wer.json (asrkd wer --json), stats.json (asrkd decode --json)
    decode/<model>_ood/             the out-of-domain (real speech) dev set, when the recipe built it
    stages.json                     wall seconds of each recipe stage (written by the recipe)

and writes ``results.json`` (the contract in the design: ``teacher``, ``student_ctc``,
``student_kd`` with ``params``, ``wer``, ``cer``, ``checkpoint`` and ``ood: {wer, cer, words,
chars}``; ``latency_ms``; ``wall_s``; other trained models, e.g. ablations, under ``variants``),
``results.md`` (the table, also printed) and ``dev_curves.png`` (dev WER/CER per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asrkd.atomic import atomic_write, refuse_overwrite, write_text

MODELS = ("teacher", "student_ctc", "student_kd")
MODES = ("", "_streaming", "_ood")


def variants(exp: Path) -> list[str]:
    """Other models the recipe trained and decoded (ablations, other teachers):
    ``exp/<name>/best.pt`` or ``exp/<name>.pt`` with ``exp/decode/<name>/wer.json``."""
    found = []
    for d in sorted((exp / "decode").glob("*/wer.json")):
        name = d.parent.name
        if name not in MODELS and not name.endswith(MODES[1:]) and _checkpoint_of(exp, name).is_file():
            found.append(name)
    return found


def _read_json(path: Path, *required: str) -> dict | None:
    """A JSON object another stage wrote (None when absent); ``ValueError`` naming the file
    when it is not one, or lacks a ``required`` key."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err}); rerun the stage that writes it") from None
    missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
    if not isinstance(obj, dict) or missing:
        raise ValueError(
            f"{path}: expected a JSON object with {', '.join(required) or 'fields'}; rerun the stage that writes it"
        )
    return obj


def _inputs(exp: Path) -> dict[str, Path]:
    """Every file :func:`collect` reads."""
    files = {"stages.json": exp / "stages.json"}
    for name in MODELS + tuple(variants(exp)):
        files[f"{name} checkpoint"] = _checkpoint_of(exp, name)
        files[f"{name} history"] = exp / name / "history.json"
        for mode in MODES:
            for f in ("wer.json", "stats.json"):
                files[f"decode/{name}{mode}/{f}"] = exp / "decode" / f"{name}{mode}" / f
    return files


def _checkpoint_of(exp: Path, name: str) -> Path:
    """``exp/<name>/best.pt`` for a trained student, ``exp/<name>.pt`` for a teacher (teacher-adapt)."""
    trained = exp / name / "best.pt"
    return trained if trained.is_file() or name in MODELS[1:] else exp / f"{name}.pt"


def _params(ckpt: Path) -> int | None:
    if not ckpt.is_file():
        return None
    from asrkd.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    return sum(p.numel() for p in model.parameters())


def _model_entry(exp: Path, name: str) -> dict[str, Any]:
    ckpt = _checkpoint_of(exp, name)
    entry: dict[str, Any] = {"checkpoint": str(ckpt), "params": _params(ckpt)}
    for mode in MODES:
        wer = _read_json(exp / "decode" / f"{name}{mode}" / "wer.json", "wer", "cer")
        stats = _read_json(exp / "decode" / f"{name}{mode}" / "stats.json")
        if wer is None:
            continue
        if mode == "_ood":
            chars = (wer.get("cer_details") or {}).get("chars")
            entry["ood"] = {"wer": wer["wer"], "cer": wer["cer"], "words": wer.get("words"), "chars": chars}
            continue
        key = "" if not mode else "streaming_"
        entry[f"{key}wer"] = wer["wer"]
        entry[f"{key}cer"] = wer["cer"]
        if stats:
            entry[f"{key}rtf"] = stats.get("rtf")
            if mode:
                entry["algorithmic_latency_ms"] = stats.get("algorithmic_latency_ms")
                if stats.get("emission_delay"):
                    entry["emission_delay"] = stats["emission_delay"]
    hist = _read_json(exp / name / "history.json", "history")
    if hist:
        entry["dev_history"] = [
            {k: h.get(k) for k in ("epoch", "dev_wer", "dev_cer", "train_loss")} for h in hist["history"]
        ]
    return entry


def collect(exp: Path) -> dict[str, Any]:
    exp = Path(exp)
    results: dict[str, Any] = {name: _model_entry(exp, name) for name in MODELS}
    others = variants(exp)
    if others:
        results["variants"] = {name: _model_entry(exp, name) for name in others}
    kd = results.get("student_kd", {})
    results["latency_ms"] = kd.get("algorithmic_latency_ms")
    stages = _read_json(exp / "stages.json") or {}
    results["stages_s"] = stages
    results["wall_s"] = round(sum(stages.values()), 1) if stages else None
    ctc_cer, kd_cer = results["student_ctc"].get("cer"), kd.get("cer")
    if ctc_cer and kd_cer is not None:
        results["kd_cer_ratio"] = round(kd_cer / ctc_cer, 4)
    gap = ood_gap_closed(results)
    if gap is not None:
        results["ood_cer_gap_closed"] = gap
    t_params, s_params = results["teacher"].get("params"), kd.get("params")
    if t_params and s_params:
        results["student_teacher_param_ratio"] = round(s_params / t_params, 4)
    return results


def ood_gap_closed(results: dict[str, Any], kd: str = "student_kd") -> float | None:
    """(ctc - kd) / (ctc - teacher) on the out-of-domain CER: the share of the gap between the
    CTC-only student and the teacher that distillation closes."""
    kd_entry = results.get(kd) or results.get("variants", {}).get(kd) or {}
    cers = [(e or {}).get("ood", {}).get("cer") for e in (results.get("student_ctc"), kd_entry, results.get("teacher"))]
    ctc, kd_cer, teacher = cers
    if None in cers or ctc == teacher:
        return None
    return round((ctc - kd_cer) / (ctc - teacher), 4)


def table(results: dict[str, Any]) -> str:
    def f(x, fmt="{:.2f}"):
        return "–" if x is None else fmt.format(x)

    lines = [
        "| model | params | test WER % | test CER % | streaming WER % | streaming CER % | RTF (stream) "
        "| OOD WER % | OOD CER % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(name, results.get(name, {})) for name in MODELS] + list(results.get("variants", {}).items())
    for name, e in rows:
        ood = e.get("ood", {})
        lines.append(
            f"| {name} | {f(e.get('params'), '{:,}')} | {f(e.get('wer'))} | {f(e.get('cer'))} | "
            f"{f(e.get('streaming_wer'))} | {f(e.get('streaming_cer'))} | {f(e.get('streaming_rtf'), '{:.4f}')} "
            f"| {f(ood.get('wer'))} | {f(ood.get('cer'))} |"
        )
    extra = []
    ood = next((e["ood"] for _, e in rows if e.get("ood")), None)
    if ood:
        extra.append(f"OOD = real-speech dev set, {ood['words']} words / {ood['chars']} characters")
    if results.get("kd_cer_ratio") is not None:
        extra.append(f"student_kd CER / student_ctc CER = {results['kd_cer_ratio']:.3f}")
    if results.get("ood_cer_gap_closed") is not None:
        extra.append(f"OOD CER gap ctc -> teacher closed by KD: {results['ood_cer_gap_closed']:.3f}")
    if results.get("student_teacher_param_ratio") is not None:
        extra.append(f"student / teacher parameters = {results['student_teacher_param_ratio']:.3f}")
    if results.get("latency_ms") is not None:
        extra.append(f"streaming algorithmic latency {results['latency_ms']:g} ms")
    if results.get("wall_s") is not None:
        extra.append(f"recipe wall time {results['wall_s']:.0f} s")
    return "\n".join(lines) + ("\n\n" + "; ".join(extra) + "\n" if extra else "\n")


def plot(results: dict[str, Any], out: Path) -> bool:
    curves = {n: results.get(n, {}).get("dev_history") for n in ("student_ctc", "student_kd")}
    if not any(curves.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("dev_wer", "dev_cer")):
        for name, hist in curves.items():
            pts = [(h["epoch"], h[metric]) for h in hist or [] if h.get(metric) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        teacher = results.get("teacher", {}).get(metric.replace("dev_", ""))
        if teacher is not None:
            ax.axhline(teacher, color="gray", linestyle="--", label="teacher (test)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric.replace("_", " ").upper() + " %")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("dev error per epoch: CTC-only vs CTC + KD (same architecture, data, seed, epochs)")
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return True


def write_report(exp: Path, out: Path | None = None) -> tuple[dict[str, Any], str, list[Path]]:
    """``asrkd report``: collect ``exp`` into ``out`` (default ``exp/results.json``), ``results.md`` and
    ``dev_curves.png`` (when matplotlib is there). Returns ``(results, markdown table, files written)``;
    refuses outputs that are among its inputs."""
    if not exp.is_dir():
        raise FileNotFoundError(f"--exp {exp}: no such experiment folder")
    out = out or exp / "results.json"
    md_path, png = exp / "results.md", exp / "dev_curves.png"
    refuse_overwrite({"--out": out, "results.md": md_path, "dev_curves.png": png}, _inputs(exp))
    results = collect(exp)
    atomic_write(out, lambda f: f.write(json.dumps(results, indent=2) + "\n"), mode="w")
    md = table(results)
    write_text(md_path, md)
    return results, md, [out, md_path] + ([png] if plot(results, png) else [])
