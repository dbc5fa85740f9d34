"""`h2t`: one console script for every job (each also runs as `python -m jobs.<name>`)."""
from __future__ import annotations

import argparse
import importlib
import sys

from jobs._entry import OneLineParser, run_command

# subcommand -> (module, help). Modules expose configure(parser) and main(args).
COMMANDS = {
    "demo": ("jobs.demo", "the embedded default: sweep configs/demo.yaml offline, then report"),
    "tasks": ("jobs.tasks", "list registered tasks"),
    "backbones": ("jobs.backbones", "list registered backbones and their taps"),
    "extract": ("jobs.extract", "fill the feature cache (one forward pass per image)"),
    "run": ("jobs.run", "one method on one task: CV-select, then test"),
    "sweep": ("jobs.sweep", "Ray Tune sweep of a config, tracked in MLflow"),
    "report": ("jobs.report", "tables and plots from MLflow runs"),
    "plan": ("jobs.plan", "dry run of a sweep config: candidates, trials, storage, memory, GPU-hours"),
    "vtab-prepare": ("jobs.vtab_prepare", "download and prepare VTAB datasets with tfds (needs internet)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="h2t", description="Head2Toe at scale: features once, probes many, results tracked.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # a job not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.configure(p)
        p.set_defaults(func=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from head2toe.allocator import reexec_with_best_allocator

    reexec_with_best_allocator()
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
