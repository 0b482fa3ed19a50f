"""ONNX export of one stitch (torch's dynamo exporter) and its check against onnxruntime; both are optional
dependencies (`pip install "timm-snnet[export]"`)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Optional, Union

import torch
from timm.models._input import get_model_input_config
from torch import nn

from ._latency import example_input

__all__ = ['export_onnx', 'check_onnx']

PathLike = Union[str, os.PathLike]


# --- ONNX ----------------------------------------------------------------------------------------------------------
def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{module} is not installed: pip install "timm-snnet[export]" (onnx, onnxruntime, '
                         f'onnxscript)') from e


def export_onnx(model: nn.Module, path: PathLike, opset: Optional[int] = None) -> Path:
    """Write `model` to one ONNX file (`input` -> `logits`) with a dynamic batch axis (and dynamic height and width
    when no model on the path has a fixed input size), and check it with onnx.checker.

    Uses torch's dynamo-based exporter (`torch.export`, the default and supported one since torch 2.9; the
    TorchScript exporter is deprecated).
    """
    onnx = _need('onnx')
    _need('onnxscript')
    path = Path(path)
    axes = {0: torch.export.Dim('batch')}
    if not get_model_input_config(model)['fixed_input_size']:
        axes.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example_input(model, 2),), str(path), dynamo=True, external_data=False,
                              input_names=['input'], output_names=['logits'], opset_version=opset, verbose=False,
                              dynamic_shapes=(axes,))
    finally:
        model.train(was_training)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def check_onnx(path: PathLike, model: nn.Module, x: torch.Tensor) -> float:
    """Max abs difference between onnxruntime (CPU) and the eager model on `x`."""
    ort = _need('onnxruntime')
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = session.run(None, {session.get_inputs()[0].name: x.detach().float().cpu().numpy()})[0]
    with torch.no_grad():
        ref = model.eval()(x)
    return float((torch.from_numpy(out) - ref.float().cpu()).abs().max())
