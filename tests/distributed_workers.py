"""Entry points that tests start in several processes with polydistill.model.distributed.launch (importable by the
spawned processes, unlike a test module's local functions)."""

from __future__ import annotations

import numpy as np
import torch
from test_training import PAD, settings, tiny_model, toy_set

from polydistill.model.distributed import Ranks
from polydistill.model.training import collate, cross_entropy_loss, make_optimizer, train_step


def one_step(batch_rows: list[int], weighted: bool, ranks: Ranks) -> dict[str, np.ndarray]:
    """The tiny model (dropout off) after one optimizer step on `batch_rows` of the toy set, each rank training on
    its shard; returns its weights."""
    model = tiny_model(seed=3)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    data = toy_set(40, 4)
    if weighted:
        data.weights = np.linspace(0.5, 3.0, len(data)).astype(np.float32)
    optimizer, scheduler = make_optimizer(model, settings(), total_steps=10)
    rows, loss_factor = ranks.shard(np.array(batch_rows), data.weights)
    train_step(ranks.wrap(model), collate(data, rows, PAD), cross_entropy_loss, optimizer, scheduler,
               max_grad_norm=1e9, loss_factor=loss_factor)
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}
