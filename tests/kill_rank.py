"""`python tests/kill_rank.py RANK:N COMMAND ...` under torchrun: `timm-snnet COMMAND ...`, where rank RANK of a sweep
exits (status 17, no cleanup) once N stitches are recorded, as a killed rank would. Every rank first waits until
rank 0 has written them (it writes stitch N before any rank evaluates stitch N + 1), so a test knows what a resume
must find."""
import os
import sys

import torch.distributed as dist

import timm_snnet._evaluate as sweeping
from timm_snnet.cli import main


def kill_after(victim: int, recorded: int) -> None:
    evaluate, calls = sweeping.evaluate, []

    def evaluate_or_die(*args, **kwargs):
        calls.append(None)
        if len(calls) == recorded + 1:
            dist.barrier()
            if dist.get_rank() == victim:
                os._exit(17)
        return evaluate(*args, **kwargs)

    sweeping.evaluate = evaluate_or_die


if __name__ == '__main__':
    kill_after(*(int(x) for x in sys.argv[1].split(':')))
    sys.exit(main(sys.argv[2:]))
