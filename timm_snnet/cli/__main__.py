"""`python -m timm_snnet.cli COMMAND ...` (also under torchrun): the `timm-snnet` command."""
import sys

from timm_snnet.cli import main

sys.exit(main())
