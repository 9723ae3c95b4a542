"""Runs `mpdagl train` in a child process that kills itself (SIGKILL) at a chosen point.

    python fault_runner.py step N ARGS...        die at the N-th training step (mid-epoch)
    python fault_runner.py replace FILE N ARGS...  die just before the N-th rename onto FILE
                                                   (a checkpoint write, its temporary complete)
    python fault_runner.py plan PLAN ARGS...     under torchrun: PLAN is a comma-separated list of
                                                   ATTEMPT/RANK/SIGNAL/N: in that restart of the
                                                   group (TORCHELASTIC_RESTART_COUNT), that rank
                                                   receives SIGNAL (kill, term, int) at its N-th step
"""

import os
import signal
import sys

from mpdagl_triton import cli
from mpdagl_triton import train as train_module

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def at_step(step: int, action) -> None:
    """``action()`` during this process's ``step``-th training step."""
    calls = [0]
    real_loss = train_module.loss_fn

    def loss_fn(*a):
        calls[0] += 1
        if calls[0] == step:
            action()
        return real_loss(*a)

    train_module.loss_fn = loss_fn


def main() -> int:
    mode = sys.argv[1]
    calls = [0]
    if mode == "step":
        at, args = int(sys.argv[2]), sys.argv[3:]
        at_step(at, die)
    elif mode == "plan":
        args = sys.argv[3:]
        here = (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ.get("RANK", "0"))
        for entry in sys.argv[2].split(","):
            attempt, rank, name, step = entry.split("/")
            if (attempt, rank) == here:
                at_step(int(step), lambda signum=SIGNALS[name]: os.kill(os.getpid(), signum))
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
