"""The shared top-1 and quick latency: a torch module and a runner of it agree, at any batch size."""

from __future__ import annotations

import numpy as np
import torch

from edgetl.evaluate import latency_p50_ms, logits, top1


class Runner:
    """A runner of a torch module that counts the batch sizes it was asked for."""

    def __init__(self, module) -> None:
        self.module, self.sizes = module, []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).numpy()


def test_a_module_and_its_runner_score_alike_at_any_batch():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).train()
    images = np.random.default_rng(0).normal(size=(10, 3, 4, 4)).astype(np.float32)
    expected = module(torch.from_numpy(images)).argmax(1).numpy()
    labels = np.array([expected[0]] * 10)  # right exactly where the model says expected[0]
    want = float(np.mean(expected == labels))
    assert 0 < want < 1  # the score is not trivially all or nothing
    assert top1(module, images, labels) == want and not module.training  # evaluated in eval mode
    runner = Runner(module)
    assert top1(runner, images, labels, batch_size=1) == want and runner.sizes == [1] * 10
    runner.sizes.clear()
    assert top1(runner, images, labels, batch_size=4, decode_batch=6) == want and runner.sizes == [4, 4, 2]
    np.testing.assert_allclose(logits(runner, images, batch_size=3), logits(module, images), atol=1e-6)


def test_quick_latency_is_the_median_in_ms_after_warm_up():
    import time

    class Slow(Runner):
        def infer(self, batch):
            time.sleep(0.004 if len(self.sizes) >= 2 else 0.05)  # the two warm-up calls are slow, and untimed
            return super().infer(batch)

    runner = Slow(torch.nn.Identity())
    assert latency_p50_ms(runner, np.zeros((1, 3, 2, 2), np.float32), 0) is None and runner.sizes == []
    value = latency_p50_ms(runner, np.zeros((1, 3, 2, 2), np.float32), 5, warmup=2)
    assert len(runner.sizes) == 7 and 4 <= value < 50 and value == round(value, 3)
