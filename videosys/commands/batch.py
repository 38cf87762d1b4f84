"""``videosys batch CONFIG.yaml [key=value ...]``: generate every prompt of a batch config, resuming from its
manifest. Exit code 0 when everything is done, 1 when an item failed (or was not run), 2 for config errors,
130 when interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130

#: flags that may also come after the overrides (argparse leaves them among the positionals)
_FLAGS = {"--fail-fast": "fail_fast", "--dry-run": "dry_run", "--json": "json", "--no-progress": "no_progress"}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "batch", help="generate the prompts of a YAML batch config (resumable)",
        description="Generate every prompt of a batch config. Everything is checked before the first video; "
                    "finished items recorded in the manifest are skipped, so rerunning resumes.")
    add_batch_arguments(p)
    p.set_defaults(handler=run_batch_command)
    return p


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """The config, overrides and run options (shared with ``videosys launch``)."""
    p.add_argument("config", help="batch config YAML (see docs/configuration.md, examples in configs/batch/)")
    # REMAINDER: options may also follow the overrides; run_batch_command sorts them out
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                   help="dotted config overrides, e.g. sampling.steps=2 output.dir=out prompts[0].seed=7")
    p.add_argument("--fail-fast", action="store_true", default=None,
                   help="stop at the first failed item (default: record it and go on)")
    p.add_argument("--dry-run", action="store_true", help="check the config and list what would be generated")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_batch_command(args: argparse.Namespace, **parallel: Any) -> int:
    """The ``batch`` handler; ``parallel`` (world_size, sp, cfg_parallel, ray_address) is what ``launch``
    passes to override the config's parallel section."""
    from ..batch import (
        BatchConfigError,
        BatchInterrupted,
        ManifestBusyError,
        execute_batch,
        prepare_batch,
    )

    overrides = []
    for token in args.overrides:
        if token in _FLAGS:
            setattr(args, _FLAGS[token], True)
        elif token.startswith("-"):
            print(f"videosys: error: batch: option {token!r} not allowed (allowed: {', '.join(_FLAGS)})",
                  file=sys.stderr)
            return EXIT_CONFIG
        else:
            overrides.append(token)
    try:
        batch = prepare_batch(args.config, overrides, **parallel)
    except BatchConfigError as exc:
        print(f"videosys: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.dry_run:
            return _dry_run(batch)
        summary = execute_batch(batch, fail_fast=args.fail_fast, progress=not args.no_progress)
    except BatchInterrupted as exc:
        _report(exc.summary, args.json)
        return EXIT_INTERRUPTED
    except ManifestBusyError as exc:
        print(f"videosys: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        batch.engine.shutdown()
    _report(summary, args.json)
    return summary.exit_code


def _report(summary: Any, as_json: bool) -> None:
    print(json.dumps(summary.to_dict(), indent=2) if as_json else summary.table())


def _dry_run(batch: Any) -> int:
    from ..batch import Manifest
    from ..batch.runner import pending_items

    todo, skipped = pending_items(batch, Manifest(batch.manifest_path))
    pending = {item.key for item in todo}
    for item in batch.items:
        r = item.request
        state = "todo" if item.key in pending else "done"
        print(f"{state}  {item.path}  seed {r.seed}  {r.frames}x{r.height}x{r.width}  {r.steps} steps  "
              f"pab {r.pab.name}  {r.prompt!r}")
    print(f"{len(batch.items)} items: {len(todo)} to generate, {skipped} already done "
          f"(manifest {batch.manifest_path})")
    return EXIT_OK
