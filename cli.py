"""`transedit` command line: inspect and convert weight files (no ComfyUI needed)."""
from __future__ import annotations

import argparse
import sys

from .models.registry import CheckpointError, load_stylegan2, save_stylegan2_safetensors


def _info(args) -> int:
    desc = load_stylegan2(args.file)
    c = desc.config
    print(f"file:        {args.file}")
    print(f"format:      {desc.source_format} (weights '{desc.weights}')")
    print(f"family:      {desc.family}")
    print(f"size:        {c.size}x{c.size}")
    print(f"latent:      W+ [{c.n_latent}, {c.style_dim}], z_dim {c.input_dim}, mapping layers {c.n_mlp}")
    print(f"channels:    {c.channels}")
    print(f"latent_avg:  {desc.latent_avg_source}")
    print(f"fingerprint: {desc.fingerprint}")
    for note in desc.notes:
        print(f"note:        {note}")
    return 0


def _convert(args) -> int:
    desc = load_stylegan2(args.input)
    out = save_stylegan2_safetensors(desc, args.output, overwrite=args.overwrite)
    print(f"wrote {out} ({desc.config.size}px StyleGAN2, weights '{desc.weights}' from {desc.source_format})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="transedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="detect a weight file's format and print what it holds")
    p.add_argument("file")
    p.set_defaults(run=_info)
    p = sub.add_parser("convert", help="convert a StyleGAN2 checkpoint (.pt/.pth/.pkl) to TransEdit .safetensors")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (CheckpointError, FileExistsError) as e:
        print(f"transedit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
