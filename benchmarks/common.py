"""What the model benchmarks share: the device flags, peak memory and peak FLOP/s, the models' configs, worker
processes (one per model, so that each has its own peak memory), the table and the JSON record."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table
from torch.optim import Optimizer

from l2m_train.config import Config, load_config
from l2m_train.model import MemoryDecoder
from l2m_train.train.compile import compile_segment_step
from l2m_train.train.optim import adamw
from l2m_train.train.peak_flops import device_peak_flops
from l2m_train.train.segment_backward import lm_forward

# The four models of issue 7, one backbone: (name, config overrides). A kind's overrides come after the user's, so a
# memory key given for every kind (model.memory.slots=4) is reset to its default for the kinds that do not use it.
KINDS = {
    "none-local": ["model.memory.kind=none"],
    "none-full": ["model.memory.kind=none", "model.attention=full"],
    "rmt": ["model.memory.kind=rmt"],
    "lm2": ["model.memory.kind=lm2"],
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def add_benchmark_arguments(parser: argparse.ArgumentParser, json_name: str) -> None:
    """What every worker-based benchmark takes: device, threads, peak, output, the worker switch and config overrides."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: fp32, peak memory = the process's peak RSS; cuda: bf16 autocast, peak memory = "
                             "torch.cuda.max_memory_allocated (default: cpu)")
    # One thread: on a busy machine, 2 OpenMP threads on 2 shared cores stalled steps by up to 30× (docs/benchmarks.md).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per model (default: 1)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for MFU (default: the dense bf16 peak "
                                                           "of a known GPU, l2m_train/train/peak_flops.py; none on CPU, so MFU is n/a)")
    parser.add_argument("--json", default=f"benchmarks/out/{json_name}", help="where to write the results (default: %(default)s)")
    # cuDNN's attention builds an execution plan per new shape; decoding changes the key length at every token.
    parser.add_argument("--no-cudnn-sdpa", dest="cudnn_sdpa", action="store_false", help="CUDA: keep scaled_dot_product_"
                        "attention off its cuDNN backend (flash or memory-efficient attention instead)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # set by start_workers for the child processes
    parser.add_argument("overrides", nargs="*", help="config overrides on top of the benchmark's defaults")


def setup(device: str, threads: int, cudnn_sdpa: bool = True) -> torch.device:
    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    torch.backends.cuda.enable_cudnn_sdp(cudnn_sdpa)
    return torch.device(device)


def worker_arguments(args: argparse.Namespace) -> list[str]:
    """The arguments of add_benchmark_arguments that a worker process takes from its parent (overrides not included)."""
    return [f"--device={args.device}", f"--threads={args.threads}", *([] if args.cudnn_sdpa else ["--no-cudnn-sdpa"])]


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (as `train.precision=auto` trains there), fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """CUDA only: the CPU's peak RSS is a high-water mark of the whole process and cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def runtime_mb(device: torch.device) -> float:
    """What the peak counts before any model exists: 0 on CUDA; the resident Python and torch runtime on CPU."""
    if device.type == "cuda":
        return 0.0
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device for MFU: the override, else the dense bf16 peak of a known GPU, else None (CPU)."""
    return override_tflops * 1e12 if override_tflops else device_peak_flops(device)


def build(overrides: list[str], device: torch.device, optimizer: bool = True) -> tuple[Config, MemoryDecoder, Optimizer | None]:
    """(config, model, AdamW or None) for the quickstart config under `overrides`, the model on `device` (its
    per-segment step compiled under train.compile=true, as training does)."""
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = MemoryDecoder(cfg.model).to(device)
    if cfg.train.compile:
        compile_segment_step(model)
    return cfg, model, adamw(model, cfg.optim) if optimizer else None


def train_step(model: MemoryDecoder, opt: Optimizer, tokens: torch.Tensor, cfg: Config, device: torch.device) -> None:
    """One optimizer step as LM2Module takes it: next-token loss over the whole sample, with the backward of each segment
    the BPTT window cuts off taken as soon as it is computed (train/segment_backward.py), clipping, AdamW.
    tokens: B × (T + 1)."""
    with autocast(device):
        loss = lm_forward(model, tokens[:, :-1], tokens[:, 1:], early_params=list(model.parameters())).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    opt.step()


def memory_description(device: torch.device) -> str:
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (ru_maxrss), Python and torch included"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({torch.cuda.device_count()} visible), CPU {cpu_model()}"
    return f"{cpu_model()}, {os.cpu_count()} cores, no GPU used"


class Worker:
    """A child process (this script with `--worker NAME`) that answers JSON requests line by line.

    One per model: each has its own peak memory, and the parent can interleave their runs so that machine
    noise hits every model alike. A child killed by a signal (on CPU, the kernel's OOM killer) answers None;
    one that failed otherwise stops the benchmark (its traceback is on stderr)."""

    def __init__(self, script: str, name: str, args: list[str]):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, script, "--worker", name, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ready(self) -> None:
        if self.ask({}) is None:
            raise SystemExit(f"the {self.name} worker was killed while starting")

    def ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        if self.proc.wait() < 0:
            return None
        raise SystemExit(f"the {self.name} worker failed with exit code {self.proc.returncode}")

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.wait()


def start_workers(script: str, names: list[str], args: list[str]) -> dict[str, Worker]:
    """One worker per model, all started before any measures: none imports or builds while another is timed."""
    workers = {name: Worker(script, name, args) for name in names}
    for w in workers.values():
        w.ready()
    return workers


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """The worker's side: one JSON answer on stdout per JSON request on stdin (everything else goes to stderr).
    An empty request is a ping, answered once the worker is ready."""
    out, sys.stdout = sys.stdout, sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        out.write(json.dumps(handle(request) if request else {}) + "\n")
        out.flush()


def is_oom(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's refusal (the kernel may kill the process first)."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def release(device: torch.device) -> None:
    """Give cached CUDA blocks back, so that an idle worker leaves the GPU to the others."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(title: str, columns: list[str], rows: list[list[str]], caption: str = "") -> None:
    table = Table(title=title, caption=caption)
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def write_json(path: str, device: torch.device, args: argparse.Namespace, results: dict[str, Any]) -> None:
    record = {"machine": machine(device), "device": device.type, "torch": torch.__version__, "threads": args.threads,
              "command": shlex.join(["python", *sys.argv]), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "peak_memory": memory_description(device), **results}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
