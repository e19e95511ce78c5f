"""The dual-path model: one layer replicated into W^R and W^L, everything else shared.

How it is built (once, at start-up, like Composer's model surgery):

1. ``torch.fx.symbolic_trace`` the plain model.
2. Mark the *downstream* nodes: the DReg layer's call and every node that depends on
   its output. Everything else is the *trunk* and is computed once per batch.
3. Emit a new graph that walks the original nodes in order, copying each trunk node
   once and each downstream node once per path. In path L the DReg layer's call goes
   to ``branch_L`` (and, with ``norm="per_path"``, the norm right after it goes to
   ``norm_L``). Residual additions inside the same block are downstream nodes, so
   they are evaluated per path with the shared identity tensor from the trunk.
   Keeping the original order (rather than "trunk first") preserves the order of any
   in-place op on trunk tensors; in-place ops of a downstream node that would mutate
   a trunk tensor (``out += identity`` with the layer in the shortcut) are rewritten
   out of place, so path L never sees path R's result.
4. The graph is turned into Python source with ``root_module="self"`` and bound to this
   wrapper, so module look-ups happen at call time: converting BN to SyncBN, moving
   to a device or compiling later all see the live modules.

W^R lives at its original place inside ``self.net`` (so path R *is* the plain model);
W^L is ``self.branch_L``. The state_dict therefore holds ``net.*``, ``branch_L.*``
and, for a per-path norm, ``norm_L.*`` (the norm right after the layer: own affine and
statistics) and ``stats_L.*`` (every later norm layer with running statistics: path L's
own statistics, affine parameters shared with path R), so each path's statistics come
from its own activations alone and the exported path carries only its own.

Supported models: anything ``torch.fx.symbolic_trace`` can trace without
data-dependent Python control flow, whose DReg layer is a Conv2d or Linear called
once: the CIFAR resnet18 / vgg16 / mobilenet_v2 / cnn_small presets and torchvision's
ResNet, ResNeXt, Wide-ResNet, VGG, MobileNetV2/V3, EfficientNet, RegNet, ConvNeXt,
DenseNet, ShuffleNet, MNASNet and SqueezeNet families. Not supported: GoogLeNet and
Inception v3 (their auxiliary heads branch on ``self.training``).
"""

from __future__ import annotations

import copy
import math
import operator
from typing import Any, Callable, Literal, Optional, Union, get_args

import torch
import torch.fx as fx
from torch import nn

from dreg_dist.dreg import defaults
from dreg_dist.dreg.layer_select import DRegSite, resolve_layer

Path = Literal["R", "L"]
NormMode = Literal["per_path", "shared"]
PATHS: tuple[Path, Path] = ("R", "L")

_INPLACE_FUNCTIONS: dict[Any, Any] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}


class UnsupportedModelError(ValueError):
    """The model cannot be turned into a dual-path model."""


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``, with an error that says what is supported."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnsupportedModelError(
            f"{type(model).__name__} cannot be traced by torch.fx ({reason[:160]}); DReg needs a "
            "model without data-dependent control flow in forward, e.g. resnet18, vgg16, "
            "mobilenet_v2, cnn_small or a torchvision ResNet/VGG/MobileNet/EfficientNet"
        ) from None


def _downstream_nodes(graph: fx.Graph, layer_node: fx.Node) -> set[fx.Node]:
    downstream = {layer_node}
    for node in graph.nodes:
        if node is not layer_node and any(a in downstream for a in node.all_input_nodes):
            downstream.add(node)
    return downstream


def _make_out_of_place(node: fx.Node, first_arg_is_trunk: bool) -> None:
    if not first_arg_is_trunk:
        return
    if node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
        node.target = _INPLACE_FUNCTIONS[node.target]
    elif node.op == "call_method" and isinstance(node.target, str):
        name = node.target
        if name.endswith("_") and not name.endswith("__"):
            node.target = name[:-1]


def stats_key(module_path: str) -> str:
    """The ``stats_L`` key of a downstream norm layer (ModuleDict keys cannot hold dots)."""
    return module_path.replace(".", "__")


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (a copy: later in-place ops must not see a view made here);
    multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``scale``."""
    return _ScaleGrad.apply(x, scale)


def build_path_graph(
    source: fx.Graph, site: DRegSite, paths: tuple[Path, ...], per_path_norm: bool,
    stats_paths: frozenset[str] = frozenset(), branch_grad_scale: float = 1.0,
) -> fx.Graph:
    """A graph computing ``paths`` with a shared trunk; module targets get the ``net.`` prefix.

    ``stats_paths``: downstream norm layers that path L calls through its own statistics
    copy ``stats_L.<key>`` (same affine parameters, own running statistics).
    ``branch_grad_scale`` (s): each path's own modules (the DReg layer and a per-path norm)
    get s times the gradient that reaches them and the trunk tensor entering the layer gets
    1/s of what comes back through it, so the modules both paths share keep the scale of
    the loss (see :class:`DualPathModel`).
    """
    layer_node = next(
        n for n in source.nodes if n.op == "call_module" and n.target == site.layer_path
    )
    downstream = _downstream_nodes(source, layer_node)
    # The last node of each path's own modules: where its gradient is scaled up.
    own_end = layer_node
    if per_path_norm:
        own_end = next(n for n in source.nodes if n.op == "call_module" and n.target == site.norm_path)
    scaled_inputs: dict[fx.Node, fx.Node] = {}
    graph = fx.Graph()
    shared: dict[fx.Node, fx.Node] = {}
    per_path: dict[str, dict[fx.Node, fx.Node]] = {p: {} for p in paths}

    def retarget(new: fx.Node, old: fx.Node, path: Optional[str]) -> None:
        if old.op not in ("call_module", "get_attr"):
            return
        if path == "L" and old is layer_node:
            new.target = "branch_L"
        elif path == "L" and per_path_norm and old.op == "call_module" and old.target == site.norm_path:
            new.target = "norm_L"
        elif path == "L" and old.op == "call_module" and old.target in stats_paths:
            new.target = f"stats_L.{stats_key(str(old.target))}"
        else:
            new.target = f"net.{old.target}"

    output_node: Optional[fx.Node] = None
    for node in source.nodes:
        if node.op == "output":
            output_node = node
            continue
        if node not in downstream:
            new = graph.node_copy(node, lambda n: shared[n])
            retarget(new, node, None)
            shared[node] = new
            continue
        for path in paths:
            env = per_path[path]

            def arg(n: fx.Node, env: dict[fx.Node, fx.Node] = env) -> fx.Node:
                if n in downstream:
                    return env[n]
                if node is not layer_node or branch_grad_scale == 1.0:
                    return shared[n]
                if n not in scaled_inputs:
                    scaled_inputs[n] = graph.call_function(scale_grad, (shared[n], 1.0 / branch_grad_scale))
                return scaled_inputs[n]

            new = graph.node_copy(node, arg)
            retarget(new, node, path)
            first = node.args[0] if node.args else None
            _make_out_of_place(new, isinstance(first, fx.Node) and first not in downstream)
            if node is own_end and branch_grad_scale != 1.0:
                new = graph.call_function(scale_grad, (new, branch_grad_scale))
            env[node] = new
    assert output_node is not None
    results = []
    for path in paths:
        env = per_path[path]
        mapped = fx.map_arg(
            output_node.args[0], lambda n, env=env: env[n] if n in downstream else shared[n]
        )
        results.append(mapped)
    graph.output(results[0] if len(paths) == 1 else tuple(results))
    graph.lint()
    return graph


def _compile_graph(graph: fx.Graph) -> Callable[..., Any]:
    code = graph.python_code(root_module="self")
    namespace: dict[str, Any] = dict(code.globals)
    exec(compile(code.src, "<dreg-dual-path>", "exec"), namespace)
    return namespace["forward"]


def _perturbed_copy(layer: nn.Module, init_scale: float, seed: int) -> nn.Module:
    """W^L = W^R + init_scale * rms(W^R) * N(0, 1), from a seeded CPU generator.

    The noise comes from its own generator (not the global RNG), so it is the same on
    every worker and does not shift any other random stream.
    """
    branch = copy.deepcopy(layer)
    weight = branch.weight
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
    with torch.no_grad():
        rms = weight.detach().float().pow(2).mean().sqrt()
        weight.add_((noise.to(weight.device) * init_scale * rms).to(weight.dtype))
    return branch


def _has_running_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def _stats_copy(norm: nn.Module) -> nn.Module:
    """A copy of ``norm`` with its own running statistics and the *same* affine parameters."""
    twin = copy.deepcopy(norm)
    for name in ("weight", "bias"):
        if getattr(norm, name, None) is not None:
            setattr(twin, name, getattr(norm, name))
    return twin


class DualPathModel(nn.Module):
    """A plain classifier with its DReg layer replicated into two branches.

    ``forward(x)`` returns ``(logits_R, logits_L)``; ``forward(x, path="R")`` (or "L")
    runs one path only. In every mode the trunk before the layer runs once.

    ``branch_grad_scale``: a loss that *averages* the two paths' losses gives the shared
    modules the scale of a plain model's gradient but each path's own modules (its DReg
    layer and per-path norm) only half of their path's; 2 gives those modules their path's
    whole gradient back and leaves the shared ones as they were, so that with identical
    branches and no contrast each path trains exactly like the plain model
    (``DRegObjective(ce_reduction="per_path")``). Only the backward pass of ``forward(x)``
    changes; a single path (``path="R"``) is the plain model's, gradients included. The
    default matches :class:`~dreg_dist.dreg.DRegObjective`'s default ``ce_reduction``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str = defaults.LAYER,
        *,
        norm: NormMode = defaults.NORM,  # type: ignore[assignment]
        init_scale: float = defaults.INIT_SCALE,
        seed: int = 0,
        branch_grad_scale: float = defaults.branch_grad_scale(defaults.CE_REDUCTION),
    ) -> None:
        super().__init__()
        if norm not in get_args(NormMode):
            raise ValueError(f"dreg.norm must be one of {get_args(NormMode)}, got {norm!r}")
        if not (branch_grad_scale > 0 and math.isfinite(branch_grad_scale)):
            raise ValueError(f"branch_grad_scale must be a positive number, got {branch_grad_scale}")
        self.branch_grad_scale = float(branch_grad_scale)
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(
                f"dreg.init_scale must be > 0 (got {init_scale}): with identical branches the "
                "contrast gradient is zero and the paths never separate; try 0.01"
            )
        traced = trace(model)
        self.site = resolve_layer(traced, layer)
        self.layer_spec = layer
        self.norm_mode = norm
        self.net = model
        self.branch_L = _perturbed_copy(model.get_submodule(self.site.layer_path), init_scale, seed)
        self.per_path_norm = norm == "per_path" and self.site.norm_path is not None
        if self.per_path_norm:
            self.norm_L = copy.deepcopy(model.get_submodule(self.site.norm_path))
        layer_node = next(
            n for n in traced.graph.nodes
            if n.op == "call_module" and n.target == self.site.layer_path
        )
        # Under per_path every later norm layer with running statistics also gets path L its
        # own statistics (its affine parameters stay shared, as the paper shares the rest of the
        # network): a shared one would see both paths' activations each step, move twice as
        # fast, and the exported path would carry a mix of both.
        self.stats_paths: tuple[str, ...] = ()
        if norm == "per_path":
            downstream = _downstream_nodes(traced.graph, layer_node)
            self.stats_paths = tuple(dict.fromkeys(
                str(n.target) for n in traced.graph.nodes
                if n in downstream and n.op == "call_module" and n.target not in (self.site.layer_path,
                                                                                   self.site.norm_path)
                and _has_running_stats(model.get_submodule(str(n.target)))
            ))
        self.stats_L = nn.ModuleDict({stats_key(p): _stats_copy(model.get_submodule(p)) for p in self.stats_paths})
        self._register_load_state_dict_pre_hook(self._stats_from_earlier_release)
        out_node = next(n for n in traced.graph.nodes if n.op == "output")
        if not any(n in _downstream_nodes(traced.graph, layer_node) for n in out_node.all_input_nodes):
            raise UnsupportedModelError(
                f"dreg.layer '{self.site.layer_path}' does not influence the model output; "
                "choose a layer on the path to the logits"
            )
        # Plain functions taking ``self``: not submodules, so nothing is registered twice.
        self._forwards: dict[tuple[Path, ...], Callable[..., Any]] = {
            paths: _compile_graph(build_path_graph(traced.graph, self.site, paths, self.per_path_norm,
                                                   frozenset(self.stats_paths),
                                                   self.branch_grad_scale if len(paths) == 2 else 1.0))
            for paths in (("R", "L"), ("R",), ("L",))
        }

    def _stats_from_earlier_release(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """A state_dict written before path L had its own downstream statistics (no ``stats_L``
        keys) loads with path L starting from the shared statistics it had then."""
        for p in self.stats_paths:
            ours = f"{prefix}stats_L.{stats_key(p)}."
            if any(k.startswith(ours) for k in state_dict):
                continue
            shared = f"{prefix}net.{p}."
            for key in [k for k in state_dict if k.startswith(shared)]:
                state_dict[ours + key[len(shared):]] = state_dict[key]

    @property
    def layer_path(self) -> str:
        return self.site.layer_path

    def branch_weights(self) -> tuple[nn.Parameter, nn.Parameter]:
        """(W^R, W^L): the weights the contrast term is computed on."""
        return self.net.get_submodule(self.site.layer_path).weight, self.branch_L.weight

    def branch_modules(self, path: Path) -> dict[str, nn.Module]:
        """Original module path -> the module that plays that role in ``path``."""
        modules = {self.site.layer_path: self.net.get_submodule(self.site.layer_path)}
        if self.per_path_norm:
            modules[self.site.norm_path] = self.net.get_submodule(self.site.norm_path)
        for p in self.stats_paths:
            modules[p] = self.stats_L[stats_key(p)] if path == "L" else self.net.get_submodule(p)
        if path == "L":
            modules[self.site.layer_path] = self.branch_L
            if self.per_path_norm:
                modules[self.site.norm_path] = self.norm_L
        return modules

    def forward(self, *args: Any, path: Union[Path, Literal["both"]] = "both") -> Any:
        if path == "both":
            return self._forwards[("R", "L")](self, *args)
        if path not in PATHS:
            raise ValueError(f"path must be 'R', 'L' or 'both', got {path!r}")
        return self._forwards[(path,)](self, *args)

    def extra_repr(self) -> str:
        return f"dreg_layer={self.site.layer_path}, norm={self.norm_mode}"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model

