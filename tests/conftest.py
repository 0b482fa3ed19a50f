"""Shared fixtures: tiny anchors of the same timm classes, so the suite stays fast."""
import os

import family_entries  # noqa: F401  (test-only snnetfam_* entries, before timm's test module is read)
import pytest
import timm
import torch

import timm_snnet  # noqa: F401  (registers the models)

os.environ.setdefault('HF_HUB_OFFLINE', '1')
# One thread: tiny models are dominated by per-op overhead, and two OpenMP threads on shared cores make ops up to
# 100x slower (the DeiT FLOPs table: 1.3 s on one thread, 7.3 s on two with one core busy).
torch.set_num_threads(1)

# entry point -> (kwargs giving tiny anchors of the same timm classes, input size)
TINY = {
    'snnet_deit_tsb': (dict(
        img_size=32,
        anchor_kwargs=[dict(patch_size=8, embed_dim=e, depth=4, num_heads=2) for e in (16, 32, 48)],
    ), (3, 32, 32)),
    # real depths (Swin-S/B stage 2 shortened to 4 blocks), 8-16 channels, 4x4 windows
    'snnet_swin_tsb': (dict(
        img_size=64,
        anchor_kwargs=[dict(embed_dim=e, depths=d, num_heads=h, window_size=4) for e, d, h in (
            (8, (2, 2, 2, 2), (1, 1, 2, 2)), (8, (2, 2, 4, 2), (1, 1, 2, 2)), (16, (2, 2, 4, 2), (1, 2, 2, 4)))],
    ), (3, 64, 64)),
    # ResNet-18/50 depths at 1/8 width
    'snnet_resnet': (dict(
        anchor_kwargs=[dict(channels=(8, 16, 32, 64), stem_width=8)] * 2,
    ), (3, 64, 64)),
    'snnet_resnet18_swin_ti': (dict(
        img_size=64,  # reaches the Swin anchor only (ResNets take any size)
        anchor_kwargs=[dict(channels=(8, 16, 32, 64), stem_width=8),
                       dict(embed_dim=8, num_heads=(1, 1, 2, 2), window_size=4)],
    ), (3, 64, 64)),
    # LeViT-192/256's depths (4-4-4) at 8-24 channels, 64x64 (the attention biases are built for the image size)
    'snnet_levit_192_256': (dict(
        img_size=64,
        anchor_kwargs=[dict(embed_dim=e, key_dim=4, num_heads=(2, 2, 2), depth=(4, 4, 4)) for e in ((8, 16, 24),
                                                                                                (16, 24, 32))],
    ), (3, 64, 64)),
    # ConvNeXt-T/S/B depths with stage 2 shortened (4 and 6 blocks), 8-32 channels
    'snnet_convnext_tsb': (dict(
        anchor_kwargs=[dict(dims=(8, 16, 24, 32), depths=d) for d in ((2, 2, 4, 2), (2, 2, 6, 2), (2, 2, 6, 2))],
    ), (3, 64, 64)),
    # timm's EfficientNet entry points fix their widths: TinyNet-E/D/C, the same EfficientNet class at 2-5% of the FLOPs
    'snnet_efficientnet_b0_b2': (dict(anchors=('tinynet_e', 'tinynet_d', 'tinynet_c')), (3, 64, 64)),
}


def tiny(name: str, **kwargs) -> torch.nn.Module:
    """A tiny SN-Net of the given entry point (same anchor classes, small widths and depths)."""
    return timm.create_model(name, **{**TINY[name][0], **kwargs})


def tiny_input(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *TINY[name][1], generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(TINY))
def tiny_name(request) -> str:
    return request.param


# `make test-fast` (-m "not slow") leaves out the tests marked slow in their files (full-size models, timm's
# test_models, ONNX, torch.compile, the benchmarks) and these `file::test` prefixes: tests that start other processes
# (torchrun and DDP ranks, the CLI, timm's scripts or a big load as subprocesses, a Ray Serve server), run the demo
# or the reproduction, or repeat a check over every model (each is also checked on fewer in the fast tier)
SLOW = (
    'test_ddp.py::', 'test_ddp_comm.py::test_ddp_hook', 'test_off_path.py::test_ddp_two_ranks',
    'test_snnetv2.py::test_ddp_two_way', 'test_sweep_dist.py::test_two_ranks', 'test_sweep_dist.py::test_killed_rank',
    'test_sweep_dist.py::test_resume_refuses', 'test_sweep_dist.py::test_ranks_that_see',
    'test_first_hour.py::test_bad_input', 'test_first_hour.py::test_missing_anchor_weights',
    'test_first_hour.py::test_import_and_commands', 'test_first_hour.py::test_init_prints',
    'test_careless.py::test_exit_codes_as_processes', 'test_cli.py::test_run_module_runs_script',
    'test_distill.py::test_launcher', 'test_writes.py::test_concurrent_sweeps',
    'test_demo.py::test_demo_runs', 'test_reproduce_smoke.py::test_pipeline_smoke',
    'test_reproduce_smoke.py::test_study_smoke', 'test_reproduce_smoke.py::test_cross_family_smoke',
    'test_export.py::test_compiles_without_graph_breaks',
    'test_trust.py::test_size_is_checked_before_allocating', 'test_export.py::test_every_config_of_every_model',
    'test_export.py::test_cli_profile_merge_select_plot', 'test_hub.py::test_publish_recipe',
    'test_hub.py::test_push_then_hf_hub_every_family',
)


# `make test` runs the suite on two pytest-xdist workers, then these alone (-m serial): tests that start several
# processes (torchrun ranks, concurrent writers), serve on Ray, or bound time and memory. The benchmarks' smoke run
# (2 DDP ranks for a few seconds, no timing asserted) shares the workers' cores.
SERIAL = (
    'test_ddp.py::', 'test_ddp_comm.py::test_ddp_hook', 'test_off_path.py::test_ddp_two_ranks',
    'test_snnetv2.py::test_ddp_two_way', 'test_sweep_dist.py::', 'test_writes.py::test_concurrent_sweeps',
    'test_trust.py::test_size_is_checked_before_allocating', 'test_serve.py::',
    'test_servebench.py::test_serve_bench_real_run', 'test_release.py::test_two_processes',
    'test_distill.py::test_launcher',
)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        name = f'{item.path.name}::{item.name}'
        # a test using test_serve.py's `server` fixture starts Ray Serve
        if name.startswith(SLOW) or (item.path.name == 'test_serve.py' and 'server' in item.fixturenames):
            item.add_marker(pytest.mark.slow)
        if name.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
