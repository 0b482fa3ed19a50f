"""An SN-Net as a timm `features_only` backbone feeding a tiny FPN-style head; the pyramid printed for two stitches.

    python examples/backbone.py                          # snnet_resnet (ResNet-18/50), stitches 0 and 5
    python examples/backbone.py --model snnet_swin_tsb --stitches 0 20
    python examples/backbone.py --tiny                   # tiny ResNet anchors, seconds on a CPU

Channels change across stitches (a stitch's features come from the anchor that computes them), so the head is built
from the backbone's `feature_info` of the stitch it serves. Offline: random weights unless --pretrained.
"""
import argparse

import timm
import torch
import torch.nn.functional as F
from torch import nn

import timm_snnet  # noqa: F401  (registers the SN-Nets)

TINY_RESNET = dict(anchor_kwargs=[dict(channels=(8, 16, 32, 64), stem_width=8)] * 2)


class TinyFPN(nn.Module):
    """Lateral 1x1 convs to one width, top-down nearest upsampling and addition, a 3x3 conv per level."""

    def __init__(self, channels: list[int], width: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in channels])
        self.smooth = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in channels])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [lateral(f) for lateral, f in zip(self.lateral, features)]
        for i in range(len(maps) - 1, 0, -1):
            maps[i - 1] = maps[i - 1] + F.interpolate(maps[i], size=maps[i - 1].shape[-2:], mode='nearest')
        return [smooth(m) for smooth, m in zip(self.smooth, maps)]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='snnet_resnet')
    parser.add_argument('--stitches', type=int, nargs=2, default=(0, 5))
    parser.add_argument('--out-indices', type=int, nargs='+', default=(1, 2, 3, 4))
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--pretrained', action='store_true')
    parser.add_argument('--tiny', action='store_true', help='tiny ResNet anchors (snnet_resnet only), for a quick run')
    args = parser.parse_args(argv)
    kwargs = TINY_RESNET if args.tiny else {}
    torch.manual_seed(0)
    x = torch.randn(2, 3, args.img_size, args.img_size)
    report = []
    for stitch_id in args.stitches:
        backbone = timm.create_model(args.model, pretrained=args.pretrained, features_only=True, feature_cls='getter',
                                     out_indices=tuple(args.out_indices), stitch_id=stitch_id, **kwargs).eval()
        info = backbone.feature_info
        head = TinyFPN(info.channels()).eval()
        with torch.no_grad():
            features = backbone(x)
            pyramid = head(features)
        names = backbone.model.anchor_names  # the anchor computing each feature: anchors.N.<module>
        print(f'{args.model} stitch {stitch_id}:')
        for c, r, m, f, p in zip(info.channels(), info.reduction(), info.module_name(), features, pyramid):
            anchor = names[int(m.split('.')[1])]
            print(f'  1/{r:<3d} {c:5d} ch from {anchor:4s} feature {tuple(f.shape)} -> FPN {tuple(p.shape)}')
        report.append(dict(stitch_id=stitch_id, channels=info.channels(), reduction=info.reduction(),
                           shapes=[tuple(p.shape) for p in pyramid]))
    return report


if __name__ == '__main__':
    main()
