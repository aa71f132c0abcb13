"""Half precision on the CPU, every stage: fp16 and bf16 against fp32 with stated tolerances, the precision policy
each family declares and how the nodes resolve it, and overflow on large activations.

Tolerances are relative L2 errors, ||half - fp32|| / ||fp32||, of each stage's output on small random-weight
models (CPU fp16 is emulated and slow; the GPU check repeats this at full official sizes, docs/precision-and-gpu.md "Precision"):
about 20 x the format's unit roundoff (bf16 2^-8, fp16 2^-11), a little more where errors compound through many
layers or a training step.
"""
from __future__ import annotations

import pytest
import torch

from transedit.models.core.precision import FP16_ACTIVATION_LIMIT, WHOLE_NETWORK, PrecisionPolicy, agreement, guard_fp16
from transedit.models.stylegan.generator import (PRECISION_WITH_CLAMP, PRECISION_WITHOUT_CLAMP, StyleGAN2Config,
                                                 StyleGAN2Generator)

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# relative L2 error allowed per stage and format
TOL = {
    "stylegan2": {"bf16": 0.05, "fp16": 0.01},
    "smart": {"bf16": 0.05, "fp16": 0.01},
    "encoder": {"bf16": 0.06, "fp16": 0.01},
    "dino": {"bf16": 0.05, "fp16": 0.01},
    "put_logits": {"bf16": 0.06, "fp16": 0.01},
    "splice_loss": {"bf16": 0.05, "fp16": 0.01},
}


def rel_err(half: torch.Tensor, ref: torch.Tensor) -> float:
    half, ref = half.float(), ref.float()
    assert torch.isfinite(half).all(), "half precision produced inf/NaN"
    return float((half - ref).norm() / ref.norm().clamp_min(1e-12))


def small_generator(seed=0, size=32, conv_clamp=None) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    cfg = StyleGAN2Config(size=size, style_dim=32, n_mlp=2, conv_clamp=conv_clamp,
                          channels={r: 16 for r in (4, 8, 16, 32, 64) if r <= size})
    return StyleGAN2Generator(cfg).eval()


# ------------------------------------------------------------------------------------------ the policy
def test_policy_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    gan, clamped = StyleGAN2Generator.PRECISION, PRECISION_WITH_CLAMP
    assert gan is PRECISION_WITHOUT_CLAMP  # read on the class: the case of a file trained without conv_clamp
    assert gan.resolve("auto", cpu, True) == clamped.resolve("auto", cpu, True) == torch.float32  # exact on the CPU
    assert clamped.resolve("auto", cuda, True) == torch.float16  # NVlabs' blocks (tests/test_precision_policy.py)
    assert gan.resolve("auto", cuda, True) == torch.bfloat16  # no clamp of its own: fp32's range
    assert PrecisionPolicy().resolve("auto", cuda, True) == torch.bfloat16
    assert PrecisionPolicy().resolve("auto", cuda, False) == torch.float16  # an old GPU without bf16
    assert gan.resolve("fp32", cuda, True) == torch.float32
    warnings = []
    no_fp16 = PrecisionPolicy(fp16=False)
    assert no_fp16.resolve("fp16", cuda, True, warnings.append) == torch.bfloat16
    assert no_fp16.resolve("fp16", cpu, True, warnings.append) == torch.float32
    assert PrecisionPolicy().resolve("bf16", cpu, False, warnings.append) == torch.float32
    assert len(warnings) == 3 and all("running in" in w for w in warnings)
    with pytest.raises(ValueError):
        gan.resolve("fp8", cuda, True)


def test_nodes_read_each_family_policy():
    """The policy a node resolves with is its model's: `auto` on a GPU is fp16 for a generator trained with
    conv_clamp, bf16 for one without and for the others (recorded evidence on each)."""
    from transedit.models.splice.dino import DinoViT
    from transedit.models.encoders.latent_encoder import LatentEncoder
    from transedit.models.put.transformer import PUTTransformerCVPR, PUTTransformerTPAMI
    from transedit.models.core.descriptor import ModelDescriptor

    def precision_policy(module):  # what a handle's `precision` reads: its descriptor's, i.e. the model's
        return ModelDescriptor(family="test", model=module, config=None, source="-").precision

    assert precision_policy(small_generator()).auto_gpu == "bf16"
    assert precision_policy(small_generator(conv_clamp=256.0)).auto_gpu == "fp16"
    assert PRECISION_WITH_CLAMP.evidence and PRECISION_WITHOUT_CLAMP.evidence
    for cls in (DinoViT, PUTTransformerCVPR, PUTTransformerTPAMI):
        assert cls.PRECISION.auto_gpu == "bf16" and cls.PRECISION.evidence
    enc = LatentEncoder(torch.nn.Linear(2, 2))
    assert precision_policy(enc).auto_gpu == "bf16"  # an encoder without its own policy: the safe default
    assert precision_policy(torch.nn.Linear(2, 2)).auto_gpu == "bf16"


def test_guard_only_touches_fp16():
    x = torch.tensor([1e6, -1e6, 3.0])
    assert guard_fp16(x) is x
    h = torch.tensor([float("inf"), -float("inf"), 3.0], dtype=torch.float16)
    assert guard_fp16(h).tolist() == [FP16_ACTIVATION_LIMIT, -FP16_ACTIVATION_LIMIT, 3.0]


# --------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_stylegan2_synthesis(fmt):
    g = small_generator()
    w = g.mapping(torch.randn(2, 32)).unsqueeze(1).expand(-1, g.n_latent, -1)
    with torch.no_grad():
        ref = g.synthesis(w, noise_mode="const")
        half = g.synthesis(w, noise_mode="const", dtype=HALF[fmt])
    assert half.dtype == torch.float32  # the RGB sum comes back in fp32
    assert rel_err(half, ref) < TOL["stylegan2"][fmt]


def test_stylegan2_fp16_is_closer_than_bf16():
    """The evidence behind NVlabs' recipe (fp16 blocks) as auto for a generator trained with conv_clamp, on this
    machine too (below the clamp the clamp changes nothing, so an unclamped generator measures the same)."""
    g = small_generator(seed=3)
    w = g.mapping(torch.randn(2, 32)).unsqueeze(1).expand(-1, g.n_latent, -1)
    with torch.no_grad():
        ref = g.synthesis(w)
        errs = {f: rel_err(g.synthesis(w, dtype=HALF[f]), ref) for f in HALF}
    assert errs["fp16"] * 3 < errs["bf16"], errs


@pytest.mark.parametrize("blocks", [None, WHOLE_NETWORK], ids=["auto blocks", "every block"])
def test_stylegan2_fp16_overflow_is_finite_and_flagged(blocks):
    """Activations that leave fp16's range inside the network (fp32 values over 65504 after the first conv of a
    constant input that itself still fits) used to become inf and then NaN in the image; the guard (and auto's
    clamp) keep them finite, fp32 is untouched by them, and finite is not right: the accuracy check flags the
    image. Where auto does hold: tests/test_precision_policy.py."""
    g = small_generator(seed=1)
    with torch.no_grad():
        g.input.input.copy_(torch.full_like(g.input.input, 3e4))  # fits fp16; its 3x3 sums do not
    w = g.mapping(torch.randn(1, 32)).unsqueeze(1).expand(-1, g.n_latent, -1)
    with torch.no_grad():
        ref, feats = g.synthesis(w, return_features=True)
        assert feats["conv0"].abs().max() > 65504  # fp32 really leaves fp16's range here
        half = g.synthesis(w, dtype=torch.float16, half_blocks=blocks)
    assert torch.isfinite(half).all()
    assert not agreement(half, ref).within(TOL["stylegan2"]["fp16"])


def _smart_setup(scale: float = 1.0):
    from transedit.models.encoders.smart import SMART, SMARTConfig

    torch.manual_seed(0)
    smart = SMART(SMARTConfig(q_channel=16, embed_dim=16, kv_channels=[8, 16], kv_shapes=[8, 4], ffn_dim=32)).eval()
    with torch.no_grad():
        for p in smart.parameters():
            p.mul_(scale)
    x = torch.randn(2, 16, 16, 16) * scale
    feats = [torch.randn(2, 64, 8) * scale, torch.randn(2, 16, 16) * scale]
    return smart, x, feats


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_smart_runs_in_fp32_inside_a_half_precision_generator(fmt):
    smart, x, feats = _smart_setup()
    hook = smart.hook(feats, beta=1.0, layer=0)
    with torch.no_grad():
        ref = hook(0, x)
        with torch.autocast("cpu", dtype=HALF[fmt]):
            half = hook(0, x.to(HALF[fmt]))
    assert half.dtype == HALF[fmt]
    assert rel_err(half, ref) < TOL["smart"][fmt]


def test_smart_does_not_overflow_fp16():
    """SMART's raw, unscaled q.k products: with activations of a few hundred they pass 65504, so the block run
    in fp16 returns inf/NaN even where its output (here V scaled down by beta1) is moderate; the generator hook
    computes it in fp32 and only guards the fp16 output."""
    smart, x, feats = _smart_setup(scale=12.0)
    pre = x.flatten(2).transpose(1, 2)
    beta = (1e-5, 1.0)
    with torch.no_grad():
        ref = smart.hook(feats, beta=beta, layer=0)(0, x)
        with torch.autocast("cpu", dtype=torch.float16):
            raw = smart(pre.half(), [f.half() for f in feats], beta=beta)  # the block itself in fp16
            half = smart.hook(feats, beta=beta, layer=0)(0, x.half())
    assert not torch.isfinite(raw).all(), "the hazard this guards against did not occur"
    assert torch.isfinite(half).all()
    inside = ref.abs() < FP16_ACTIVATION_LIMIT
    assert inside.float().mean() > 0.5
    assert rel_err(half.float()[inside], ref[inside]) < TOL["smart"]["fp16"]


@pytest.mark.parametrize("family", ["style_transformer", "psp", "e4e", "styleprompter", "swinstyleformer"])
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_encoders(tmp_path, family, fmt):
    from transedit.models.registry import load_encoder
    from transedit.random_weights import save_random_encoder

    desc = load_encoder(save_random_encoder(tmp_path / "e.pt", family=family))
    model = desc.model
    h, w = desc.input_size
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=HALF[fmt]):
            half = model(x)
    assert half.dtype == torch.float32  # W+ is kept in fp32 (latent_avg is large)
    assert rel_err(half - model.latent_avg if model.latent_avg is not None else half,
                   ref - model.latent_avg if model.latent_avg is not None else ref) < TOL["encoder"][fmt]


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    from transedit.models.registry import load_dino
    from transedit.random_weights import save_random_dino

    return load_dino(save_random_dino(tmp_path_factory.mktemp("dino") / "d.safetensors")).model.eval()


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_dino_keys_and_cls(dino, fmt):
    from transedit.models.splice.dino import preprocess, self_similarity

    x = preprocess(torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(1)), size=48)
    with torch.no_grad():
        ref = dino(x)
        with torch.autocast("cpu", dtype=HALF[fmt]):
            half = dino(x)
    assert rel_err(self_similarity(half.keys), self_similarity(ref.keys)) < TOL["dino"][fmt]
    assert rel_err(half.cls, ref.cls) < TOL["dino"][fmt]


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_splice_step_losses(dino, fmt):
    """The same first two steps (same draws) in fp32 and under half-precision autocast: the loss values agree."""
    from transedit.models.splice.training import SpliceSettings, SpliceTrainer

    a = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    b = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))

    def losses(dtype):
        t = SpliceTrainer(dino, a, b, SpliceSettings(steps=2, dino_size=48, early_stop=False, autocast_dtype=dtype))
        with torch.no_grad(), t._autocast():
            feats = t.loss.features_of([t.render()])
        return torch.cat([feats[0].keys.flatten(), feats[0].cls.flatten()])

    assert rel_err(losses(HALF[fmt]), losses(None)) < TOL["splice_loss"][fmt]


@pytest.mark.parametrize("version", ["cvpr2022", "tpami2024"])
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_put_logits(tmp_path, version, fmt):
    from transedit.models.registry import load_put
    from transedit.random_weights import save_random_put

    model = load_put(save_random_put(tmp_path / "p.pth", version=version)).model.eval()
    h, w = model.image_size
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(4)) * 255
    known = torch.ones(1, 1, h, w)
    known[..., h // 4:h // 2, w // 4:w // 2] = 0
    data = model.content_codec.get_features(img, known)
    feature, ratio = data["feature"], data["unmask_ratio"]
    with torch.no_grad():
        ref = model.logits(model.embed(feature, ratio)).float()
        with torch.autocast("cpu", dtype=HALF[fmt]):
            half = model.logits(model.embed(feature, ratio)).float()
    assert rel_err(half, ref) < TOL["put_logits"][fmt]
