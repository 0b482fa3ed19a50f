"""`python -m timm_snnet.cli.run SCRIPT.py ARGS...`: timm's train.py / validate.py / benchmark.py with the SN-Net models
registered; the entry for `torchrun -m timm_snnet.cli.run`. The work is in `scripts.py`: the `timm_snnet.cli`
package does not import this module, so `python -m` runs it without runpy's double-import warning."""
import sys

from .scripts import main

if __name__ == '__main__':
    sys.exit(main())
