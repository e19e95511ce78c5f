#!/usr/bin/env python
"""Candidate fast paths for the dual-path step, measured against the shipped implementation.

(a) Both branches in one kernel. The DReg layer's input is a trunk tensor, so the two
    branch convolutions read the same input and can run as one:
    - ``stacked``: one ``conv2d`` with W^R and W^L stacked along the output channels
      (interleaved per group for a depthwise layer), output split back per path;
    - ``gemm``: the same as one im2col GEMM (``unfold`` once, ``[W^R; W^L] @ cols``), which
      also shares the im2col between the branches (groups=1 layers only).
    The downstream part is *not* run on a concatenated 2x batch: every preset's downstream
    holds a per-path norm (and mobilenet_v2's further BatchNorms), where concatenation would
    mix the paths' batch statistics; resnet18's / vgg16's per-sample tail after that norm
    (add, relu, pool, linear) is ~1% of the step, see the tail figure below.
(b) The contrast gradient applied analytically: the loss is CE_R + CE_L only, and after
    backward (in DDP: after the all-reduce; the term is identical on every rank) the
    literal-form gradient -/+ 2 lambda (W^R - W^L) is added to W^R.grad / W^L.grad.

Each candidate is an fx rewrite of a ``DualPathModel``'s graph made here (the library is
unchanged); all are timed interleaved with the stock dual path and the vanilla model, and
checked to give the stock outputs and gradients (max abs difference printed).

    PYTHONPATH=. python bench/fast_paths.py           # layer table + resnet18, vgg16 steps at batch 32
    PYTHONPATH=. python bench/fast_paths.py --quick   # vgg16 at batch 16, < 30 s
"""

from __future__ import annotations

import argparse
import copy
import operator
from typing import Any, Callable

import _common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from _common import fmt_ratio, interleave, median, paired_ratio, print_machine, write_json
from dreg_dist.config.schema import OptimConfig
from dreg_dist.dreg import DualPathModel
from dreg_dist.dreg.contrast import DRegObjective
from dreg_dist.dreg.dual_path import _compile_graph, build_path_graph, trace
from dreg_dist.models import build_model
from dreg_dist.optim import build_optimizer

WIN = 0.97
"""A candidate 'wins clearly' when its median step time is below this fraction of the stock
dual path's and it was faster in every round."""


# --------------------------------------------------------------------------- (a) kernels
def stacked_conv(x: Tensor, w_r: Tensor, w_l: Tensor, b_r: Any, b_l: Any, stride: Any, padding: Any,
                 dilation: Any, groups: int) -> tuple[Tensor, Tensor]:
    cout = w_r.shape[0]
    bias = torch.cat([b_r, b_l]) if b_r is not None else None
    if groups == 1:
        out = F.conv2d(x, torch.cat([w_r, w_l]), bias, stride, padding, dilation)
        return out[:, :cout], out[:, cout:]
    per = cout // groups  # interleave per group: group g yields [R outputs, L outputs]
    w = torch.stack([w_r.view(groups, per, *w_r.shape[1:]), w_l.view(groups, per, *w_l.shape[1:])], 1)
    if bias is not None:
        bias = torch.stack([b_r.view(groups, per), b_l.view(groups, per)], 1).reshape(-1)
    out = F.conv2d(x, w.reshape(2 * cout, *w_r.shape[1:]), bias, stride, padding, dilation, groups)
    b, _, h, wd = out.shape
    out = out.view(b, groups, 2, per, h, wd)
    return out[:, :, 0].reshape(b, cout, h, wd), out[:, :, 1].reshape(b, cout, h, wd)


def gemm_conv(x: Tensor, w_r: Tensor, w_l: Tensor, b_r: Any, b_l: Any, stride: Any, padding: Any,
              dilation: Any, groups: int) -> tuple[Tensor, Tensor]:
    assert groups == 1
    cout, cin, kh, kw = w_r.shape
    b, _, h, w = x.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [b, cin*kh*kw, L]
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = torch.matmul(torch.cat([w_r, w_l]).view(2 * cout, -1), cols).view(b, 2 * cout, ho, wo)
    if b_r is not None:
        out = out + torch.cat([b_r, b_l]).view(1, -1, 1, 1)
    return out[:, :cout], out[:, cout:]


def fuse_branches(dual: DualPathModel, kernel: Callable[..., tuple[Tensor, Tensor]]) -> DualPathModel:
    """A copy of ``dual`` whose two-path forward computes both branch convs with ``kernel``."""
    fused = copy.deepcopy(dual)
    layer = fused.layer_path
    conv = fused.net.get_submodule(layer)
    if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{layer} is not a zero-padded Conv2d")
    graph = build_path_graph(trace(fused.net).graph, fused.site, ("R", "L"), fused.per_path_norm)
    node_r = next(n for n in graph.nodes if n.op == "call_module" and n.target == f"net.{layer}")
    node_l = next(n for n in graph.nodes if n.op == "call_module" and n.target == "branch_L")
    assert node_r.args[0] is node_l.args[0], "both branches must read the same trunk tensor"
    with graph.inserting_before(node_r):
        w_r, w_l = graph.get_attr(f"net.{layer}.weight"), graph.get_attr("branch_L.weight")
        b_r = graph.get_attr(f"net.{layer}.bias") if conv.bias is not None else None
        b_l = graph.get_attr("branch_L.bias") if conv.bias is not None else None
        both = graph.call_function(kernel, (node_r.args[0], w_r, w_l, b_r, b_l, conv.stride, conv.padding,
                                            conv.dilation, conv.groups))
        out_r = graph.call_function(operator.getitem, (both, 0))
        out_l = graph.call_function(operator.getitem, (both, 1))
    node_r.replace_all_uses_with(out_r)
    node_l.replace_all_uses_with(out_l)
    graph.erase_node(node_r)
    graph.erase_node(node_l)
    graph.lint()
    fused._forwards = dict(fused._forwards)
    fused._forwards[("R", "L")] = _compile_graph(graph)
    return fused


# --------------------------------------------------------------------------- steps
def make_step(model: nn.Module, mode: str, x: Tensor, y: Tensor, lam: float) -> Callable[[], None]:
    """mode: vanilla | autograd (stock objective) | analytic (contrast gradient added after backward)."""
    opt = build_optimizer(model, OptimConfig(), lr=0.01)
    objective = DRegObjective(lam=lam)

    def step() -> None:
        if mode == "vanilla":
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        else:
            logits_r, logits_l = model(x)
            if mode == "autograd":
                loss, _ = objective(logits_r, logits_l, y, model)  # type: ignore[arg-type]
                loss.backward()
            else:
                (F.cross_entropy(logits_r, y) + F.cross_entropy(logits_l, y)).backward()
                add_contrast_grad(model, lam)  # type: ignore[arg-type]
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


@torch.no_grad()
def add_contrast_grad(model: DualPathModel, lam: float) -> None:
    """Gradient of -lam * ||W^R - W^L||^2 (literal form, sum reduction), added in place."""
    w_r, w_l = model.branch_weights()
    diff = w_r - w_l
    w_r.grad.add_(diff, alpha=-2.0 * lam)
    w_l.grad.add_(diff, alpha=2.0 * lam)


def grads_of(model: nn.Module, mode: str, x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(logits_R, logits_L, parameter grads) of one stock-objective backward, BN buffers restored."""
    probe = copy.deepcopy(model)
    torch.manual_seed(0)  # same dropout masks (mobilenet_v2's classifier) for every candidate
    logits_r, logits_l = probe(x)
    if mode == "analytic":
        (F.cross_entropy(logits_r, y) + F.cross_entropy(logits_l, y)).backward()
        add_contrast_grad(probe, lam)  # type: ignore[arg-type]
    else:
        DRegObjective(lam=lam)(logits_r, logits_l, y, probe)[0].backward()  # type: ignore[arg-type]
    return logits_r.detach(), logits_l.detach(), [p.grad.detach().clone() for p in probe.parameters()]


def max_diff(a: tuple[Tensor, Tensor, list[Tensor]], b: tuple[Tensor, Tensor, list[Tensor]]) -> float:
    out = max((a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item())
    return max([out] + [(ga - gb).abs().max().item() for ga, gb in zip(a[2], b[2])])


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    plain = build_model(arch, 10).train()
    dual = DualPathModel(build_model(arch, 10), "R1").train()
    conv = dual.net.get_submodule(dual.layer_path)
    candidates: dict[str, tuple[nn.Module, str]] = {"analytic_contrast": (dual, "analytic")}
    candidates["stacked_conv"] = (fuse_branches(dual, stacked_conv), "autograd")
    if isinstance(conv, nn.Conv2d) and conv.groups == 1:
        candidates["gemm_conv"] = (fuse_branches(dual, gemm_conv), "autograd")
    reference = grads_of(dual, "autograd", x, y, args.lam)
    diffs = {name: max_diff(grads_of(m, mode, x, y, args.lam), reference) for name, (m, mode) in candidates.items()}
    # Separate model copies per variant so that optimizer state and BN buffers are not shared.
    variants = {"vanilla": make_step(plain, "vanilla", x, y, args.lam),
                "dreg": make_step(dual, "autograd", x, y, args.lam)}
    for name, (m, mode) in candidates.items():
        variants[name] = make_step(copy.deepcopy(m), mode, x, y, args.lam)
    times = interleave(variants, args.rounds, args.warmup_rounds)
    clock = args.clock
    ms = {k: 1e3 * median(v[clock]) for k, v in times.items()}
    over = paired_ratio(times["dreg"][clock], times["vanilla"][clock])
    print(f"{arch:<13} layer {dual.layer_path} {tuple(conv.weight.shape)} groups {conv.groups}, batch {args.batch}: "
          f"vanilla {ms['vanilla']:.1f} ms, dreg (stock) {ms['dreg']:.1f} ms ({clock} clock); "
          f"dreg/vanilla {over['median']:.3f}")
    out: dict[str, Any] = {"arch": arch, "layer": dual.layer_path, "ms": ms, "dreg_over_vanilla": over,
                           "candidates": {}}
    for name in candidates:
        r = paired_ratio(times[name][clock], times["dreg"][clock])
        vs_vanilla = paired_ratio(times[name][clock], times["vanilla"][clock])
        wins = r["median"] < WIN and r["max"] < 1.0
        verdict = "WINS" if wins else "no clear win"
        print(f"{'':<13} {name:<18} {ms[name]:8.1f} ms  candidate/stock = {fmt_ratio(r)}  "
              f"(over vanilla {vs_vanilla['median']:.3f}; max |diff| vs stock {diffs[name]:.1e}) -> {verdict}")
        out["candidates"][name] = {"ratio_vs_stock": r, "ratio_vs_vanilla": vs_vanilla, "max_abs_diff": diffs[name],
                                   "wins": wins}
    return out


def layer_micro(args: argparse.Namespace) -> None:
    """The DReg layers alone (forward + backward of both branches), and one plain conv as GEMM."""
    print("layer alone (fwd+bwd, both branches; 'one conv' = the vanilla layer):")
    shapes = {"resnet18 layer4.1.conv2": (512, 512, 4, 1), "vgg16 features.40": (512, 512, 2, 1),
              "mobilenet_v2 features.17.conv.1.0": (960, 960, 4, 960)}
    for name, (cin, cout, hw, groups) in shapes.items():
        x = torch.randn(args.batch, cin, hw, hw, requires_grad=True)
        w_r = torch.randn(cout, cin // groups, 3, 3, requires_grad=True)
        w_l = torch.randn(cout, cin // groups, 3, 3, requires_grad=True)
        g = torch.randn(args.batch, cout, hw, hw)
        args3 = (None, None, (1, 1), (1, 1), (1, 1), groups)

        def run(fn: Callable[[], Any]) -> Callable[[], None]:
            def call() -> None:
                for _ in range(args.micro_reps):
                    fn()
                    x.grad = w_r.grad = w_l.grad = None
            return call

        fns = {
            "one conv": run(lambda: F.conv2d(x, w_r, None, 1, 1, 1, groups).backward(g)),
            "separate": run(lambda: torch.autograd.backward(
                [F.conv2d(x, w_r, None, 1, 1, 1, groups), F.conv2d(x, w_l, None, 1, 1, 1, groups)], [g, g])),
            "stacked": run(lambda: torch.autograd.backward(list(stacked_conv(x, w_r, w_l, *args3)), [g, g])),
        }
        if groups == 1:
            fns["gemm"] = run(lambda: torch.autograd.backward(list(gemm_conv(x, w_r, w_l, *args3)), [g, g]))
            fns["one conv as gemm"] = run(lambda: torch.matmul(
                w_r.view(cout, -1), F.unfold(x, 3, padding=1)).view_as(g).backward(g))
        t = interleave(fns, args.rounds, 1)
        ms = {k: 1e3 * median(v[args.clock]) / args.micro_reps for k, v in t.items()}
        print(f"  {name:<36} " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="resnet18,vgg16",
                   help="end-to-end steps (mobilenet_v2's depthwise layer only has 'stacked', see the layer table)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--micro-reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default=None)
    p.add_argument("--quick", action="store_true", help="vgg16 at batch 16, 3 rounds, no layer table (< 30 s)")
    p.add_argument("--no-layer-table", action="store_true", help="skip the layer-alone timings")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.quick:
        args.archs, args.batch, args.rounds = "vgg16", 16, 3
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 else "wall"
    torch.set_num_threads(args.threads)
    print_machine()
    print(f"fast_paths: batch {args.batch}, threads {args.threads}, clock {args.clock}, rounds {args.rounds} "
          f"(+{args.warmup_rounds} warm-up), win = candidate/stock median < {WIN} and < 1 in every round")
    if not (args.quick or args.no_layer_table):
        layer_micro(args)
    results = [run_arch(a.strip(), args) for a in args.archs.split(",") if a.strip()]
    parts = []
    for r in results:
        best = min(r["candidates"].items(), key=lambda kv: kv[1]["ratio_vs_stock"]["median"])
        parts.append(f"{r['arch']} best {best[0]} {best[1]['ratio_vs_stock']['median']:.3f}x stock"
                     f"{' (WIN)' if best[1]['wins'] else ''}")
    _common.print_load()
    print("SUMMARY: fast_paths candidate/stock dual-path step time: " + "; ".join(parts))
    write_json(args.json, {"bench": "fast_paths", "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
