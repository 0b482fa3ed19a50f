"""timm-snnet: Stitchable Neural Networks (SN-Net) for timm. Importing it registers the `snnet*` models."""
from .configs import StitchConfig, enumerate_configs
from .export import ExportedStitch
from .hub import SNNetLoadError, load_snnet, push_snnet, save_snnet
from .models import HF_HUB_ORG
from .snnet import SNNet

__version__ = '0.1.0'
__all__ = ['ExportedStitch', 'HF_HUB_ORG', 'SNNet', 'SNNetLoadError', 'StitchConfig', 'enumerate_configs', 'load_snnet',
           'push_snnet', 'save_snnet']
