"""``videosys calibrate``: derive a PAB config (per kind a timestep window and a broadcast range; optionally
MLP broadcast) from measured step differences, and write it as YAML for ``--pab FILE``.

The measurements come from ``--from DIR`` (what ``videosys analyze -o DIR`` wrote) or, without it, from a
measured run made here with the same options as ``videosys analyze``. The rule: docs/pab.md, "Calibration".
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..analysis.calibrate import DEFAULT_BUDGET, DEFAULT_MAX_RANGE
from .analyze import add_measurement_args

logger = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    from ..analysis import DifferenceProfile, calibrate, write_pab_yaml

    out = Path(args.output) if args.output else Path(f"{args.model}-calibrated.yaml")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"output: {str(out)!r} must end in .yaml or .yml (so --pab reads it as a file)")
    if args.source is not None:
        profile = DifferenceProfile.load(args.source)
        measured = profile.meta.get("model")
        if measured is not None and measured != args.model:
            raise ValueError(f"calibrate: {args.source} was measured on {measured!r}, not {args.model!r}")
        source = str(args.source)
    else:
        from .analyze import measure, write_outputs

        profile, _ = measure(args)
        if args.save_analysis:
            write_outputs(profile, Path(args.save_analysis))
        source = "a run made by calibrate"
    meta = profile.meta
    source += (f" ({meta.get('model')}, {meta.get('steps')} steps, seed {meta.get('seed')}, "
               f"{meta.get('frames')}x{meta.get('height')}x{meta.get('width')}, prompt {meta.get('prompt')!r})")
    name = args.name or out.stem
    result = calibrate(profile, budget=args.budget, metric=args.metric, aggregate=args.aggregate,
                       max_range=args.max_range, mlp=args.mlp, mlp_skip=args.mlp_skip, name=name)
    if not result.config.enabled:
        logger.warning("calibrate: nothing stays within budget %s; the config broadcasts nothing", args.budget)
    path = write_pab_yaml(result, out, source=source)
    print(f"budget {args.budget} on {args.aggregate} {args.metric}, {profile.num_calls} calls measured")
    print(result.table())
    print(f"wrote {path} (use: videosys generate PROMPT --model {args.model} --pab {path})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="derive a PAB config YAML from measured attention differences",
                       description=__doc__)
    add_measurement_args(p)
    p.add_argument("--from", dest="source", default=None,
                   help="differences.json or the folder `videosys analyze -o` wrote (default: measure a run now)")
    p.add_argument("--save-analysis", default=None, help="with no --from: also write the measurement to this folder")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                   help=f"largest difference a broadcast may skip over, summed over the calls it spans (default {DEFAULT_BUDGET})")
    p.add_argument("--metric", choices=("rel_l2", "mse"), default="rel_l2", help="difference measure (default rel_l2)")
    p.add_argument("--aggregate", choices=("mean", "max"), default="mean",
                   help="how a kind's layers combine per call (default mean, as the paper's plots)")
    p.add_argument("--max-range", type=int, default=DEFAULT_MAX_RANGE, help=f"largest broadcast range (default {DEFAULT_MAX_RANGE})")
    p.add_argument("--mlp", action="store_true", help="also calibrate MLP broadcast")
    p.add_argument("--mlp-skip", type=int, default=2, help="calls an MLP output is reused for (default 2)")
    p.add_argument("--name", default=None, help="config name (default: the output file's stem)")
    p.add_argument("-o", "--output", default=None, help="the YAML to write (default: MODEL-calibrated.yaml)")
    p.set_defaults(handler=run)
