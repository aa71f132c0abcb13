"""The comparison scripts in benchmarks/ without the official checkouts: stages skip with a line saying why,
the docs/performance.md table renders, and the Splice study's preset rule matches the trainer's early stop."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
vs_official = pytest.importorskip("vs_official")
study = pytest.importorskip("splice_time_study")


def test_missing_checkouts_skip_each_stage_with_a_reason(tmp_path, capsys):
    out = tmp_path / "vs.json"
    vs_official.main(["--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [r["stage"] for r in report["rows"]] == list(vs_official.STAGES)
    assert all("no checkout of" in r["skipped"] for r in report["rows"])
    assert ("style_transformer: skipped, no checkout of rosinality/stylegan2-pytorch, sapphire497/style-transformer"
            in printed)
    table = vs_official.markdown(report)
    assert table.count("skipped: no checkout") == len(vs_official.STAGES)


def test_markdown_table_of_a_run():
    report = {"rows": [
        {"stage": "stylegan2_1024_synthesis", "batch": 1, "official_s": 4.67, "pack_s": 3.09, "ratio": 1.51,
         "max_abs_diff": 1.9e-06, "ref_max_abs": 7.15, "official_peak_mib": 2489.0, "pack_peak_mib": 487.0},
        {"stage": "put_tpami2024", "case": "1 per pass (paper), 1 sample", "extrapolated": True,
         "official_s": 665.3, "pack_s": 468.9, "ratio": 1.42, "official_peak_mib": 176, "pack_peak_mib": 96},
        {"stage": "splice_curve_vits8", "official_s": 1, "pack_s": 1, "ratio": 1},
    ]}
    lines = vs_official.markdown(report).splitlines()
    assert len(lines) == 4  # header, rule, two rows (curves are not table rows)
    assert "| stylegan2_1024_synthesis | batch 1 | 4.67 | 3.09 | **1.51×** | 1.9e-06 (±7.15) | 2489 / 487 |" in lines
    assert "(extrapolated)" in lines[3] and "greedy fills checked" in lines[3]


def test_outputs_that_differ_are_not_timed():
    row = {"stage": "x", "max_abs_diff": 0.5, "ref_max_abs": 10.0}
    with pytest.raises(AssertionError, match="not timed"):
        vs_official.check(row, 1e-3)
    ok = {"stage": "x", "max_abs_diff": 1e-6, "ref_max_abs": 10.0}
    vs_official.check(ok, 1e-3)
    assert ok["agrees"]


def _bf16_race(final_offset: float, frames: int = 1, off_row: int = -1, pack_rows=None):
    """bench_tuning.bf16_row on stand-ins: an official coach whose losses halve each step (`frames` rows per step,
    step by step) and a bf16 run that wobbles 6 % mid-run and whose row `off_row` ends `final_offset` (relative)
    away; returns the row or the refusal."""
    import types

    import torch

    bench_tuning = pytest.importorskip("bench_tuning")
    official_rows = [[(1.0 + f) / 2 ** k, (0.5 + f) / 2 ** k, 0.0] for k in range(4) for f in range(frames)]
    pack_losses = torch.tensor(official_rows)[:, :2].clone()
    pack_losses[1] *= 1.06
    pack_losses[off_row] *= 1 + final_offset
    if pack_rows is not None:
        pack_losses = pack_losses[:pack_rows]
    holder, timed = {}, []

    def official():
        holder["rows"] = official_rows
        return torch.ones(1, 3, 4, 4)

    def pack(precision="fp32", keep=None):
        assert precision == "bf16"
        if keep is not None:
            keep["losses"] = pack_losses
        return torch.ones(1, 3, 4, 4) * 1.01

    ctx = types.SimpleNamespace(race=lambda a, b, profile: timed.append(1) or {"ratio": 2.0},
                                profiled=lambda stage: False)
    fp32_row = {"stage": "pti", "case": "c", "size": 8, "steps": 4, "config": "PTI"}
    return bench_tuning.bf16_row(ctx, fp32_row, official, pack, holder, frames=frames), timed


def test_bf16_tuning_race_judges_the_last_steps_losses():
    row, timed = _bf16_race(0.01)
    assert row["stage"] == "pti_bf16" and row["agrees"] and timed and row["final_loss_rel_diff"] == pytest.approx(0.01, rel=1e-2)
    assert row["loss_max_rel_diff_any_step"] == pytest.approx(0.06, rel=1e-2)  # reported, not judged
    assert "final losses within" in vs_official.markdown({"rows": [{**row, "official_s": 2, "pack_s": 1,
                                                                    "official_peak_mib": 1, "pack_peak_mib": 1}]})
    # the planted fault: a bf16 run that ends 8 % worse is refused before anything is timed
    with pytest.raises(AssertionError, match="not timed"):
        _bf16_race(0.08)


def test_bf16_tuning_race_judges_every_frame_of_the_last_step():
    # STIT logs one row per step and frame: frame 0 of the last step is the second-last row, and it counts too
    row, _ = _bf16_race(0.01, frames=2, off_row=-2)
    assert row["agrees"] and row["final_loss_rel_diff"] == pytest.approx(0.01, rel=1e-2)
    with pytest.raises(AssertionError, match="not timed"):
        _bf16_race(0.30, frames=2, off_row=-2)
    # rows that do not pair up (a missing step, a broadcast single row) are refused rather than compared
    with pytest.raises(AssertionError, match="not compared"):
        _bf16_race(0.0, frames=2, pack_rows=6)
    with pytest.raises(AssertionError, match="not compared"):
        _bf16_race(0.0, frames=2, pack_rows=1)


def _records(losses):
    return [[i + 1, float(i + 1), loss] for i, loss in enumerate(losses)]


def test_preset_stop_follows_the_trainers_early_stop_rule():
    """The study's reading of a preset (step limit or early stop over windows of per-step losses) agrees with
    bench_splice's model of SpliceTrainer's rule, applied to the same windows."""
    from bench_splice import plateau_stop
    from transedit.models.splice.training import SpliceSettings

    s = SpliceSettings()
    losses = [100.0 - 0.05 * min(i, 1000) for i in range(4000)]  # improves, then flat from step 1000
    records = _records(losses)
    windows = [(records[k - 1][0] + 1, sum(r[2] for r in records[k - s.plateau_window:k]) / s.plateau_window)
               for k in range(s.plateau_window, len(records) + 1, s.plateau_window)]
    expected = plateau_stop(windows, s.plateau_tol, s.plateau_patience, s.min_steps)
    assert expected == 1801  # windows 1201-1400, 1401-1600, 1601-1800 are flat: three in a row
    assert study.preset_stop(records, 2500) == (expected, "early stop")
    assert study.preset_stop(records, 800) == (800, "step limit")
    assert study.preset_stop(records, 10_000) == (10_000, "step limit (no early stop)")
    improving = [100.0 * 0.999 ** i for i in range(3000)]  # > 1 % better every window: never stops
    assert study.preset_stop(_records(improving), 2500) == (2500, "step limit")


def test_studio_benchmark_measures_the_preview_route(tmp_path):
    """bench_studio at a small size: every preview size answers through the route's service, the queue run and
    the replayed drag are recorded, and the drag ends on the slider's final value."""
    bench_studio = pytest.importorskip("bench_studio")
    out = tmp_path / "studio.json"
    assert bench_studio.main(["--size", "256", "--previews", "128,256", "--reps", "1", "--warmup", "0",
                              "--drag-seconds", "0.5", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r.get("preview_size") for r in rows if r["what"] == "preview route"] == [128, 256]
    assert any(r["what"].startswith("queue run") for r in rows)
    (drag,) = [r for r in rows if r["what"].startswith("slider drag")]
    assert drag["last_preview_is_final_value"] and 1 <= drag["previews_rendered"] <= drag["slider_moves"]
