"""Torch side of the exporter: load a model, fold BatchNorm into the preceding layer, export to ONNX.

Folding uses torch's own fusion utilities (``torch.nn.utils.fusion``). Pairs are found on the FX
graph (with shape propagation, so Linear+BatchNorm1d is folded only where BN normalises Linear's
feature axis); models FX cannot trace fall back to adjacent children of nn.Sequential. The fused
layer replaces the conv in place and the BN becomes Identity, so module names -- and the ONNX node
scopes derived from them (``/features/features.1/conv/...``) -- stay as the user knows them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DependencyError, ExportError, InputError, ModelLoadError, require_file
from ..log import get_logger

_log = get_logger(__name__)


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise DependencyError(
            "torch is not installed; it is needed to export PyTorch models",
            hint="pip install 'vqz-edge[export]' (or export to ONNX elsewhere and pass the .onnx file)",
        ) from exc
    return torch


def load_torch_model(source: str, weights: Path | None = None) -> Any:
    """A torchvision model name (``mobilenet_v2``) or ``package.module:factory``; eval mode, on CPU."""
    torch = import_torch()
    if ":" in source:
        mod_name, _, attr = source.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import module {mod_name!r} for factory {source!r}: {exc}") from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ModelLoadError(f"{source!r}: module {mod_name!r} has no callable {attr!r}")
        try:
            model = factory()
        except Exception as exc:  # a user factory can raise anything; report it with its type
            raise ModelLoadError(f"model factory {source!r} raised {type(exc).__name__}: {exc}") from exc
    else:
        try:
            import torchvision
        except ImportError as exc:
            raise DependencyError("torchvision is not installed", hint="pip install 'vqz-edge[export]'") from exc
        available = set(torchvision.models.list_models())
        if source not in available:
            close = sorted(n for n in available if source.split("_")[0] in n)[:8]
            raise ModelLoadError(
                f"unknown model {source!r}: not a torchvision model name, a 'package.module:factory' path, "
                "or an existing .onnx file",
                hint=f"similar torchvision names: {close}" if close else "see torchvision.models.list_models()",
            )
        model = torchvision.models.get_model(source, weights=None)
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{source!r} did not return a torch.nn.Module (got {type(model).__name__})")
    if weights is not None:
        load_weights(model, Path(weights))
    return model.eval()


def load_weights(model: Any, path: Path) -> None:
    torch = import_torch()
    require_file(path, "weights file", error=ModelLoadError)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle/zip/runtime errors alike
        raise ModelLoadError(f"cannot read weights {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (got {type(state).__name__})")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"weights {path} do not match the model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]})",
            hint="check that the weights belong to this architecture",
        )


def _is(mod: Any, *names: str) -> bool:
    return type(mod).__name__ in names


def _fold_pairs_fx(model: Any, example: Any) -> list[tuple[str, str]] | None:
    torch = import_torch()
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        gm = torch.fx.symbolic_trace(model)
        ShapeProp(gm).propagate(*(example if isinstance(example, tuple) else (example,)))
    except Exception as exc:  # noqa: BLE001 -- FX fails on data-dependent control flow; fall back
        _log.debug("FX trace failed (%s); using nn.Sequential adjacency for BN folding", exc)
        return None
    mods = dict(gm.named_modules())
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    uses: dict[str, int] = {}
    for n in calls:
        uses[n.target] = uses.get(n.target, 0) + 1
    pairs = []
    for node in calls:
        bn = mods[node.target]
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm) or not bn.track_running_stats:
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        if uses.get(prev.target, 0) != 1 or uses.get(node.target, 0) != 1:
            continue  # a shared module cannot be rewritten for one call site only
        layer = mods[prev.target]
        meta = prev.meta.get("tensor_meta")
        if isinstance(layer, torch.nn.Linear):
            if meta is None or len(meta.shape) != 2:
                continue  # BN1d on (N, L, C) normalises L, not Linear's features
        elif not isinstance(layer, torch.nn.modules.conv._ConvNd):
            continue
        pairs.append((str(prev.target), str(node.target)))
    return pairs


def _fold_pairs_sequential(model: Any) -> list[tuple[str, str]]:
    torch = import_torch()
    pairs = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Sequential):
            continue
        children = list(mod.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if isinstance(b, torch.nn.modules.batchnorm._BatchNorm) and isinstance(a, torch.nn.modules.conv._ConvNd):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def _set_submodule(model: Any, dotted: str, new: Any) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_batchnorm_torch(model: Any, example: Any) -> list[tuple[str, str]]:
    """Fold every foldable (layer, BatchNorm) pair in place; returns the folded pairs."""
    torch = import_torch()
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    model.eval()
    pairs = _fold_pairs_fx(model, example)
    if pairs is None:
        pairs = _fold_pairs_sequential(model)
    done = []
    for layer_name, bn_name in pairs:
        layer = model.get_submodule(layer_name)
        bn = model.get_submodule(bn_name)
        if isinstance(layer, torch.nn.Linear):
            if bn.num_features != layer.out_features:
                continue
            fused = fuse_linear_bn_eval(layer, bn)
        else:
            transpose = isinstance(layer, torch.nn.modules.conv._ConvTransposeNd)
            if transpose and layer.groups != 1:
                continue  # torch's fuser scales the wrong axis for grouped transposed convs; the ONNX pass handles them
            if bn.num_features != layer.out_channels:
                continue
            fused = fuse_conv_bn_eval(layer, bn, transpose=transpose)
        _set_submodule(model, layer_name, fused)
        _set_submodule(model, bn_name, torch.nn.Identity())
        done.append((layer_name, bn_name))
    _log.info("torch side: folded %d BatchNorm layers", len(done))
    return done


def export_onnx(
    model: Any,
    example: Any,
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str] | None,
    opset: int,
    dynamic_batch: bool,
) -> None:
    """TorchScript-based export (keeps module scopes in node names: ``/features/features.1/conv/...``)."""
    torch = import_torch()
    args = example if isinstance(example, tuple) else (example,)
    if output_names is None:
        with torch.no_grad():
            out = model(*args)
        n_out = len(out) if isinstance(out, (tuple, list)) else 1
        output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: "batch"} for n in [*input_names, *output_names]}
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
            )
    except RuntimeError as exc:
        text = str(exc)
        if "size" in text or "shape" in text or "Expected" in text:
            raise InputError(f"the model does not accept the example input shape: {text.splitlines()[0]}") from exc
        raise ExportError(f"torch.onnx.export failed: {text.splitlines()[0] if text else exc!r}") from exc
    except Exception as exc:  # the exporter raises many unrelated types; keep the first line
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
