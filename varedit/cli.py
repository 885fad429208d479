"""Command line: `varedit edit`, `varedit info`, `varedit convert`, `varedit random`.

varedit edit cat.png "give the cat a red hat" -o out.png --model /models/VAREdit --variant 2B-512
varedit edit cat.png "make it a painting" -o out.png --model /models/VAREdit --negative "blurry"
varedit convert /models/VAREdit /models/varedit-2b --variant 2B-512 --bf16
varedit random /tmp/tiny-model --config tiny
varedit info /models/varedit-2b --json          # name, resolutions, sampling defaults; no weights read
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("varedit")


def _edit(args: argparse.Namespace) -> int:
    from .pipeline import EditPipeline, load_image

    image = load_image(args.image)  # fail on a bad input or output before loading a model
    _prepare_output(args.output)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    pipe = EditPipeline.from_pretrained(args.model, variant=args.variant, device=args.device, dtype=dtype)
    t0 = time.perf_counter()
    [out] = pipe.edit(
        [image],
        [args.instruction],
        seeds=None if args.seed is None else [args.seed],
        cfg=args.cfg,
        tau=args.tau,
        resolution=args.resolution,
        negative_instruction=args.negative,
    )
    out.save(args.output)
    print(
        f"wrote {args.output} ({out.size[0]}x{out.size[1]}, seed {out.info['seed']}, "
        f"{time.perf_counter() - t0:.2f} s)"
    )
    return 0


def _prepare_output(path: Path) -> None:
    """Refuse a file name no image format saves, and make its folder, before the model loads and the
    edit runs (minutes for a release model), rather than fail when saving."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        kind = f"{path.suffix} files" if path.suffix else "files without an extension"
        raise ValueError(f"cannot write {path}: no image format saves {kind} (use .png)")
    path.parent.mkdir(parents=True, exist_ok=True)


def _info(args: argparse.Namespace) -> int:
    from .checkpoints import describe

    config, serving = describe(args.model, args.variant)
    facts = {
        "name": config.name,
        **serving.to_dict(),
        "scales": {r: config.num_scales(r) for r in serving.resolutions},
    }
    if args.json:
        print(json.dumps(facts))
    else:
        sampling = ", ".join(f"{k} {v}" for k, v in facts["sampling"].items())
        print(
            f"{config.name}: serves {list(serving.resolutions)} px ({facts['scales']} scales); "
            f"sampling defaults: {sampling}"
        )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints import convert_official

    dst = convert_official(
        args.src, args.dst, variant=args.variant, dtype=torch.bfloat16 if args.bf16 else None
    )
    print(f"wrote {dst}")
    return 0


def _random(args: argparse.Namespace) -> int:
    from .checkpoints import write_random_checkpoint

    print(f"wrote {write_random_checkpoint(args.dst, args.config, seed=args.seed)}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="varedit", description="VAREdit instruction-guided image editing")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("edit", help="edit one image")
    e.add_argument("image", type=Path)
    e.add_argument("instruction")
    e.add_argument("-o", "--output", type=Path, required=True, help="output image file (PNG, JPEG, ...)")
    e.add_argument("--model", type=Path, required=True, help="official release folder or our folder format")
    e.add_argument("--variant", help="2B-512, 8B-512 or 8B-1024 (needed if the folder holds several)")
    e.add_argument(
        "--negative",
        default="",
        help="negative instruction: what guidance steers away from (default: none, the learned null text)",
    )
    e.add_argument("--seed", type=int, help="default: random (printed)")
    e.add_argument("--cfg", type=float, help="classifier-free guidance (default: the model's)")
    e.add_argument("--tau", type=float, help="temperature (default: the model's)")
    e.add_argument("--resolution", type=int, help="square side to generate at (default: the model's)")
    e.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    e.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="transformer block dtype (auto: bf16 on CUDA, fp32 on CPU)",
    )
    e.add_argument(
        "--threads", type=_positive_int, help="CPU threads (results can differ in the last bits per count)"
    )
    e.set_defaults(func=_edit)

    i = sub.add_parser("info", help="what a model folder serves: name, resolutions, sampling defaults")
    i.add_argument("model", type=Path, help="official release folder or our folder format")
    i.add_argument("--variant", help="2B-512, 8B-512 or 8B-1024 (needed if the folder holds several)")
    i.add_argument("--json", action="store_true", help="one JSON object (for scripts)")
    i.set_defaults(func=_info)

    c = sub.add_parser("convert", help="official release folder -> our folder format")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    c.add_argument("--variant", help="2B-512, 8B-512 or 8B-1024 (needed if the folder holds several)")
    c.add_argument(
        "--bf16",
        action="store_true",
        help="store the transformer blocks in bfloat16 (without it they keep the release's dtype, "
        "which in the official release is bfloat16 already)",
    )
    c.set_defaults(func=_convert)

    r = sub.add_parser("random", help="write a randomly initialised model (for tests and demos)")
    r.add_argument("dst", type=Path)
    r.add_argument("--config", default="tiny", help="variant name (default tiny)")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_random)
    return p


# What a shell reports for a command that SIGPIPE ended (128 + 13), as `cat` in `cat | head` ends; the
# platform's commands (varedit_client.cli, which the model may not import) end the same way.
EXIT_STDOUT_CLOSED = 141


def main(argv: list[str] | None = None) -> int:
    """Run one command; `varedit info ... | head -1` ends quietly with `EXIT_STDOUT_CLOSED`. Python
    ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError: in the command, in the flush
    below, or else in the flush at exit as "Exception ignored"; that last one goes to /dev/null."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:  # stdout's reader has gone: not a failure of the command (see main)
        raise
    except (ValueError, OSError, KeyError) as e:  # CheckpointError is a ValueError
        text = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) is its repr, quoted
        message = " ".join(str(text).split())  # one line, even when a wrapped library error spans several
        print(f"varedit: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
