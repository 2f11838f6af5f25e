"""Forward + backward of the fused KD loss against the PyTorch ways of writing it.

Compared in one run, on the same inputs:
  fused    asrkd.ops.kd_kl_div (one kernel forward, backward free when dL/dloss == 1)
  eager    log_softmax x2 + kl_div + masked mean, autograd backward
  compile  torch.compile of the eager function (inductor)
  liger    (CUDA, when liger_kernel imports) log_softmax x2 + LigerKLDIVLoss(log_target=True)

The implementations are measured interleaved: ``--rounds`` rounds (default 15), each timing
every implementation for about ``--min-run-time / --rounds`` seconds in a rotated order, so that
a machine that slows down or speeds up during the run (other processes on a shared machine,
frequency changes) shifts all of them alike; short rounds keep each ratio's two timings close in
time. Reported per shape and dtype: the median over rounds of one forward+backward with its
spread (quartiles and min-max over rounds), the speed-up of the fused op over each other way as
the median of the same-round ratios (with their quartiles and min-max), effective bandwidth
(the minimum traffic of the op: read student and teacher, write the gradient, divided by the
time), the peak memory allocated during the step beyond the inputs, and two gauges of other
work on the machine: the 1-minute load average before and after the case, and, at the start of
every round, the median time of a small parallel op (exp of 2^17 floats, ~0.1 ms on an idle
2-core machine). The second is the one that matters: when other processes keep the cores busy,
OpenMP's spin-waiting threads and the scheduler's 4 ms ticks turn parallel regions into
multiples of 4 ms (measured: the fused op at (32, 400, 32) 0.7 ms -> 8.0 ms, every call, next
to a 2-thread training job), and eager and torch.compile, with more regions per step, are hit
differently, so that even same-round ratios then mean little. A case with a round whose probe
exceeds 1 ms is flagged CONTENDED: rerun on a quiet machine (OMP_WAIT_POLICY=PASSIVE takes the
spinning away, but measures another configuration; the JSON records it). On a GPU also the
same-run device-to-device copy bandwidth and the fused op's effective bandwidth as a percentage
of it.

    .venv/bin/python benchmarks/bench_kd_kl.py            # CPU (and CUDA when present)
    .venv/bin/python benchmarks/bench_kd_kl.py --quick    # smaller shapes, shorter runs

Writes benchmarks/results/kd_kl_<device>.json. Timings are measurements, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's start/stop lines out of the table

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import asrkd.ops as ops  # noqa: E402
from asrkd.atomic import write_text  # noqa: E402

SHAPES = [(32, 400, 32), (32, 400, 500), (16, 400, 5000)]
QUICK_SHAPES = [(8, 100, 32), (8, 100, 500), (4, 100, 5000)]
TEMPERATURE = 2.0


def eager_kd(student, teacher, lengths, temperature: float = TEMPERATURE):
    """What people write by hand: fp32 log-softmaxes, kl_div, masked mean over frames."""
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1) * temperature**2
    mask = torch.arange(student.shape[1], device=student.device)[None, :] < lengths[:, None]
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def fused_kd(student, teacher, lengths, temperature: float = TEMPERATURE):
    return ops.kd_kl_div(student, teacher, lengths, temperature=temperature)


def make_liger():
    try:
        from liger_kernel.transformers import LigerKLDIVLoss
    except Exception as err:  # not installed, or no Triton/GPU
        return None, f"{type(err).__name__}: {err}"
    loss_fn = LigerKLDIVLoss(reduction="batchmean", log_target=True)

    def liger_kd(student, teacher, lengths, temperature: float = TEMPERATURE):
        # Liger's KL kernel takes log-probabilities; the log-softmaxes stay in PyTorch.
        V = student.shape[-1]
        log_q = F.log_softmax(student.float() / temperature, dim=-1).view(-1, V)
        log_p = F.log_softmax(teacher.float() / temperature, dim=-1).view(-1, V)
        return loss_fn(log_q, log_p) * temperature**2

    return liger_kd, None


@contextlib.contextmanager
def _quiet_stderr():
    """fd 2 to /dev/null: Kineto prints profiler_start/stop lines there whatever KINETO_LOG_LEVEL says."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes_cpu(step) -> int:
    """Peak of live CPU allocations during one step, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    mem = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, delta in mem:
        live += delta
        peak = max(peak, live)
    return peak


def peak_bytes_cuda(step) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def time_step(step, min_run_time: float, warmup: int = 2) -> float:
    for _ in range(warmup):  # (and compilation for torch.compile)
        step()
    m = Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()).blocked_autorange(
        min_run_time=min_run_time
    )
    return m.median


def copy_bandwidth(nbytes: int, device: str, min_run_time: float) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_step(lambda: dst.copy_(src), min_run_time)
    return 2 * src.numel() * 4 / t


def _median(xs):
    return statistics.median(xs)


def _quartiles(xs):
    """(q1, q3) of the rounds; both the value itself for a single round."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q3


def _summary(xs):
    q1, q3 = _quartiles(xs)
    return {"median": _median(xs), "q1": q1, "q3": q3, "min": min(xs), "max": max(xs)}


CONTENDED_PROBE_MS = 1.0


def parallel_probe_ms(n_calls: int = 10) -> float:
    """Median wall time of one small parallel CPU op (see the module doc)."""
    x = torch.rand(1 << 17)
    out = torch.empty_like(x)
    for _ in range(3):
        torch.exp(x, out=out)
    times = []
    for _ in range(n_calls):
        t0 = time.perf_counter()
        torch.exp(x, out=out)
        times.append(time.perf_counter() - t0)
    return _median(times) * 1e3


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_case(impls, B, T, V, dtype, device, min_run_time, rounds):
    """Every implementation timed once per round, in a rotated order (see the module doc)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    student = (torch.randn(B, T, V, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_()
    teacher = (torch.randn(B, T, V, generator=g) * 3).to(device=device, dtype=dtype)
    lengths = torch.full((B,), T, device=device)
    traffic = 3 * student.numel() * student.element_size()  # read s, read t, write grad
    steps, errors, peaks = {}, {}, {}
    for name, fn in impls.items():

        def step(fn=fn):
            student.grad = None
            fn(student, teacher, lengths).backward()

        try:
            for _ in range(2):  # warm-up (and compilation for torch.compile)
                step()
            peaks[name] = peak_bytes_cuda(step) if device == "cuda" else peak_bytes_cpu(step)
            steps[name] = step
        except Exception as err:  # e.g. inductor unavailable: report, do not crash the run
            errors[name] = f"{type(err).__name__}: {err}"[:300]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(step, n):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return (time.perf_counter() - t0) / n

    # Calls per round: enough to fill the round's share of the time (one call at least), from a
    # short estimate, so that every implementation's round lasts about as long.
    per_round = min_run_time / rounds
    calls = {name: max(1, round(per_round / timed(step, 3))) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    probes = []
    names = list(steps)
    gc.collect()
    gc.disable()  # a collection inside one implementation's round would charge it alone
    try:
        for r in range(rounds):
            probes.append(parallel_probe_ms())
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(timed(steps[name], calls[name]))
    finally:
        gc.enable()
    rows = []
    for name in impls:
        if name in errors:
            rows.append({"impl": name, "error": errors[name]})
            continue
        ms = _summary([t * 1e3 for t in times[name]])
        rows.append(
            {
                "impl": name,
                "ms": ms["median"],
                "ms_q1": ms["q1"],
                "ms_q3": ms["q3"],
                "ms_min": ms["min"],
                "ms_max": ms["max"],
                "calls_per_round": calls[name],
                "gbps": traffic / (ms["median"] / 1e3) / 1e9,
                "peak_mb": peaks[name] / 2**20,
                "round_ms": [t * 1e3 for t in times[name]],
            }
        )
    return rows, traffic, times, probes


def device_tag(device: str) -> str:
    if device == "cuda":
        return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    return f"cpu-{os.cpu_count()}core"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, short runs (smoke test)")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument(
        "--min-run-time", type=float, default=None, help="seconds per implementation and case, split over the rounds"
    )
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case (default 15)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    if not ops.extension_available():
        print(f"asrkd extension not loaded: {ops.extension_info()['error']}", file=sys.stderr)
        return 1
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    shapes = QUICK_SHAPES if args.quick else SHAPES
    min_run_time = args.min_run_time or (0.2 if args.quick else 2.0)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    for device in devices:
        impls = {"fused": fused_kd, "eager": eager_kd}
        if not args.no_compile:
            impls["compile"] = torch.compile(eager_kd, dynamic=False)
        notes = {}
        if device == "cuda":
            liger, why = make_liger()
            if liger is not None:
                impls["liger"] = liger
            else:
                notes["liger"] = f"not measured ({why})"
        dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
        env = {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "extension": ops.extension_info(),
            "temperature": TEMPERATURE,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE: another configuration
            "load_avg_1m_start": _load(),
        }
        results = []
        print(
            f"\n== {device} ({env['device']}, torch {env['torch']}, {env['threads']} threads, "
            f"1-min load average {env['load_avg_1m_start']}) =="
        )
        header = (
            f"{'B,T,V':>14} {'dtype':>8} {'impl':>8} {'ms':>9} {'ms q1-q3':>17} {'ms min-max':>17} "
            f"{'vs eager':>9} {'vs comp':>8} {'GB/s':>7} {'peak MB':>8}"
        )
        copy_bw = None
        for B, T, V in shapes:
            for dtype in dtypes:
                load_before = _load()
                rows, traffic, times, probes = run_case(impls, B, T, V, dtype, device, min_run_time, args.rounds)
                n_contended = sum(p > CONTENDED_PROBE_MS for p in probes)
                by = {r["impl"]: r for r in rows if "ms" in r}
                fused = by.get("fused")
                case = {
                    "shape": [B, T, V],
                    "dtype": str(dtype).replace("torch.", ""),
                    "traffic_bytes": traffic,
                    "rounds": args.rounds,
                    "load_avg_1m": [load_before, _load()],
                    "parallel_probe_ms": probes,
                    "contended_rounds": n_contended,
                    "contended": n_contended > 0,
                    "rows": rows,
                }
                if fused:
                    for other in ("eager", "compile", "liger"):
                        if other in by:  # ratios of the same round: drift between rounds cancels
                            ratios = _summary([a / b for a, b in zip(times[other], times["fused"])])
                            case[f"speedup_vs_{other}"] = ratios["median"]
                            case[f"speedup_vs_{other}_iqr"] = [ratios["q1"], ratios["q3"]]
                            case[f"speedup_vs_{other}_range"] = [ratios["min"], ratios["max"]]
                if device == "cuda" and fused:
                    copy_bw = copy_bandwidth(traffic, device, min_run_time)
                    case["copy_gbps"] = copy_bw / 1e9
                    case["fused_pct_of_copy"] = 100 * fused["gbps"] * 1e9 / copy_bw
                results.append(case)
                print(header if len(results) == 1 else "", end="\n" if len(results) == 1 else "")
                for r in rows:
                    if "error" in r:
                        print(f"{str((B, T, V)):>14} {case['dtype']:>8} {r['impl']:>8}  error: {r['error']}")
                        continue
                    ve = (
                        _median([a / b for a, b in zip(times["eager"], times[r["impl"]])])
                        if "eager" in by
                        else float("nan")
                    )
                    vc = (
                        _median([a / b for a, b in zip(times["compile"], times[r["impl"]])])
                        if "compile" in by
                        else float("nan")
                    )
                    iqr = f"{r['ms_q1']:.3f}-{r['ms_q3']:.3f}"
                    spread = f"{r['ms_min']:.3f}-{r['ms_max']:.3f}"
                    print(
                        f"{str((B, T, V)):>14} {case['dtype']:>8} {r['impl']:>8} {r['ms']:9.3f} {iqr:>17} {spread:>17} "
                        f"{ve:8.2f}x {vc:7.2f}x {r['gbps']:7.2f} {r['peak_mb']:8.1f}"
                    )
                if fused:
                    ranges = "; ".join(
                        f"vs {o} {case[f'speedup_vs_{o}']:.2f}x (rounds q1-q3 {case[f'speedup_vs_{o}_iqr'][0]:.2f}-"
                        f"{case[f'speedup_vs_{o}_iqr'][1]:.2f}, min-max {case[f'speedup_vs_{o}_range'][0]:.2f}-"
                        f"{case[f'speedup_vs_{o}_range'][1]:.2f})"
                        for o in ("eager", "compile", "liger")
                        if f"speedup_vs_{o}" in case
                    )
                    print(
                        f"{'':>14} {'':>8} {'fused':>8} {ranges}; load {case['load_avg_1m'][0]}"
                        f" -> {case['load_avg_1m'][1]}, parallel probe median {_median(probes):.2f} ms, max "
                        f"{max(probes):.2f} ms"
                        + (
                            f"  CONTENDED in {n_contended}/{len(probes)} rounds: other work held the CPUs, these "
                            "figures are not the kernels'"
                            if n_contended
                            else ""
                        )
                    )
                if "fused_pct_of_copy" in case:
                    print(
                        f"{'':>14} {'':>8} {'copy':>8} same-run device copy {case['copy_gbps']:.1f} GB/s; "
                        f"fused at {case['fused_pct_of_copy']:.1f}% of it"
                    )
        env["load_avg_1m_end"] = _load()
        cases_contended = sum(c["contended"] for c in results)
        if cases_contended:
            print(
                f"warning: {cases_contended} of {len(results)} cases had contended rounds (parallel probe > "
                f"{CONTENDED_PROBE_MS} ms); rerun on a quiet machine before quoting them"
            )
        for k, v in notes.items():
            print(f"note: {k}: {v}")
        out = out_dir / f"kd_kl_{device_tag(device)}{'_quick' if args.quick else ''}.json"
        write_text(out, json.dumps({"env": env, "notes": notes, "results": results}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
