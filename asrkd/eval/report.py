"""``asrkd report``: collect a recipe's scores into results.json, a markdown table and a PNG.

Reads, under an experiment folder laid out by ``recipes/*/run.sh``::

    teacher.pt                      adapted teacher checkpoint
    student_ctc/ student_kd/        training folders (best.pt, history.json)
    decode/<model>[_streaming]/     wer.json (asrkd wer --json) and stats.json (asrkd decode --json)
    stages.json                     wall seconds of each recipe stage (written by the recipe)

and writes ``results.json`` (the contract in the design: ``teacher``, ``student_ctc``,
``student_kd`` with ``params``, ``wer``, ``cer``, ``checkpoint``; ``latency_ms``; ``wall_s``),
``results.md`` (the table, also printed) and ``dev_curves.png`` (dev WER/CER per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from asrkd.atomic import atomic_write, refuse_overwrite, write_text

MODELS = ("teacher", "student_ctc", "student_kd")


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
    for name in MODELS:
        files[f"{name} checkpoint"] = _checkpoint_of(exp, name)
        files[f"{name} history"] = exp / name / "history.json"
        for mode in ("", "_streaming"):
            for f in ("wer.json", "stats.json"):
                files[f"decode/{name}{mode}/{f}"] = exp / "decode" / f"{name}{mode}" / f
    return files


def _checkpoint_of(exp: Path, name: str) -> Path:
    return exp / "teacher.pt" if name == "teacher" else exp / name / "best.pt"


def _params(ckpt: Path) -> int | None:
    if not ckpt.is_file():
        return None
    from asrkd.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    return sum(p.numel() for p in model.parameters())


def collect(exp: Path) -> dict[str, Any]:
    exp = Path(exp)
    results: dict[str, Any] = {}
    for name in MODELS:
        ckpt = _checkpoint_of(exp, name)
        entry: dict[str, Any] = {"checkpoint": str(ckpt), "params": _params(ckpt)}
        for mode in ("", "_streaming"):
            wer = _read_json(exp / "decode" / f"{name}{mode}" / "wer.json", "wer", "cer")
            stats = _read_json(exp / "decode" / f"{name}{mode}" / "stats.json")
            if wer is None:
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
        results[name] = entry
    kd = results.get("student_kd", {})
    results["latency_ms"] = kd.get("algorithmic_latency_ms")
    stages = _read_json(exp / "stages.json") or {}
    results["stages_s"] = stages
    results["wall_s"] = round(sum(stages.values()), 1) if stages else None
    ctc_cer, kd_cer = results["student_ctc"].get("cer"), kd.get("cer")
    if ctc_cer and kd_cer is not None:
        results["kd_cer_ratio"] = round(kd_cer / ctc_cer, 4)
    t_params, s_params = results["teacher"].get("params"), kd.get("params")
    if t_params and s_params:
        results["student_teacher_param_ratio"] = round(s_params / t_params, 4)
    return results


def table(results: dict[str, Any]) -> str:
    def f(x, fmt="{:.2f}"):
        return "–" if x is None else fmt.format(x)

    lines = [
        "| model | params | test WER % | test CER % | streaming WER % | streaming CER % | RTF (stream) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        e = results.get(name, {})
        lines.append(
            f"| {name} | {f(e.get('params'), '{:,}')} | {f(e.get('wer'))} | {f(e.get('cer'))} | "
            f"{f(e.get('streaming_wer'))} | {f(e.get('streaming_cer'))} | {f(e.get('streaming_rtf'), '{:.4f}')} |"
        )
    extra = []
    if results.get("kd_cer_ratio") is not None:
        extra.append(f"student_kd CER / student_ctc CER = {results['kd_cer_ratio']:.3f}")
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
