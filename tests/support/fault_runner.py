"""Runs `mpdagl train` in a child process that kills itself (SIGKILL) at a chosen point.

    python fault_runner.py step N ARGS...        die at the N-th training step (mid-epoch)
    python fault_runner.py replace FILE N ARGS...  die just before the N-th rename onto FILE
                                                   (a checkpoint write, its temporary complete)
"""

import os
import signal
import sys

from mpdagl_triton import cli
from mpdagl_triton import train as train_module


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    mode = sys.argv[1]
    calls = [0]
    if mode == "step":
        at, args = int(sys.argv[2]), sys.argv[3:]
        real_loss = train_module.loss_fn

        def loss_fn(*a):
            calls[0] += 1
            if calls[0] == at:
                die()
            return real_loss(*a)

        train_module.loss_fn = loss_fn
    else:
        target, at, args = sys.argv[2], int(sys.argv[3]), sys.argv[4:]
        real_replace = os.replace

        def replace(src, dst):
            if os.path.basename(str(dst)) == target:
                calls[0] += 1
                if calls[0] == at:
                    die()
            return real_replace(src, dst)

        os.replace = replace
    return cli.main(["train", *args])


if __name__ == "__main__":
    sys.exit(main())
