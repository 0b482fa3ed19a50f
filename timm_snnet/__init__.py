"""timm-snnet: Stitchable Neural Networks (SN-Net) for timm. Importing it registers the `snnet*` models.

The names below are the public API; modules starting with `_` are internal, as in timm.
"""
from ._configs import StitchConfig as StitchConfig
from ._configs import enumerate_configs as enumerate_configs
from ._convert import ConversionError as ConversionError
from ._convert import convert as convert
from ._dense import DenseError as DenseError
from ._dense import StitchableFeatures as StitchableFeatures
from ._dense import export_stitch as export_stitch
from ._dense import set_stitch as set_stitch
from ._dense import stitch_configs as stitch_configs
from ._errors import SNNetError as SNNetError
from ._errors import SNNetLoadError as SNNetLoadError
from ._evaluate import ROW_KEYS as ROW_KEYS
from ._evaluate import evaluate as evaluate
from ._evaluate import init_checkpoint as init_checkpoint
from ._evaluate import sweep as sweep
from ._exported import ExportedStitch as ExportedStitch
from ._latency import measure_latency as measure_latency
from ._latency import profile as profile
from ._load import load_model as load_model
from ._load import load_snnet as load_snnet
from ._models import DEIT3 as DEIT3
from ._models import DEIT_TSB as DEIT_TSB
from ._models import HF_HUB_ORG as HF_HUB_ORG
from ._models import SNNET_DEFAULT_ANCHORS as SNNET_DEFAULT_ANCHORS
from ._onnx import check_onnx as check_onnx
from ._onnx import export_onnx as export_onnx
from ._plot import plot_sweep as plot_sweep
from ._publish import push_snnet as push_snnet
from ._publish import save_snnet as save_snnet
from ._results import load_sweep as load_sweep
from ._results import read_reference as read_reference
from ._results import write_results as write_results
from ._sampling import flops_groups as flops_groups
from ._sampling import ros_weights as ros_weights
from ._selection import pareto_front as pareto_front
from ._selection import select_stitch as select_stitch
from ._serve import build_app as build_app
from ._snnet import SNNet as SNNet
from ._sources import fetch_official as fetch_official
from .families import Family as Family
from .families import can_stitch as can_stitch
from .families import family_for as family_for
from .families import register_family as register_family

__version__ = '0.1.0'
__all__ = [
    'ConversionError', 'DEIT3', 'DEIT_TSB', 'DenseError', 'ExportedStitch', 'Family', 'HF_HUB_ORG', 'ROW_KEYS', 'SNNet',
    'SNNET_DEFAULT_ANCHORS', 'SNNetError', 'SNNetLoadError', 'StitchConfig', 'build_app', 'can_stitch', 'check_onnx',
    'convert', 'enumerate_configs',
    'evaluate', 'export_onnx', 'family_for', 'fetch_official', 'flops_groups', 'init_checkpoint', 'load_model',
    'load_snnet', 'load_sweep', 'measure_latency', 'pareto_front', 'plot_sweep', 'profile', 'push_snnet',
    'read_reference', 'register_family', 'ros_weights', 'save_snnet', 'select_stitch', 'set_stitch',
    'StitchableFeatures', 'stitch_configs', 'sweep', 'write_results', 'export_stitch',
]
