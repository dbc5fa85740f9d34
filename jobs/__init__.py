"""Thin entry points: the `h2t` command line (cli) and one module per subcommand (demo,
tasks, backbones, extract, run, sweep, report, plan, vtab-prepare), each also runnable as
`python -m jobs.<name>` for `ray job submit`. Shared flags, argparse types and builders
live in common, pre-flight checks in preflight, exit codes and one-line errors in _entry.

May import: head2toe, orchestrator and analysis (the top of the import graph: nothing
imports jobs). The command line is a contract (docs: DESIGN.md).
"""
