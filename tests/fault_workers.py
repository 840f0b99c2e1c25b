"""A training run in its own process, for the kill tests: `python fault_workers.py <work_dir> <init_seed>`.

It trains the tiny model of test_training on its toy data with checkpoints every 5 steps and evaluations every 10,
then writes the final weights to <work_dir>/final.safetensors. A resumed run is given another init seed, so only
its checkpoint can make it end where an uninterrupted run ends. POLYDISTILL_KILL_AT in the environment kills it
with SIGKILL at the named point (polydistill.faults).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from safetensors.torch import save_file
from test_training import PAD, settings, tiny_model, toy_set

from polydistill.model.training import train_classifier


def main(work_dir: Path, init_seed: int) -> None:
    model = tiny_model(seed=init_seed)
    train_classifier(model, toy_set(160, 1), toy_set(60, 2), settings(), work_dir, PAD)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()},
              str(work_dir / "final.safetensors"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(Path(sys.argv[1]), int(sys.argv[2]))
