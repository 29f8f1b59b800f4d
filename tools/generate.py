"""Write images sampled from a trained GAN checkpoint (its EMA generator), as PNGs at the trained size.

python tools/generate.py --ckpt runs/generation/fewshot/checkpoints/best.ckpt --num 100 --output samples/ [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import torch

from cvsuite.cli import main_wrapper, parse, print_json_last
from cvsuite.run import load_checkpoint
from cvsuite.tasks.generation import generate_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--ckpt", required=True, help="generation checkpoint written by tools/train.py")
    parser.add_argument("--num", type=int, required=True, help="how many images")
    parser.add_argument("--output", required=True, help="folder for the PNGs (00000.png, 00001.png, ...)")
    parser.add_argument("--seed", type=int, default=0, help="same checkpoint and seed give the same images")
    parser.add_argument("--class", dest="class_name", help="conditional models: only this class")
    parser.add_argument("--batch-size", type=int, default=64)
    args, overrides = parse(parser, argv)

    def run() -> None:
        module, cfg, _ = load_checkpoint(args.ckpt, None, overrides)
        if cfg.task != "generation":
            raise ValueError(f"{args.ckpt} is a {cfg.task} checkpoint; generate.py needs a generation one")
        if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"):
            module = module.cuda()
        paths = generate_images(module, args.num, args.output, args.seed, args.batch_size, args.class_name)
        size = module.hparams.image_size
        print_json_last({"num_images": len(paths), "output": args.output, "image_size": size, "seed": args.seed})

    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
