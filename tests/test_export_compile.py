"""torch.compile (inductor, C++ on CPU) of an exported stitch: one graph, outputs within 1e-4 of eager."""
import shutil

import pytest
import torch
from conftest import tiny, tiny_input


@pytest.mark.slow
@pytest.mark.skipif(shutil.which('g++') is None and shutil.which('c++') is None, reason='inductor on CPU needs a '
                    'C++ compiler')
def test_inductor_matches_eager():
    model = tiny('snnet_resnet18_swin_ti').eval()
    stitch = model.export_stitch(6)  # ResNet-18 layer3 -> Swin stage 2
    x = tiny_input('snnet_resnet18_swin_ti')
    torch._dynamo.reset()
    compiled = torch.compile(stitch, fullgraph=True)  # fullgraph: a graph break raises
    with torch.no_grad():
        assert (compiled(x) - model(x, stitch_id=6)).abs().max().item() <= 1e-4
