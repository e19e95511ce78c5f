#!/usr/bin/env python
"""Images/s the in-memory data path delivers alone over what the model consumes in training.

Data path: ``build_data(cfg).train_batches(epoch, B, rank=0, world_size=1)``, i.e. per-epoch
shuffling and augmentation parameters, per-batch index_select, pad-4 crop + flip gather
and normalization, exactly what the trainer iterates (CIFAR-10 from ``/work/shared/data``
when present, else synthetic data of CIFAR shape). Epochs roll over as they run out.

Model: one training step (forward + Eq. 3 loss + backward + SGD step) of the dual-path
model at the same batch, on random tensors. Both run in this process with the same
``torch.set_num_threads`` (1 by default: what each of K=2 torchrun workers gets on this
machine), interleaved round by round; the ratio is the median over rounds of
data images/s / model images/s.

    PYTHONPATH=. python bench/input_pipeline.py           # cnn_small and resnet18, batch 32
    PYTHONPATH=. python bench/input_pipeline.py --quick   # cnn_small only, < 30 s
    PYTHONPATH=. python bench/input_pipeline.py --device cuda --models resnet18 --batch 512 --amp bf16 --channels-last

``--amp`` / ``--channels-last`` apply to the model side only (the data path's output is
what the trainer feeds the model, before its own channels_last copy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
import torch

from _common import autocast, fmt_ratio, interleave, median, paired_ratio, print_machine, write_json
from dreg_dist.config.schema import DataConfig
from dreg_dist.data import build_data
from dreg_dist.dreg import DualPathModel
from dreg_dist.dreg.contrast import DRegObjective
from dreg_dist.models import build_model

TARGET = 5.0
CIFAR_ROOT = Path("/work/shared/data")


def data_config(args: argparse.Namespace) -> DataConfig:
    root = Path(getattr(args, "cifar_root", None) or CIFAR_ROOT)
    if not args.synthetic and (root / "cifar-10-batches-py").is_dir():
        return DataConfig(name="cifar10", root=str(root), val_size=5000)
    return DataConfig(name="synthetic", val_size=1000, synthetic_train_size=args.synthetic_size,
                      synthetic_test_size=100)


def data_reader(args: argparse.Namespace) -> tuple[Callable[[], None], Any]:
    data = build_data(data_config(args), seed=0, device=args.device, num_classes=10)
    state: dict[str, Any] = {"epoch": 0, "it": None}

    def batches() -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        while True:
            yield from data.train_batches(state["epoch"], args.batch, 0, 1)
            state["epoch"] += 1

    state["it"] = batches()

    def read() -> None:
        for _ in range(args.data_batches):
            x, y = next(state["it"])[0]
            assert x.shape[0] == args.batch and x.dtype == torch.float32
        if args.device == "cuda":
            torch.cuda.synchronize()

    return read, data


def model_stepper(arch: str, args: argparse.Namespace) -> Callable[[], None]:
    torch.manual_seed(0)
    memory_format = torch.channels_last if getattr(args, "channels_last", False) else torch.contiguous_format
    model = DualPathModel(build_model(arch, 10), "R1").to(args.device, memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    objective = DRegObjective()
    x = torch.randn(args.batch, 3, 32, 32, device=args.device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    amp = getattr(args, "amp", "none")

    def step() -> None:
        for _ in range(args.model_steps):
            with autocast(args.device, amp):
                logits_r, logits_l = model(x)
                loss = objective(logits_r, logits_l, y, model)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()

    return step


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn_small,resnet18", help="dual-path models whose consumption is compared")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data-batches", type=int, default=50, help="batches read per round")
    p.add_argument("--model-steps", type=int, default=1, help="training steps per round")
    p.add_argument("--synthetic", action="store_true", help="use synthetic data even when CIFAR-10 is present")
    p.add_argument("--synthetic-size", type=int, default=20000)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: data resident and augmented on the GPU (data.on_device default), model on the GPU")
    p.add_argument("--cifar-root", default=str(CIFAR_ROOT), help="folder containing cifar-10-batches-py/")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast the model's forward + loss")
    p.add_argument("--channels-last", action="store_true", help="model and its input in channels_last")
    p.add_argument("--quick", action="store_true", help="cnn_small only, 3 rounds")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds = "cnn_small", 3
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the data path and each model's step interleaved; print and return the figures."""
    t0 = time.perf_counter()
    read, data = data_reader(args)
    cfg = data_config(args)
    source = f"{cfg.name} ({data.train_size} training images{' from ' + cfg.root if cfg.name != 'synthetic' else ''})"
    print(f"input_pipeline: {source}, loaded in {time.perf_counter() - t0:.1f}s; batch {args.batch}, "
          f"threads {args.threads}, device {args.device}, augment {data.augment}, rounds {args.rounds} (+1 warm-up)")
    # Per-epoch set-up (shuffle + the augmentation parameters of every sample) happens on the
    # first batch of an epoch; it is timed here once and amortized over the epoch's batches.
    w0 = time.perf_counter()
    next(iter(data.train_batches(99, args.batch, 0, 1)))
    if args.device == "cuda":
        torch.cuda.synchronize()
    epoch_setup = time.perf_counter() - w0
    steps = data.steps_per_epoch(args.batch)
    print(f"per-epoch set-up + first batch: {1e3 * epoch_setup:.1f} ms, amortized over {steps} batches "
          f"({1e3 * epoch_setup / steps:.3f} ms per batch)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants: dict[str, Callable[[], None]] = {"data": read}
    for arch in models:
        variants[arch] = model_stepper(arch, args)
    times = interleave(variants, args.rounds, 1)
    # Each round's read time plus its share of the per-epoch set-up.
    per_batch_setup = epoch_setup / steps
    data_ips = [args.data_batches * args.batch / (t + args.data_batches * per_batch_setup)
                for t in times["data"]["wall"]]
    print(f"data path alone: {median(data_ips):,.0f} images/s ({1e3 * median(times['data']['wall']) / args.data_batches:.2f} "
          f"ms per batch of {args.batch}, plus the amortized epoch set-up)")
    results: dict[str, Any] = {"data_images_per_sec": data_ips, "source": cfg.name, "train_size": data.train_size,
                               "epoch_setup_s": epoch_setup, "models": {}}
    parts = []
    for arch in models:
        model_ips = [args.model_steps * args.batch / t for t in times[arch]["wall"]]
        ratio = paired_ratio(data_ips, model_ips)
        verdict = "met" if ratio["median"] >= TARGET else "NOT met"
        print(f"{arch:<10} dual-path training consumes {median(model_ips):8.1f} images/s -> data/model = "
              f"{fmt_ratio(ratio, 1)} [target >= {TARGET:.0f}x {verdict}]")
        results["models"][arch] = {"images_per_sec": model_ips, "ratio": ratio}
        parts.append(f"{arch} {ratio['median']:,.0f}x")
    results["summary_parts"] = parts
    return results


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    results = run(args)
    data_ips, parts = results["data_images_per_sec"], results.pop("summary_parts")
    _common.print_load()
    print(f"SUMMARY: input_pipeline {results['source']} batch {args.batch}: data path {median(data_ips):,.0f} img/s; "
          f"data/model " + ", ".join(parts) + f" (target >= {TARGET:.0f}x)")
    write_json(args.json, {"bench": "input_pipeline", "args": vars(args), **results})


if __name__ == "__main__":
    main()
