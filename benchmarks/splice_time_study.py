"""Splice: what the presets cost or save against the official 10 000-step training, in wall time, on one pair.

    O=path/to/checkouts
    python benchmarks/splice_time_study.py --side official --official splice=$O/Splice --official dino=$O/dino &
    python benchmarks/splice_time_study.py --side pack     --official splice=$O/Splice --official dino=$O/dino &
    wait; python benchmarks/splice_time_study.py --side report

Each side trains the same pair from the same generator weights (the official xavier init, seed 0) against the
same DINO ViT-S/8 (random weights: no pretrained file can be downloaded here) and records, per step, the wall
time since the start and the per-step (global) loss. `official` is omerbt/Splice's train.py iteration;
`pack` is TransEdit's SpliceTrainer with early stopping off, so one run gives every preset's trajectory (the
presets differ only in their step limit and early stop, which `report` applies afterwards). Run the two
sides at the same time, one thread each (`--threads 1`), so both see the same machine.

Small on purpose, so that a CPU run takes well under an hour: a 128 px pair and DINO at 112 px (the official
config's dino_global_patch_size; 224 in the paper), --official-steps / --pack-steps steps.

`report` smooths the losses (mean over --window steps), and writes
benchmarks/results/splice_time_study.json and splice_loss_vs_time.png: where each preset stops (its step
limit or the early-stop rule), its time and loss there, and for several N how long each side needs to reach
the (smoothed) loss the official code has at its step N.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_official as vo  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PRESETS = {"fast": 800, "balanced": 2500, "official": 10_000}  # nodes/splice.py PRESETS
CHECKPOINTS = (100, 250, 500, 750, 1000, 2000, 5000)


def train_side(args):
    paths = dict(item.split("=", 1) for item in args.official)
    missing = [n for n in ("splice", "dino") if n not in paths]
    if missing:
        raise SystemExit(f"--official {' and '.join(missing)}=PATH is needed for --side {args.side}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="splice-study-") as tmp:
        ctx = argparse.Namespace(paths=paths, device=torch.device("cpu"), tmp=Path(tmp), cache={})
        setup = vo.SpliceSetup(ctx, "vits8", args.size, dino_size=args.dino_size)
        run = setup.official() if args.side == "official" else setup.pack()
        steps = args.official_steps if args.side == "official" else args.pack_steps
        records = vo.record_steps(run.step, steps, lambda out: setup.global_loss(args.side, out))
    out = {"side": args.side, "threads": args.threads, "size": args.size, "dino_size": args.dino_size,
           "dino": "ViT-S/8 (random weights)", "steps": steps, "records": records,
           "machine_load_at_end": os.getloadavg()}
    path = RESULTS / f"splice_time_{args.side}.json"
    path.write_text(json.dumps(out))
    print(f"wrote {path}")


def smooth(records, window):
    """[(step, t, loss)] -> [(step, t, mean loss of the `window` steps ending there)]."""
    out = []
    for k in range(window - 1, len(records)):
        chunk = records[k - window + 1:k + 1]
        out.append((chunk[-1][0], chunk[-1][1], statistics.fmean(r[2] for r in chunk)))
    return out


def preset_stop(records, limit):
    """Where SpliceTrainer with a preset's settings stops on these per-step losses: its step limit, or the
    early-stop rule over windows of plateau_window steps (SpliceSettings' defaults); official never stops
    early."""
    from transedit.models.splice.training import SpliceSettings

    s = SpliceSettings()
    if limit >= PRESETS["official"]:
        return limit, "step limit (no early stop)"
    best, flat = None, 0
    for k in range(s.plateau_window, len(records) + 1, s.plateau_window):
        mean = statistics.fmean(r[2] for r in records[k - s.plateau_window:k])
        step = records[k - 1][0] + 1  # the trainer's step_index after that step
        if step > limit:
            break
        flat = flat + 1 if best is not None and mean > best * (1 - s.plateau_tol) else 0
        best = mean if best is None else min(best, mean)
        if flat >= s.plateau_patience and step >= s.min_steps:
            return step, "early stop"
    return limit, "step limit"


def report(args):
    sides = {s: json.loads((RESULTS / f"splice_time_{s}.json").read_text()) for s in ("official", "pack")}
    sm = {s: smooth(d["records"], args.window) for s, d in sides.items()}
    rate = {s: d["records"][-1][1] / d["records"][-1][0] for s, d in sides.items()}  # seconds per step
    summary = {"setup": {k: sides["pack"][k] for k in ("size", "dino_size", "dino", "threads")},
               "window": args.window, "s_per_step": {s: round(r, 4) for s, r in rate.items()},
               "official_steps_run": sides["official"]["steps"], "pack_steps_run": sides["pack"]["steps"]}
    summary["official_10000_steps_extrapolated_s"] = round(rate["official"] * PRESETS["official"], 0)
    last = sm["official"][-1]
    summary["official_last_measured"] = {"step": last[0], "s": last[1], "smoothed_loss": round(last[2], 4)}

    def loss_at(series, step):
        return next((l for st, _, l in series if st >= step), None)

    def time_to(series, target):
        return next(((st, t) for st, t, l in series if l <= target), None)

    reach = []
    for n in CHECKPOINTS:
        target = loss_at(sm["official"], n)
        if target is None:
            continue
        o, p = time_to(sm["official"], target), time_to(sm["pack"], target)
        reach.append({"official_step": n, "official_loss": round(target, 4), "official_s": o[1],
                      "pack_step": p[0] if p else None, "pack_s": p[1] if p else None,
                      "speedup": round(o[1] / p[1], 2) if p else None})
    summary["time_to_official_loss"] = reach
    presets = {}
    for name, limit in PRESETS.items():
        stop, why = preset_stop(sides["pack"]["records"], limit)
        ran = min(stop, sides["pack"]["records"][-1][0] + 1)
        rec = sides["pack"]["records"][ran - 2] if ran >= 2 else None
        presets[name] = {"stops_at": stop, "why": why, "measured_to": ran,
                         "s": round(rec[1] if stop == ran else rate["pack"] * stop, 1),
                         "extrapolated": stop != ran,
                         "smoothed_loss": round(loss_at(sm["pack"], ran - 1) or float("nan"), 4)}
        o = time_to(sm["official"], presets[name]["smoothed_loss"])
        presets[name]["official_s_to_same_loss"] = o[1] if o else None
        presets[name]["official_step_to_same_loss"] = o[0] if o else None
        # same number of steps on the official side, where it was measured: is the preset's loss as low?
        same = loss_at(sm["official"], min(stop, last[0]) - 1)
        presets[name]["official_smoothed_loss_at_same_step"] = round(same, 4) if same is not None else None
    summary["presets"] = presets
    (RESULTS / "splice_time_study.json").write_text(json.dumps(summary, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for side, colour in (("official", "tab:gray"), ("pack", "tab:blue")):
        label = "official Splice (train.py)" if side == "official" else "TransEdit SpliceTrainer"
        ax.plot([t / 60 for _, t, _ in sm[side]], [l for _, _, l in sm[side]], color=colour, label=label)
    for name, p in presets.items():
        if not p["extrapolated"]:
            ax.axvline(p["s"] / 60, color="tab:blue", ls=":", lw=1)
            ax.text(p["s"] / 60, 0.98, f" {name} stops\n (step {p['stops_at']})", va="top", fontsize=8,
                    color="tab:blue", transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel("wall time (minutes, one CPU thread each)")
    ax.set_ylabel(f"loss (mean of {args.window} steps)")
    ax.set_title(f"Splice, ViT-S/8 (random weights), {summary['setup']['size']} px pair, DINO at "
                 f"{summary['setup']['dino_size']} px")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "splice_loss_vs_time.png")
    print(json.dumps(summary, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", choices=("official", "pack", "report"), required=True)
    ap.add_argument("--official", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--dino-size", type=int, default=112)
    ap.add_argument("--official-steps", type=int, default=1000)
    ap.add_argument("--pack-steps", type=int, default=2500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=50)
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.side == "report":
        report(args)
    else:
        train_side(args)


if __name__ == "__main__":
    main()
