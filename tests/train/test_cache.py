"""SharedCache: the feature key follows what features depend on; entries are checked; runs reuse them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from edgetl.train.cache import SharedCache, backbone_digest, feature_key

SPEC = {"input_size": 32, "resize_size": 36}


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _samples(tmp_path: Path, n: int = 3) -> list[tuple[Path, int]]:
    out = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"x" * (i + 1))
        out.append((path, i % 2))
    return out


def test_key_follows_backbone_preprocessing_and_images_not_the_head(tmp_path):
    samples = _samples(tmp_path)
    model = _model()
    key = feature_key(backbone_digest(model, ["3"]), SPEC, samples)
    assert feature_key(backbone_digest(_model(), ["3"]), SPEC, samples) == key  # same weights, same key
    with torch.no_grad():
        model[3].weight.add_(1.0)  # the new head does not change the backbone's features
    assert feature_key(backbone_digest(model, ["3"]), SPEC, samples) == key
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    assert feature_key(backbone_digest(model, ["3"]), SPEC, samples) != key
    assert feature_key(backbone_digest(_model(seed=1), ["3"]), SPEC, samples) != key  # a random init's seed
    assert feature_key(backbone_digest(_model(), ["3"]), {**SPEC, "input_size": 64}, samples) != key
    assert feature_key(backbone_digest(_model(), ["3"]), SPEC, samples[:2]) != key
    assert feature_key(backbone_digest(_model(), ["3"]), SPEC, [(p, 1 - y) for p, y in samples]) != key
    stat = samples[0][0].stat()
    os.utime(samples[0][0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an image replaced in place
    assert feature_key(backbone_digest(_model(), ["3"]), SPEC, samples) != key


def test_disk_entries_shared_between_caches_and_checked(tmp_path):
    samples = _samples(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0])

    first = SharedCache(tmp_path / "cache")
    feats, labels = first.features(backbone_digest(_model(), ["3"]), SPEC, samples, compute)
    first.features(backbone_digest(_model(), ["3"]), SPEC, samples, compute)  # in memory
    second = SharedCache(tmp_path / "cache")  # another worker, or a resumed study
    again, again_labels = second.features(backbone_digest(_model(), ["3"]), SPEC, samples, compute)
    assert len(calls) == 1 and torch.equal(again, feats) and torch.equal(again_labels, labels)
    assert first.counts() == {"splits_hits": 0, "features_hits": 1, "splits_misses": 0, "features_misses": 1}
    (entry,) = (tmp_path / "cache").glob("features-*.pt")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))  # damaged on disk: not trusted, computed again
    SharedCache(tmp_path / "cache").features(backbone_digest(_model(), ["3"]), SPEC, samples, compute)
    assert len(calls) == 2


def test_splits_scanned_once_per_key():
    cache, calls = SharedCache(), []
    for key in ("a", "a", "b"):
        cache.splits((key,), lambda: calls.append(1) or len(calls))
    assert len(calls) == 2 and cache.hits["splits"] == 1


@pytest.mark.slow
def test_linear_probes_share_features_and_train_alike(tmp_path, split_folder):
    from edgetl.finetune import FinetuneConfig, finetune

    def run(name: str, cache: SharedCache | None, **kw):
        config = FinetuneConfig(data=str(split_folder), output=str(tmp_path / name), model="mobilenet_v3_small",
                                pretrained=False, image_size=32, epochs=2, batch_size=8, workers=0,
                                strategy="linear-probe", threads=1, **kw)
        return finetune(config, progress=False, cache=cache).metrics

    cache = SharedCache(tmp_path / "cache")
    alone = run("alone", None)
    first = run("first", cache)
    assert cache.misses["features"] == 2 and cache.hits["features"] == 0  # train and val
    run("second", cache, lr=0.05)
    assert cache.hits["features"] == 2 and cache.hits["splits"] == 1
    replay = run("replay", cache)
    assert cache.hits["features"] == 4
    for key in ("top1", "val_loss"):
        assert first[key] == alone[key] == replay[key]
    run("other-seed", cache, seed=1)  # a random init's backbone differs: nothing reused
    assert cache.hits["features"] == 4 and cache.misses["features"] == 4
