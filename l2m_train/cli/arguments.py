"""Argument types the verbs share: argparse refuses a bad value in its error line (exit 2) before any work starts."""
from __future__ import annotations

import argparse
import math
import os

import torch

SEEDS = 2**64  # torch.manual_seed takes seeds below this


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < SEEDS:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^64), got {value}")
    return value


def temperature(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = greedy), got {value}")
    return value


def device(text: str) -> torch.device:
    """cpu, cuda or cuda:N, refused when this machine (or this torch build) has no such device."""
    try:
        found = torch.device(text)
    except RuntimeError:
        found = None
    if found is None or found.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a device: use cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if found.type == "cuda" else 0
    if found.type == "cuda" and count == 0:
        raise argparse.ArgumentTypeError(f"'{text}': no CUDA device here (or torch {torch.__version__} is built "
                                         "without CUDA): use cpu")
    if found.type == "cuda" and (found.index or 0) >= count:
        raise argparse.ArgumentTypeError(f"'{text}': this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return found


def default_threads() -> int:
    """Half the CPUs this process may use, at least 1. More threads than free cores stall OpenMP badly: on 2 cores
    that another process shares, a prompt took 110 s with 2 threads and 5.3 s with 1."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, usable // 2)


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=positive_int, default=default_threads(), help="torch CPU threads (default: "
                        "half the CPUs this process may use, at least 1, so that busy cores are not oversubscribed)")
