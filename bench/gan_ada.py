"""Adaptive augmentation strength (ADA, Karras et al. 2020) against fixed DiffAugment on a varied few-shot set:
`tools/train.py` with `configs/generation/fewshot.yaml` on the raccoon photos of ../shared/data/raccoon, every
annotated raccoon cropped to a square around its box at 64 px, the same wall-clock budget for each variant, one
after the other (so they do not compete for the CPU).

    python bench/gan_ada.py [--budget 8min] [--target 0.6] [--interval 4] [--ramp 2000] [--variants fixed ada]
                            [--raccoon ../shared/data/raccoon] [--out FOLDER]

Variants: ``fixed`` is DiffAugment on every image (``--model.ada_target null``); ``ada`` applies each transform with
a probability p steered by the discriminator's overfitting (``--model.ada_target T``). Prints FID at each validated
epoch (the recipe's metric network, FID's Inception, and the discriminator's own lite0 space beside it, with the
epoch's r_t = E[sign D(real)] and mean p), then one row per variant: best FID (the checkpoint generate.py uses), its
epoch, KID and lite0 FID there, the final p, epochs, images seen and wall time.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from train_tool import REPO, metrics, train_tool, write_gan_crops

RECIPE = "configs/generation/fewshot.yaml"
LITE0 = "val_fid_tf_efficientnet_lite0"  # the extra column: FID in the discriminator's own feature space


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def run(name: str, root: Path, out: Path, budget: str, ada_settings: list[str]) -> dict:
    ada = ada_settings if name == "ada" else ["--model.ada_target", "null"]
    seconds, run_dir, _ = train_tool(RECIPE, root, out / name, "--run.budget", budget, *ada)
    rows = _rows(run_dir)
    validated = [r for r in rows if r.get("val_fid")]
    best = min(validated, key=lambda r: float(r["val_fid"]))
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    p = last["state_dict"].get("augment.p")
    return {
        "variant": name,
        "rows": rows,
        "best_fid": float(best["val_fid"]),
        "best_epoch": int(best["epoch"]),
        "best_kid": float(best["val_kid"]),
        "best_fid_lite0": float(best.get(LITE0) or "nan"),
        "final_p": None if p is None else float(p),
        "epochs": len(rows),
        "images": len(rows) * yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["images_per_epoch"],
        "wall_s": seconds,
        "reported_fid": metrics(run_dir)["fid"],
        "run_dir": run_dir,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raccoon", default=str(REPO.parent / "shared" / "data" / "raccoon"))
    p.add_argument("--budget", default="8min")
    p.add_argument("--target", type=float, default=0.6, help="model.ada_target of the ada variant (ADA's)")
    p.add_argument("--interval", type=int, default=4, help="model.ada_interval (ADA's)")
    p.add_argument("--ramp", type=int, default=2000, help="model.ada_ramp_images")
    p.add_argument("--variants", nargs="+", default=["fixed", "ada"], choices=["fixed", "ada"])
    p.add_argument("--out", default=None, help="folder for the crops and runs (default: a new temporary folder)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cvsuite-gan-ada-"))
    root = write_gan_crops(args.raccoon, out / "crops")
    print(f"data: {len(list(root.glob('*.png')))} raccoon crops at 64 px in {root}; budget {args.budget} per variant")
    results = []
    for name in args.variants:
        ada = ["--model.ada_target", str(args.target), "--model.ada_interval", str(args.interval),
               "--model.ada_ramp_images", str(args.ramp)]  # fmt: skip
        r = run(name, root, out, args.budget, ada)
        results.append(r)
        print(f"\n{name} ({r['run_dir']}): epoch, val_fid, val_kid, fid lite0, ada_rt, ada_p (epoch mean)")
        for row in r["rows"]:
            cells = [row["epoch"]] + [row.get(k) or "-" for k in ("val_fid", "val_kid", LITE0, "ada_rt", "ada_p")]
            print("  " + "  ".join(f"{c:>10}" if len(c) < 10 else c[:10] for c in cells), flush=True)
    print("\n| variant | best FID | at epoch | KID there | FID lite0 there | final p | epochs | images seen | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        final_p = "-" if r["final_p"] is None else f"{r['final_p']:.3f}"
        print(
            f"| {r['variant']} | {r['best_fid']:.1f} | {r['best_epoch']} | {r['best_kid']:.4f} | "
            f"{r['best_fid_lite0']:.1f} | {final_p} | "
            f"{r['epochs']} | {r['images']} | {r['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
