import math

import pytest
import torch

from head2toe.pooling import pool_to_target, pooled_size


def reference_count(shape, t):
    """The rule written out independently of the implementation (global mean when the pool size is 0)."""
    if len(shape) == 3:
        c, h, w = shape
        if c >= t:
            return c
        n = math.floor(math.sqrt(t // c))
        pool = w // n
        return c * (h // pool) * (w // pool) if pool else c
    length, c = shape
    if c >= t:
        return c
    pool = math.floor(length / (t / c))
    return c * (length // pool) if pool else c


@pytest.mark.parametrize(
    "shape,t",
    [((32, 112, 112), 512), ((64, 56, 56), 1024), ((256, 56, 56), 8192), ((2048, 7, 7), 1024),
     ((40, 28, 28), 2048), ((1280, 7, 7), 16384), ((197, 768), 1024), ((197, 3072), 8192),
     ((197, 768), 4096), ((50, 64), 640), ((64, 4, 4), 8192), ((512, 7, 7), 65536), ((10, 64), 8192)],
)
def test_pooled_count_matches_rule(shape, t):
    x = torch.randn(2, *shape)
    out = pool_to_target(x, t)
    assert out.shape == (2, reference_count(shape, t)) == (2, pooled_size(shape, t))


def test_global_average_when_channels_exceed_target():
    x = torch.randn(3, 64, 5, 5)
    assert torch.allclose(pool_to_target(x, 32), x.mean(dim=(2, 3)))
    tokens = torch.randn(3, 10, 64)
    assert torch.allclose(pool_to_target(tokens, 64), tokens.mean(dim=1))


def test_strided_average_values():
    # C=1, W=4, T=4 -> n=2, pool=2: four 2x2 block means
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert pool_to_target(x, 4).tolist() == [[2.5, 4.5, 10.5, 12.5]]
    # tokens: L=4, C=1, T=2 -> pool=2 over tokens
    t = torch.tensor([[[1.0], [3.0], [5.0], [7.0]]])
    assert pool_to_target(t, 2).tolist() == [[2.0, 6.0]]


def test_vectors_pass_through_and_bad_input():
    v = torch.randn(4, 10)
    assert pool_to_target(v, 3) is v
    with pytest.raises(ValueError, match="target_size"):
        pool_to_target(v, 0)
    with pytest.raises(ValueError, match="rank"):
        pool_to_target(torch.randn(1, 2, 3, 4, 5), 8)


def test_pool_size_zero_falls_back_to_a_global_average_as_the_reference():
    # (64, 4, 4) at T=8192: n = isqrt(128) = 11 > W = 4 -> pool size 0
    x = torch.randn(2, 64, 4, 4)
    assert pool_to_target(x, 8192).shape == (2, 64) and pooled_size((64, 4, 4), 8192) == 64
    assert torch.allclose(pool_to_target(x, 8192), x.mean(dim=(2, 3)))
    # the earlier rule, kept as a named option: pool size 1, every position
    assert pool_to_target(x, 8192, edge="clamp").shape == (2, 1024) == (2, pooled_size((64, 4, 4), 8192, "clamp"))
    tokens = torch.randn(2, 10, 64)  # T/C = 128 groups > 10 tokens -> pool size 0
    assert torch.allclose(pool_to_target(tokens, 8192), tokens.mean(dim=1)) and pooled_size((10, 64), 8192) == 64
    assert pooled_size((10, 64), 8192, "clamp") == 640
    with pytest.raises(ValueError, match="edge must be one of"):
        pool_to_target(x, 8, edge="nope")


def _held_then_pooled(backbone, x, t):
    """The extraction loop before pooling moved into the tap hooks: every tap's activation
    held until the forward ends, then pooled."""
    with torch.inference_mode():
        return {k: pool_to_target(v.float(), t).to(torch.float16).numpy() for k, v in backbone.forward_taps(x).items()}


def test_pooling_inside_the_tap_hooks_gives_the_same_features(lite0_64):
    import numpy as np

    from head2toe.extract import extract_features, prepare_for_inference
    from head2toe.preprocess import to_input
    from head2toe.tasks.base import ImageSplit

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 40, 40, 3), dtype=np.uint8)
    data = ImageSplit(images, np.arange(6))
    spec = lite0_64.spec
    x = to_input(images, lite0_64.input_size, spec.mean, spec.std)
    try:
        prepare_for_inference(lite0_64, channels_last=False)
        want = _held_then_pooled(lite0_64, x, 128)
        got = extract_features(lite0_64, data, [128], batch_size=4, progress=False, channels_last=False)[128]
        assert list(got.layers) == list(want) and len(want) == 51
        for k in want:  # same arithmetic, same order: bit for bit
            assert np.array_equal(got.layers[k], want[k]), k
        # channels_last changes only the order of float sums inside the convolutions
        fast = extract_features(lite0_64, data, [128], batch_size=4, progress=False, channels_last=True)[128]
        for k in want:
            a, b = want[k].astype(np.float32), fast.layers[k].astype(np.float32)
            assert np.allclose(a, b, rtol=2e-2, atol=2e-2 * max(float(np.abs(a).max()), 1e-3)), k
    finally:
        prepare_for_inference(lite0_64, channels_last=True)


def test_a_bad_precision_is_refused_before_any_forward(lite0_64):
    import numpy as np

    from head2toe.extract import iter_features
    from head2toe.tasks.base import ImageSplit

    data = ImageSplit(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.zeros(2))
    with pytest.raises(ValueError, match="precision must be one of"):
        next(iter_features(lite0_64, data, [64], precision="fp8"))
