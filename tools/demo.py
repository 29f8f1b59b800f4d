"""The Quickstart demo, offline: write real face / non-face photos (scikit-image's LFW subset) to data/faces,
fine-tune the ImageNet-pretrained EfficientNet-Lite0 on them, evaluate the best checkpoint and predict the
validation images. Everything lands in the printed run folder.

    python tools/demo.py [--section.key value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cvsuite import console
from cvsuite.cli import main_wrapper, parse
from cvsuite.config import load_config
from cvsuite.demo_data import write_faces
from cvsuite.run import evaluate, predict, train

RECIPE = Path(__file__).resolve().parents[1] / "configs/classification/demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", default=str(RECIPE))
    args, overrides = parse(parser, argv)

    def run() -> None:
        cfg = load_config(args.config, overrides)
        console.setup(cfg.run.verbose)
        write_faces(cfg.data.root)
        run_dir = train(cfg)
        console.print_best(run_dir, cfg)
        best = run_dir / "checkpoints" / "best.ckpt"
        metrics = evaluate(best)
        out = predict(best, Path(cfg.data.root) / "val", run_dir / "predictions")
        print(f"\nrun folder: {run_dir}")
        print(f"  curves.png, confusion_matrix.png, pr_curve.png, metrics.csv, metrics.json; predictions: {out}")
        print(json.dumps({k: round(metrics[k], 4) for k in ("accuracy", "f1", "auroc", "average_precision")}))

    return main_wrapper(run)


if __name__ == "__main__":
    sys.exit(main())
