"""PUT's transformers and sampling against the official code: ../shared/fixtures/put (reduced CVPR 2022 and
TPAMI 2024 models in the official layouts, their embeddings, logits and every sampling run's tokens, fill order
and completed images). Tolerances are the fixture README's recommended ones; greedy runs must match exactly."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import TEST_DEVICE, fixture_dir
from transedit.models.put.transformer import PUTConfig, build_put, infer_put_config
from transedit.models.put.sampling import SamplerRNG, inpaint, official_top_k, sample_tokens, step_counts, top_k_filter
from transedit.models.put.codec import PatchVQVAE, infer_pvqvae_config
from transedit.models.registry import CheckpointError, load_put
from transedit.random_weights import save_random_put

TOL_LOGITS = dict(atol=1e-4, rtol=0)
TOL_EMB = dict(atol=1e-5, rtol=0)
TOL_IMAGE = dict(atol=1e-2, rtol=0)
FIXTURE_HEADS = 4  # the reduced models' n_head (width 64): no tensor shape records it, the yaml does
FULL = {"cvpr2022": "cvpr2022_ffhq", "tpami2024": "tpami2024_ffhq_res256"}
# official run name -> sample_tokens arguments (top_k is the official --num_token_for_sampling count)
RUNS = {
    "cvpr2022": {
        "largest_ntpi1_top1": dict(schedule=1),
        "largest_ntpi3_top1": dict(schedule=3),
        "largest_ntpiall_top1": dict(schedule=-1),
        "raster_ntpi1_top1": dict(schedule=1, raster=True),
    },
    "tpami2024": {
        "ntpi1_top1": dict(schedule=1),
        "ntpi5_top1": dict(schedule=5),
        "ntpiall_top1": dict(schedule=-1),
        "cosine4_top1": dict(schedule="cosine_4"),
        "raster_ntpi1_top1": dict(schedule=1, raster=True),
    },
}
SEEDED = {"cvpr2022": "largest_ntpi1_top8_seed123", "tpami2024": "ntpi1_top8_seed123"}


def close(actual, expected, tol):
    torch.testing.assert_close(actual.detach().cpu().float(), expected.float(), **tol)


@pytest.fixture(scope="module", params=("cvpr2022", "tpami2024"))
def fx(request):
    root = fixture_dir("put")
    version = request.param
    desc = load_put(root / f"put_{version}_small_transformer_model.safetensors", n_head=FIXTURE_HEADS)
    model = desc.model.to(TEST_DEVICE)
    io = load_file(str(root / f"put_{version}_small_io.safetensors"))
    values = json.loads((root / f"put_{version}_small_values.json").read_text())
    image, mask = io["image"].to(TEST_DEVICE), io["mask"].float().to(TEST_DEVICE)
    data = model.content_codec.get_features(image, mask)
    return dict(version=version, desc=desc, model=model, io=io, values=values, image=image, mask=mask, data=data,
                params=values["reduced_transformer_config"]["params"])


def run_sampling(fx, **kwargs):
    """Tokens, completed images and per-token fill iteration (-1 = known) of one sampling run."""
    data, model = fx["data"], fx["model"]
    fill_step = torch.full(data["token"].shape, -1, dtype=torch.long)
    before = (data["token_type"].reshape(fill_step.shape) == 1).cpu()

    def record(state):
        nonlocal before
        now = state.known.cpu()
        fill_step[now & ~before] = state.iteration - 1
        before = now.clone()

    tokens = sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                           on_iteration=record, **kwargs)
    images = model.content_codec.decode(tokens, fx["image"], fx["mask"],
                                        combine_rec_and_gt=model.config.combine_rec_and_gt)
    return tokens, images, fill_step


def test_config_and_strict_load(fx):
    cfg, p = fx["desc"].config, fx["params"]
    width = p.get("n_embd", p.get("dim"))
    assert cfg.dim == width and cfg.n_layer == p.get("n_layer", p.get("depth")) and cfg.n_head == FIXTURE_HEADS
    assert cfg.num_token == p["num_token"] == fx["model"].content_codec.config.masked_embed_start
    assert cfg.token_shape == (8, 8) and fx["model"].image_size == (64, 64)
    assert cfg.combine_rec_and_gt == p["content_codec_config"]["params"]["combine_rec_and_gt"]
    sd = load_file(str(fixture_dir("put") / f"put_{fx['version']}_small_transformer_model.safetensors"))
    assert set(fx["model"].state_dict()) == set(sd)  # every official key, nothing extra
    fresh = build_put(cfg, PatchVQVAE(fx["model"].content_codec.config))
    fresh.load_state_dict(sd, strict=True)


def test_embedding_and_logits(fx):
    io, model, data = fx["io"], fx["model"], fx["data"]
    assert torch.equal(data["token"].view(2, 8, 8).cpu(), io["token_masked_input"])
    emb = model.embed(data["feature"], data["unmask_ratio"])
    close(emb.reshape(io["prepare_data_embedding_rq0"].shape), io["prepare_data_embedding_rq0"], TOL_EMB)
    logits = model.logits(emb)
    close(logits.reshape(io["forward_logits_rq0"].shape), io["forward_logits_rq0"], TOL_LOGITS)


def test_greedy_runs_match_exactly(fx):
    io = fx["io"]
    for run, kwargs in RUNS[fx["version"]].items():
        tokens, images, fill_step = run_sampling(fx, **kwargs)
        assert torch.equal(tokens.cpu(), io[f"sample_{run}_tokens"]), run
        close(images, io[f"sample_{run}_completed"], TOL_IMAGE)
        if f"sample_{run}_fill_step" in io:  # the order the official code filled the tokens in
            assert torch.equal(fill_step, io[f"sample_{run}_fill_step"]), run
        if run == "largest_ntpi1_top1":  # forward passes: one per token of the slowest sample
            assert fill_step.max().item() + 1 == fx["values"]["sampling_runs"][run]["num_forward_passes"]


@pytest.mark.skipif(TEST_DEVICE.type != "cpu", reason="the official seeded runs used the CPU generator")
def test_seeded_top8_run_reproduces_official_draws(fx):
    run = SEEDED[fx["version"]]
    torch.manual_seed(123)  # as the official script did right before generate_content
    tokens, images, fill_step = run_sampling(fx, schedule=1, top_k=8)
    io = fx["io"]
    assert torch.equal(tokens.cpu(), io[f"sample_{run}_tokens"])
    assert torch.equal(fill_step, io[f"sample_{run}_fill_step"])
    close(images, io[f"sample_{run}_completed"], TOL_IMAGE)


def test_per_sample_generators_are_batch_independent(fx):
    """TransEdit's own RNG mode: sample i depends on its seed only, so a batch of samples equals the same
    samples run one by one, and different seeds give different fills."""
    data, model = fx["data"], fx["model"]

    def run(rows, seeds):
        gens = [torch.Generator(device=TEST_DEVICE).manual_seed(s) for s in seeds]
        pick = lambda t: t[rows]  # noqa: E731
        return sample_tokens(model, pick(data["feature"]), pick(data["token"]), pick(data["token_type"]),
                             pick(data["unmask_ratio"]), schedule=2, top_k=8, rng=SamplerRNG(gens))

    rows = torch.tensor([0, 0, 1], device=TEST_DEVICE)
    together = run(rows, [7, 8, 9])
    alone = [run(rows[i:i + 1], [s]) for i, s in enumerate([7, 8, 9])]
    assert torch.equal(together, torch.cat(alone))
    assert not torch.equal(together[0], together[1])  # same image, different seeds
    known = data["token_type"].reshape(2, -1)[rows] == 1
    assert torch.equal(together[known], data["token"][rows][known])  # known tokens are never touched
    assert int(together[~known].max()) < model.config.num_token  # only unmasked codes are sampled


def test_bf16_autocast_samples_valid_tokens(fx):
    data, model = fx["data"], fx["model"]
    torch.manual_seed(0)
    tokens = sample_tokens(model, data["feature"], data["token"], data["token_type"], data["unmask_ratio"],
                           schedule=4, autocast_dtype=torch.bfloat16)
    known = data["token_type"].reshape(2, -1) == 1
    assert torch.equal(tokens[known], data["token"][known]) and int(tokens[~known].max()) < model.config.num_token
    greedy_fp32 = fx["io"][f"sample_{list(RUNS[fx['version']])[0]}_tokens"].to(tokens.device)
    # bf16 logits move the argmax only where fp32's margin is small: most greedy choices agree
    greedy_bf16, _, _ = run_sampling(fx, schedule=1, autocast_dtype=torch.bfloat16)
    assert (greedy_bf16[~known] == greedy_fp32[~known]).float().mean() > 0.5


def test_inpaint_keeps_known_pixels_when_compositing(fx):
    model = fx["model"]
    torch.manual_seed(1)
    out = inpaint(model, fx["image"][:1], fx["mask"][:1], num_samples=2, schedule=-1, top_k=8)
    assert out.shape == (2, 3, 64, 64) and out.min() >= 0 and out.max() <= 255
    if model.config.combine_rec_and_gt:
        keep = fx["mask"][:1].bool().expand_as(out)
        close(out[keep], fx["image"][:1].expand_as(out)[keep], TOL_IMAGE)


# ------------------------------------------------------------------------------------------ checkpoints
def test_official_container_loads_with_weights_only():
    root = fixture_dir("put")
    desc = load_put(root / "put_cvpr2022_small_transformer_last.pth", n_head=FIXTURE_HEADS)
    sd = load_file(str(root / "put_cvpr2022_small_transformer_model.safetensors"))
    assert desc.weights == "model"
    for k, v in desc.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_config_yaml_beside_checkpoint_supplies_heads(tmp_path):
    yaml = pytest.importorskip("yaml")
    root = fixture_dir("put")
    ckpt = tmp_path / "checkpoint" / "last.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes((root / "put_cvpr2022_small_transformer_last.pth").read_bytes())
    values = json.loads((root / "put_cvpr2022_small_values.json").read_text())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text(yaml.safe_dump({"model": values["reduced_transformer_config"]}))
    desc = load_put(ckpt)
    assert desc.config.n_head == FIXTURE_HEADS and "config.yaml" in desc.notes[0]
    io = load_file(str(root / "put_cvpr2022_small_io.safetensors"))
    data = desc.model.content_codec.get_features(io["image"], io["mask"].float())
    logits = desc.model.logits(desc.model.embed(data["feature"], data["unmask_ratio"]))
    close(logits, io["forward_logits_rq0"], TOL_LOGITS)


def test_ema_weights_preferred(tmp_path):
    path = save_random_put(tmp_path / "a.pth", version="tpami2024", seed=3)
    container = torch.load(path, weights_only=True)
    container["ema"] = {k: v + 1 if v.is_floating_point() else v for k, v in container["model"].items()}
    torch.save(container, tmp_path / "b.pth")
    desc = load_put(tmp_path / "b.pth")
    assert desc.weights == "ema" and any("EMA" in n for n in desc.notes)
    assert torch.equal(desc.model.to_logits.bias, container["ema"]["to_logits.bias"])


def test_pvqvae_only_and_foreign_files_refused(tmp_path):
    sd = torch.load(save_random_put(tmp_path / "t.pth"), weights_only=True)["model"]
    codec_only = {k[len("content_codec."):]: v for k, v in sd.items() if k.startswith("content_codec.")}
    torch.save({"model": codec_only, "last_epoch": 1}, tmp_path / "pvqvae.pth")
    with pytest.raises(CheckpointError, match="P-VQVAE.*not a transformer") as err:
        load_put(tmp_path / "pvqvae.pth")
    assert "pvqvae.pth" in str(err.value) and "models/put" in str(err.value)
    no_codec = {k: v for k, v in sd.items() if not k.startswith("content_codec.")}
    torch.save({"model": no_codec}, tmp_path / "nocodec.pth")
    with pytest.raises(CheckpointError, match="without its P-VQVAE"):
        load_put(tmp_path / "nocodec.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a PUT transformer"):
        load_put(tmp_path / "other.pth")


@pytest.mark.parametrize("version", ("cvpr2022", "tpami2024"))
def test_full_size_manifest_loads_strictly(version):
    manifest = json.loads((fixture_dir("put") / "put_full_manifests.json").read_text())[FULL[version]]["transformer"]
    keys = manifest["state_dict_keys"]
    sd = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in keys.items()}
    tsd = {k: v for k, v in sd.items() if not k.startswith("content_codec.")}
    cfg = infer_put_config(tsd)
    expected = dict(cvpr2022=(512, 30, 8, (32, 32), 512, 2048), tpami2024=(768, 12, 12, (32, 32), 8192, 3072))[version]
    assert (cfg.dim, cfg.n_layer, cfg.n_head, cfg.token_shape, cfg.num_token, cfg.mlp_hidden) == expected
    codec_cfg = infer_pvqvae_config(sd, masked_embed_start=cfg.num_token)
    with torch.device("meta"):
        model = build_put(cfg, PatchVQVAE(codec_cfg))
    ours = model.state_dict()
    official = {k: v for k, v in sd.items() if not k.startswith("content_codec.loss.")}
    assert set(ours) == set(official)
    assert all(tuple(ours[k].shape) == tuple(official[k].shape) for k in official)
    n = sum(v.numel() for k, v in ours.items() if not k.startswith("content_codec."))
    assert n == manifest["num_elements_without_codec"]


# ------------------------------------------------------------------------------------------ pieces
def test_step_counts_follow_the_official_schedules():
    assert step_counts(10, 3, 64) == [3, 3, 3, 1]
    assert step_counts(10, 1, 64) == [1] * 10
    assert step_counts(10, -1, 64) == [-1]
    assert step_counts(0, 3, 64) == []
    assert step_counts(5, None, 1024) == [2, 2, 1]  # max(1, 1024 // 500) per iteration
    assert step_counts(20, "average_4", 64) == [5, 5, 5, 5]
    cos = step_counts(25, "cosine_4", 64)
    raw = [math.cos(math.pi * s / 4) + 1 for s in range(4)]
    assert sum(cos) == 25 and len(cos) == 4 and cos == sorted(cos, reverse=True)
    assert all(abs(c - w * 25 / sum(raw)) <= 1 for c, w in zip(cos, raw))
    assert step_counts(25, "cosine-1_4", 64) == cos[::-1]
    lin = step_counts(20, "linear_4", 64)
    assert lin == [8, 6, 4, 2]
    assert sum(step_counts(7, "linear_5", 64)) == 7
    with pytest.raises(ValueError, match="schedule"):
        step_counts(5, "zigzag_3", 64)


def test_top_k_filter_counts():
    logits = torch.tensor([[0.1, 0.5, 0.3, 0.9, -1.0, 0.2, 0.0, 0.4]])
    greedy = top_k_filter(logits, 1)
    assert torch.isfinite(greedy).sum() == 1 and greedy[0, 3] == 0.9
    top3 = top_k_filter(logits, 3)
    assert set(torch.isfinite(top3)[0].nonzero().view(-1).tolist()) == {1, 3, 7}
    half = top_k_filter(logits, official_top_k(0.5, 8))  # the official filter_ratio 0 <= r <= 1: k = (1 - r) * C
    assert torch.isfinite(half).sum() == 4
    assert torch.equal(top_k_filter(logits, 100), logits)


def test_cvpr_rejects_schedules():
    cfg = PUTConfig(version="cvpr2022", dim=64, n_layer=1, n_head=1, token_shape=(2, 2), num_token=4, mlp_hidden=8)
    with pytest.raises(ValueError, match="TPAMI"):
        sample_tokens(_tiny(cfg), torch.zeros(1, 64, 2, 2), torch.zeros(1, 4, dtype=torch.long),
                      torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), schedule="cosine_2")


def _tiny(cfg):
    from transedit.models.put.codec import PVQVAEConfig

    codec = PatchVQVAE(PVQVAEConfig(n_e=8, e_dim=64, masked_embed_start=4, enc_res_ch=16, enc_num_res_blocks=1,
                                    enc_out_ch=16, dec_in_ch=64, dec_res_ch=16, dec_num_res_blocks=1))
    return build_put(cfg, codec).eval()
