"""`lowlight-compile zoo list|train|eval`: the reference models shipped with lowlight-compile."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lowlight.compile.cli_types import finite_float, positive_int

if TYPE_CHECKING:
    from lowlight.models.family import Family

SUMMARY = "reference models: list them, reproduce their weights (zoo train FAMILY --config C), or score them per darkening recipe (zoo eval)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `zoo` and its actions."""
    from lowlight.compile.cli_types import HelpFormatter

    sub = p.add_subparsers(dest="action", required=True, metavar="{list,train,eval}")
    t = sub.add_parser("train", help="train a reference checkpoint on synthetic low-light data from ../shared/data/clean",
                       formatter_class=HelpFormatter, description="Train a family's reference weights (the shipped recipe).")
    t.add_argument("family", help="model family (see `zoo list`)")
    t.add_argument("--config", default=None, help="config to train (default: the family's deployed config)")
    t.add_argument("--out", default=None, help="output .safetensors (default: ./FAMILY_CONFIG.safetensors); never replaces an existing file without --overwrite")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    t.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the recipe's)")
    t.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    t.add_argument("--lr", type=finite_float, default=None, help="learning rate (default: the recipe's)")
    t.add_argument("--crop", type=positive_int, default=None, help="training crop size in pixels (default: the recipe's)")
    t.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's)")
    t.add_argument("--init", default=None, help="start from these weights (fine-tune)")
    t.add_argument("--rgb-only", action="store_true", help="RGB-only fine-tuning (AMNet's downstream stage; with --init)")
    e = sub.add_parser("eval", help="score weights on each darkening recipe and on real low-light photos (lattice, halo)",
                       formatter_class=HelpFormatter,
                       description="Score a family's weights per darkening recipe (sRGB, linear light, normal exposure) on held-out "
                                   "and unseen photos, and the lattice and halo artefacts on real low-light photos (models.evaluate).")
    e.add_argument("family", help="model family (see `zoo list`)")
    e.add_argument("--config", default=None, help="config (default: the family's deployed config)")
    e.add_argument("--checkpoint", default=None, help="weights to score (default: the shipped reference weights)")
    e.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    e.add_argument("--json", default=None, help="also write the scores to this JSON file (never replaces an existing file without --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a family option, e.g. --option experts=top2 (repeatable)")
    sub.add_parser("list", help="families, configs and shipped weights", formatter_class=HelpFormatter,
                   description="List every discovered family with its configs, options and shipped weights.")


def run(a: argparse.Namespace) -> int:
    """List the zoo, or train one reference checkpoint."""
    from lowlight.core.fsio import claim_weights
    from lowlight.models import family_names, get_family

    if a.action == "list":
        for name in family_names():
            fam = get_family(name)
            opts = " ".join(f"{o.flag} {'|'.join(o.choices)}" for o in fam.options)
            for cfg in fam.configs:
                w = fam.weights_path(cfg)
                print(f"{name:8s} {cfg:8s} {'weights: ' + str(w) if w and w.exists() else 'no shipped weights':60s} {opts}")
                if w and w.exists() and fam.distill_option:  # diffusion families: distilled students beside the teacher
                    ks = [k for k in (8, 4, 2, 1) if fam.student_path(w, k).exists()]
                    if ks:
                        print(f"{'':17s} students (--{fam.distill_option}): {', '.join(map(str, ks))}, "
                              f"e.g. {fam.student_path(w, ks[0]).name}")
            for line in fam.catalog():
                print(f"{'':17s} {line}")
        return 0
    fam = get_family(a.family)
    config = a.config or fam.default_config
    fam.check_config(config)
    if a.action == "eval":
        return _eval(fam, config, a)
    out = Path(a.out) if a.out else Path(f"{a.family}_{config}.safetensors")
    claim_weights(out, a.overwrite, a.init)
    kw = {k: v for k, v in vars(a).items() if k in ("steps", "threads", "lr", "crop", "seed", "init", "rgb_only") and v not in (None, False)}
    fam.train(config=config, out=str(out), **kw)
    return 0


def _eval(fam: "Family", config: str, a: argparse.Namespace) -> int:
    """`zoo eval`: the per-recipe and real-photo scores of one set of weights, and which aims they meet."""
    import json

    import torch

    from lowlight.core.errors import LowlightError
    from lowlight.core.fsio import claim_file, staged_file
    from lowlight.models import load
    from lowlight.models.evaluate import aims_met, evaluate

    options = {}
    for item in a.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise LowlightError(f"--option {item!r} is not KEY=VALUE", "write family options as e.g. --option experts=top2")
        options[key] = value
    if a.json:
        claim_file(Path(a.json), "a scores file", "--json", overwrite=a.overwrite)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load(fam.name, config=config, checkpoint=a.checkpoint, **options)
    print(f"{fam.name} {config} {a.checkpoint or '(shipped weights)'} {' '.join(a.option)}".rstrip())
    res = evaluate(fam.enhancer(model))
    res["aims"] = aims_met(res)
    print("aims (held-out photos; real photos): " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in res["aims"].items()))
    if a.json:
        with staged_file(Path(a.json)) as tmp:
            tmp.write_text(json.dumps(res, indent=2) + "\n")
    return 0
