"""Best-path export: a dual-path model -> an ordinary model of the original architecture.

After training, the path with the higher validation accuracy is kept (Figure 1d of the
paper). The export directory holds three files:

* ``model_state.pt``: the plain ``state_dict`` (loads with ``strict=True`` into the model
  that ``dreg_dist.models.build_model(arch, num_classes)`` returns);
* ``model.pt2``: a ``torch.export`` program of the eval-mode model, loadable with PyTorch
  alone (``torch.export.load(path).module()``), dynamic in the batch dimension;
* ``meta.json``: architecture, classes, chosen path, DReg layer, the validation
  accuracies the choice was made on, and the input normalization.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path as FsPath
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from dreg_dist.dreg.dual_path import DualPathModel, Path
from dreg_dist.io import atomic_write, atomic_write_text

PathChoice = Union[Path, Literal["auto"]]

STATE_FILE = "model_state.pt"
PROGRAM_FILE = "model.pt2"
META_FILE = "meta.json"


def choose_path(val_acc: Mapping[str, float], path: PathChoice = "auto") -> Path:
    """``R`` or ``L``: the given one, or for ``auto`` the higher validation accuracy (ties: R)."""
    if path in ("R", "L"):
        return path  # type: ignore[return-value]
    if path != "auto":
        raise ValueError(f"path must be 'auto', 'R' or 'L', got {path!r}")
    missing = [p for p in ("R", "L") if p not in val_acc]
    if missing:
        raise ValueError(
            f"path 'auto' needs the validation accuracy of both paths (missing {missing}); "
            "evaluate first or pass path='R' or 'L'"
        )
    return "L" if val_acc["L"] > val_acc["R"] else "R"


def path_state_dict(model: DualPathModel, path: Path) -> dict[str, Tensor]:
    """The plain model's state_dict with ``path``'s branch (and per-path norm) in place."""
    state = {k: v.detach().clone() for k, v in model.net.state_dict().items()}
    for module_path, module in model.branch_modules(path).items():
        for key, value in module.state_dict().items():
            state[f"{module_path}.{key}"] = value.detach().clone()
    return state


def plain_model(model: DualPathModel, path: Path) -> nn.Module:
    """A deep copy of the original architecture carrying ``path``'s weights."""
    plain = copy.deepcopy(model.net)
    plain.load_state_dict(path_state_dict(model, path), strict=True)
    return plain


def export_program(plain: nn.Module, example: Tensor, file: Union[str, os.PathLike[str]]) -> None:
    """Save (atomically) a ``torch.export`` program of ``plain`` in eval mode, batch dimension dynamic."""
    was_training = plain.training
    plain.eval()
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(plain, (example,), dynamic_shapes=({0: batch},))
    except Exception:
        # Some architectures specialize on the batch size; a fixed-shape program still runs.
        program = torch.export.export(plain, (example,))
    finally:
        plain.train(was_training)
    atomic_write(file, lambda f: torch.export.save(program, f))


def write_plain_export(
    plain: nn.Module,
    out_dir: Union[str, os.PathLike[str]],
    *,
    arch: str,
    num_classes: int,
    val_acc: Mapping[str, float],
    path: Optional[str],
    dreg_layer: Optional[str],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    input_shape: Sequence[int] = (3, 32, 32),
    extra_meta: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Write ``model_state.pt``, ``model.pt2`` and ``meta.json`` for a plain model.

    Each file is written to a temporary name and renamed, so an interrupted export never
    leaves a half-written file under the final name.
    """
    out = FsPath(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Contiguous: a model trained channels_last would otherwise save strided weights, and
    # torch.export.save warns about them ("weights not on CPU") on every export.
    plain = copy.deepcopy(plain).cpu().float().to(memory_format=torch.contiguous_format).eval()
    state = plain.state_dict()

    atomic_write(out / STATE_FILE, lambda f: torch.save(state, f))
    export_program(plain, torch.zeros(2, *input_shape), out / PROGRAM_FILE)

    meta: dict[str, Any] = {
        "arch": arch,
        "num_classes": num_classes,
        "path": path,
        "dreg_layer": dreg_layer,
        "val_acc": {k: float(v) for k, v in val_acc.items()},
        "input_shape": list(input_shape),
        "normalization": {"mean": list(map(float, mean)), "std": list(map(float, std))},
        "files": {"state_dict": STATE_FILE, "program": PROGRAM_FILE},
        "torch_version": torch.__version__,
    }
    meta.update(extra_meta or {})
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def write_export(
    model: DualPathModel,
    out_dir: Union[str, os.PathLike[str]],
    *,
    arch: str,
    num_classes: int,
    val_acc: Mapping[str, float],
    path: PathChoice = "auto",
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    input_shape: Sequence[int] = (3, 32, 32),
    extra_meta: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Export the chosen path of ``model`` (``auto``: higher validation accuracy)."""
    chosen = choose_path(val_acc, path)
    return write_plain_export(
        plain_model(model, chosen),
        out_dir,
        arch=arch,
        num_classes=num_classes,
        val_acc=val_acc,
        path=chosen,
        dreg_layer=model.layer_path,
        mean=mean,
        std=std,
        input_shape=input_shape,
        extra_meta={"path_requested": path, "dreg_norm": model.norm_mode, **(extra_meta or {})},
    )
