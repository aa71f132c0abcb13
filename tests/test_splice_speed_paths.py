"""The shortcuts that make Splice's step cheaper compute what the plain path computes."""
import torch

from transedit.models.splice.dino import DinoConfig, DinoViT, preprocess
from transedit.models.splice.training import SpliceLoss


def _dino(seed=0):
    torch.manual_seed(seed)
    model = DinoViT(DinoConfig(patch_size=8, embed_dim=64, depth=3, num_heads=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_last_block_cls_only_equals_the_full_block():
    """forward() runs the last block for the [CLS] row only; with intermediates it runs every row."""
    dino = _dino()
    x = torch.randn(2, 3, 48, 40)
    fast = dino(x)
    full = dino(x, intermediates={})
    torch.testing.assert_close(fast.keys, full.keys, rtol=0, atol=0)
    torch.testing.assert_close(fast.cls, full.cls, rtol=1e-5, atol=1e-5)
    assert (fast.cls - full.cls).abs().max() < 1e-5 < full.cls.abs().max()


def test_last_block_gradients_equal_the_full_block():
    dino = _dino(1)
    grads = []
    for intermediates in (None, {}):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
        f = dino(x, intermediates=intermediates)
        (f.cls.square().sum() + f.keys.sin().sum()).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_dino_size_is_the_short_side_dino_sees():
    """SpliceSettings.dino_size / SpliceLoss(size=...) is the official config's dino_global_patch_size."""
    dino = _dino()
    images = torch.rand(1, 3, 96, 128)
    for size in (224, 112):
        got = SpliceLoss(dino, size=size).features(images)
        assert got.keys.shape[1] == 1 + (size // 8) * (size * 128 // 96 // 8)
        want = dino(preprocess(images, size=size))
        torch.testing.assert_close(got.keys, want.keys)
