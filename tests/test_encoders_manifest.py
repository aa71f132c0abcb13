"""Full-size key/shape manifests: Style Transformer and EditTransformer from the official-instantiated
manifests in ../shared/fixtures, pSp and e4e from key rules written here from the official source."""
import json

import pytest
import torch

from transedit.models.encoders.irse import IR_UNITS, IRSEConfig, infer_irse_config, make_body, strip_prefix
from transedit.models.encoders.psp import (Encoder4Editing, GradualStyleEncoder, PSPConfig, build_psp_encoder,
                                           infer_psp_config)
from transedit.models.registry import infer_stylegan2_config
from transedit.models.encoders.style_transformer import (EditTransformer, StyleTransformerEncoder,
                                                         infer_edit_transformer_config, infer_style_transformer_config)
from transedit.models.stylegan.generator import StyleGAN2Generator

# Parameter count of the official pSp GradualStyleEncoder(50, 'ir_se') and e4e Encoder4Editing(50, 'ir_se')
# at n_styles=18 (eladrich/pixel2style2pixel and omertov/encoder4editing psp_encoders.py), established by
# instantiating the official classes; 621 state-dict entries (465 parameters + 156 BatchNorm buffers).
OFFICIAL_PSP_E4E_PARAMS_18 = 267_136_704
OFFICIAL_PSP_E4E_KEYS_18 = 621


def zeros_from(entries: dict) -> dict[str, torch.Tensor]:
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.zeros(v["shape"], dtype=dtypes[v["dtype"]]) for k, v in entries.items()}


def layout(sd: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in sd.items()]


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(build):
    """Build full-size models without allocating or initialising 1 GB of weights (shapes only)."""
    with torch.device("meta"):
        return build()


@pytest.fixture(scope="module")
def st_manifest(sg2_fixtures):
    return json.loads((sg2_fixtures / "manifest_style_transformer_ffhq.json").read_text())


@pytest.fixture(scope="module")
def g_manifest(sg2_fixtures):
    return json.loads((sg2_fixtures / "manifest_stylegan2_1024.json").read_text())


# ---------------------------------------------------------------- key rules from the official source
def _bn(prefix: str, ch: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.weight", (ch,)), (f"{prefix}.bias", (ch,)), (f"{prefix}.running_mean", (ch,)),
            (f"{prefix}.running_var", (ch,)), (f"{prefix}.num_batches_tracked", ())]


def official_trunk_layout(units=(3, 4, 14, 3), widths=(64, 128, 256, 512), input_nc=3):
    """helpers.py: input_layer = Sequential(Conv2d(input_nc, 64, 3, bias=False), BatchNorm2d, PReLU);
    get_block(in, depth, n) = [(in, depth, 2)] + [(depth, depth, 1)] * (n - 1); bottleneck_IR_SE:
    shortcut_layer = MaxPool2d (no keys) if in == depth else Sequential(Conv1x1 no bias, BatchNorm2d);
    res_layer = Sequential(BN(in), Conv3x3(in, d), PReLU(d), Conv3x3(d, d), BN(d), SEModule(d, 16))."""
    out = [("input_layer.0.weight", (widths[0], input_nc, 3, 3)), *_bn("input_layer.1", widths[0]),
           ("input_layer.2.weight", (widths[0],))]
    i, in_ch = 0, widths[0]
    for depth, n in zip(widths, units):
        for u in range(n):
            src = in_ch if u == 0 else depth
            p = f"body.{i}"
            if src != depth:  # official registration order: shortcut_layer before res_layer
                out += [(f"{p}.shortcut_layer.0.weight", (depth, src, 1, 1)), *_bn(f"{p}.shortcut_layer.1", depth)]
            out += [*_bn(f"{p}.res_layer.0", src), (f"{p}.res_layer.1.weight", (depth, src, 3, 3)),
                    (f"{p}.res_layer.2.weight", (depth,)), (f"{p}.res_layer.3.weight", (depth, depth, 3, 3)),
                    *_bn(f"{p}.res_layer.4", depth),
                    (f"{p}.res_layer.5.fc1.weight", (depth // 16, depth, 1, 1)),
                    (f"{p}.res_layer.5.fc2.weight", (depth, depth // 16, 1, 1))]
            i += 1
        in_ch = depth
    return out


def official_psp_layout(n_styles=18, input_nc=3):
    """psp_encoders.py GradualStyleEncoder / Encoder4Editing: trunk, then `styles` (18 x
    GradualStyleBlock(512, 512, spatial): spatial 16 for i < 3, 32 for i < 7, else 64; log2(spatial)
    Conv2d(3x3, stride 2, with bias) + LeakyReLU in `convs`, then EqualLinear(512, 512) `linear`),
    then latlayer1 = Conv2d(256, 512, 1), latlayer2 = Conv2d(128, 512, 1)."""
    out = official_trunk_layout(input_nc=input_nc)
    for i in range(n_styles):
        spatial = 16 if i < 3 else 32 if i < 7 else 64
        for j in range(spatial.bit_length() - 1):
            out += [(f"styles.{i}.convs.{2 * j}.weight", (512, 512, 3, 3)), (f"styles.{i}.convs.{2 * j}.bias", (512,))]
        out += [(f"styles.{i}.linear.weight", (512, 512)), (f"styles.{i}.linear.bias", (512,))]
    out += [("latlayer1.weight", (512, 256, 1, 1)), ("latlayer1.bias", (512,)),
            ("latlayer2.weight", (512, 128, 1, 1)), ("latlayer2.bias", (512,))]
    return out


def params_of(layout_: list[tuple[str, tuple]]) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    total = 0
    for k, shape in layout_:
        if not k.endswith(buffers):
            total += int(torch.tensor(shape).prod().item()) if shape else 1
    return total


# ---------------------------------------------------------------------------------- Style Transformer
def test_style_transformer_manifest_loads_strictly(st_manifest, g_manifest):
    entries = st_manifest["encoder_state_dict"]
    assert len(entries) == 444 and all(k.startswith("encoder.module.") for k in entries)
    sd = strip_prefix(zeros_from(entries), ("encoder.module.",))
    cfg = infer_style_transformer_config(sd, st_manifest["checkpoint_container"]["opts_defaults_of_released_TrainOptions"])
    assert cfg.backbone == IRSEConfig()  # IR-SE-50, widths 64..512, input 3
    assert (cfg.n_latent, cfg.d_model, cfg.nhead, cfg.dim_feedforward) == (18, 512, 4, 1024)
    assert cfg.start_from_latent_avg and not cfg.learn_in_w
    enc = on_meta(lambda: StyleTransformerEncoder(cfg))
    enc.load_state_dict(sd, strict=True, assign=True)
    assert layout(enc.state_dict()) == layout(sd)  # same keys, shapes and order
    assert n_params(enc) == st_manifest["num_params_encoder"] == 40_620_224

    # decoder.module.* == rosinality g_ema keys (asserted by the manifest): a 1024 config-f generator
    g_sd = zeros_from(g_manifest["g_ema_state_dict"])
    gcfg = infer_stylegan2_config(g_sd)
    assert (gcfg.size, gcfg.style_dim, gcfg.n_latent) == (1024, 512, cfg.n_latent)
    on_meta(lambda: StyleGAN2Generator(gcfg)).load_state_dict(g_sd, strict=True, assign=True)
    assert st_manifest["decoder_key_count"] == len(g_sd)


def test_style_transformer_trunk_matches_official_rules(st_manifest):
    """The hand-written trunk rules reproduce the official-instantiated manifest (validates the rules
    that the pSp/e4e checks below rely on)."""
    sd = strip_prefix(zeros_from(st_manifest["encoder_state_dict"]), ("encoder.module.",))
    trunk = [(k, s) for k, s in layout(sd) if k.split(".")[0] in ("input_layer", "body")]
    assert trunk == official_trunk_layout()


def test_edit_transformer_manifest_loads_strictly(sg2_fixtures):
    manifest = json.loads((sg2_fixtures / "manifest_edit_transformer_ffhq.json").read_text())
    entries = manifest["state_dict_non_decoder"]
    sd_all = zeros_from(entries)
    sd = strip_prefix(sd_all, ("encoder.module.",))
    assert sd and all(k.startswith("transformerlayer.") for k in sd)
    assert any(k.startswith("classifier.module.") for k in sd_all)  # training-only, never loaded
    cfg = infer_edit_transformer_config(sd)
    assert (cfg.d_model, cfg.nhead, cfg.dim_feedforward) == (512, 4, 1024)
    model = EditTransformer(cfg)
    model.load_state_dict(sd, strict=True)
    assert layout(model.state_dict()) == layout(sd)


# ---------------------------------------------------------------------------------- pSp / e4e
@pytest.mark.parametrize("cls, kind", [(GradualStyleEncoder, "psp"), (Encoder4Editing, "e4e")])
def test_psp_e4e_official_layout(cls, kind):
    expected = official_psp_layout()
    assert len(expected) == OFFICIAL_PSP_E4E_KEYS_18
    assert params_of(expected) == OFFICIAL_PSP_E4E_PARAMS_18
    model = on_meta(lambda: cls(PSPConfig(kind=kind)))
    assert layout(model.state_dict()) == expected
    assert n_params(model) == OFFICIAL_PSP_E4E_PARAMS_18
    # and back: a zero state dict with the official layout infers this config and loads strictly
    sd = {k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
          for k, s in expected}
    cfg = infer_psp_config({f"encoder.{k}": v for k, v in sd.items()},
                           opts={"encoder_type": "Encoder4Editing" if kind == "e4e" else "GradualStyleEncoder"})
    assert cfg == PSPConfig(kind=kind)
    on_meta(lambda: build_psp_encoder(cfg)).load_state_dict(sd, strict=True, assign=True)


@pytest.mark.parametrize("size, n_styles", [(256, 14), (512, 16)])
def test_psp_other_generator_sizes(size, n_styles):
    """pSp derives n_styles = 2*log2(output_size) - 2 (e4e the same from stylegan_size)."""
    expected = official_psp_layout(n_styles=n_styles)
    model = on_meta(lambda: GradualStyleEncoder(PSPConfig(n_styles=n_styles)))
    assert layout(model.state_dict()) == expected
    cfg = infer_psp_config(dict(model.state_dict()))
    assert (cfg.n_styles, cfg.coarse_ind, cfg.middle_ind, cfg.head_spatials) == (n_styles, 3, 7, (16, 32, 64))


def test_psp_input_nc():
    """pSp takes `opts.input_nc` (e.g. 1 for sketches, 19 for segmentation maps); e4e hard-codes 3."""
    model = on_meta(lambda: GradualStyleEncoder(PSPConfig(backbone=IRSEConfig(input_nc=19))))
    assert layout(model.state_dict()) == official_psp_layout(input_nc=19)
    assert infer_psp_config(dict(model.state_dict())).backbone.input_nc == 19


@torch.no_grad()
def test_psp_e4e_full_size_forward_shapes():
    x = torch.zeros(1, 3, 256, 256, device="meta")  # shape propagation only
    for kind in ("psp", "e4e"):
        model = on_meta(lambda: build_psp_encoder(PSPConfig(kind=kind)))
        codes, feats = model(x, return_features=True)
        assert codes.shape == (1, 18, 512)
        assert feats["c1"].shape == (1, 128, 64, 64)
        assert feats["c2"].shape == (1, 256, 32, 32)
        assert feats["c3"].shape == (1, 512, 16, 16)
        assert feats["p2"].shape == (1, 512, 32, 32) and feats["p1"].shape == (1, 512, 64, 64)


# ---------------------------------------------------------------------------------- IR-SE unit tables
@pytest.mark.parametrize("num_layers", [50, 100, 152])
def test_ir_unit_tables(num_layers):
    units = IR_UNITS[num_layers]
    cfg = IRSEConfig(units=units)
    body = on_meta(lambda: make_body(cfg))
    assert len(body) == sum(units)
    assert cfg.taps == tuple(sum(units[:k]) - 1 for k in (2, 3, 4))
    sd = {f"body.{k}": v for k, v in body.state_dict().items()}
    sd.update({k: torch.zeros(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
               for k, s in official_trunk_layout(units) if k.startswith("input_layer")})
    assert [(k, s) for k, s in layout(sd) if k.startswith("body")] == \
        [(k, s) for k, s in official_trunk_layout(units) if k.startswith("body")]
    assert infer_irse_config(sd) == cfg
