"""`llama-rlhf`: the command line.

    llama-rlhf run configs/local.yaml [dotted.key=value ...]   # the whole pipeline into runs/<name>
    llama-rlhf resume runs/local                               # continue a stopped run
    llama-rlhf eval runs/local [--temperature 0 1] [--gatt-dialogs 128]  # the gold table; or re-judge saved policies
    llama-rlhf report runs/local [--readme README.md]          # rebuild report.md, plots (and README's demo tables)
    llama-rlhf branch runs/local runs/try --after-version 2     # a copy of the run as it stood after V2: resume it
    llama-rlhf compare runs/a runs/b [...]                     # runs side by side (e.g. seeds): figures, mean, range
    llama-rlhf plan configs/llama2-70b.yaml [overrides]        # GPUs, nodes, memory per role; exit 1 if it won't fit
    llama-rlhf config configs/local.yaml [overrides]           # print the resolved config
    llama-rlhf fields                                          # every settable key, type and doc

Overrides are derived from the config schema: any field of `llama_rlhf.config.Config` is settable as
`section.sub.field=value` (values parsed as YAML); unknown keys and bad values are errors naming them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llama_rlhf.config import ConfigError, config_fields, config_to_yaml, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-rlhf", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the pipeline from a config")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="dotted.key=value")
    res = sub.add_parser("resume", help="continue a run from its last checkpoint")
    res.add_argument("run_dir")
    res.add_argument("overrides", nargs="*", help="dotted.key=value (e.g. more iterations)")
    ev = sub.add_parser("eval", help="print a run's gold table; with --temperature, re-judge every saved policy")
    ev.add_argument("run_dir")
    ev.add_argument("--temperature", type=_at_least(0.0, float), nargs="+", default=[],
                    help="sample every saved policy again at these temperatures (0 = greedy) on the run's "
                    "held-out prompts and print the gold tables (eval_T<T>.json)")
    ev.add_argument("--samples", type=_at_least(1, int),
                    help="samples per prompt when T > 0 (default: the run's eval.samples)")
    ev.add_argument("--gatt-dialogs", type=_at_least(1, int),
                    help="judge every saved policy's Ghost Attention consistency again on this many held-out "
                    "dialogs (the run's own are the first of them) and print the GAtt table (gatt_N<N>.json)")
    cmp_ = sub.add_parser("compare", help="several runs' gold figures side by side, with mean and range")
    cmp_.add_argument("run_dirs", nargs="+")
    rep = sub.add_parser("report", help="write report.md and plots of a run")
    rep.add_argument("run_dir")
    rep.add_argument("--readme", help="also regenerate this README's demo section (between its demo-report markers)")
    pl = sub.add_parser("plan", help="per-role GPUs, nodes and memory on the declared cluster; exit 1 if it won't fit")
    pl.add_argument("config")
    pl.add_argument("overrides", nargs="*", help="dotted.key=value")
    pl.add_argument("--calibration", help="JSON from benchmarks/gpu.sh: measured activation scale")
    cfg = sub.add_parser("config", help="print the resolved config")
    cfg.add_argument("config", nargs="?")
    cfg.add_argument("overrides", nargs="*")
    br = sub.add_parser("branch", help="a new run folder holding a run as it stood after one version (resume it)")
    br.add_argument("run_dir")
    br.add_argument("new_dir")
    br.add_argument("--after-version", type=_at_least(0, int), required=True,
                    help="keep SFT, the first reward models, the controls and RLHF-V1..this (0: no version)")
    sub.add_parser("fields", help="list every config key")
    return p


def _at_least(low, cast):
    """An argparse type: `cast(value)` >= low, else argparse's one-line usage error (exit 2)."""
    def parse(value: str):
        try:
            x = cast(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not x >= low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return x
    return parse


def _user_errors() -> tuple[type[BaseException], ...]:
    """Bad input and environment (config, data, run folder, disk): one line, exit code 2, no traceback."""
    from llama_rlhf.data.validate import DataError
    from llama_rlhf.orchestrator.guards import NonFiniteError
    from llama_rlhf.orchestrator.run_dir import RunDirError

    return ConfigError, DataError, RunDirError, NonFiniteError, OSError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except _user_errors() as e:
        line = "; ".join(x.strip() for x in str(e).splitlines() if x.strip()) or type(e).__name__
        print(f"llama-rlhf: error: {line}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.cmd == "config":
        print(config_to_yaml(load_config(args.config, args.overrides)), end="")
        return 0
    if args.cmd == "plan":
        from llama_rlhf.plan import main as plan_main

        return plan_main(args.config, args.overrides, args.calibration)
    if args.cmd == "fields":
        for key, typ, doc in config_fields():
            print(f"{key:45s} {typ:12s} {doc}")
        return 0
    from llama_rlhf.orchestrator import pipeline, preflight
    from llama_rlhf.orchestrator.faults import run_with_restarts

    if args.cmd == "run":
        cfg = load_config(args.config, args.overrides)
        preflight.check(cfg, fresh=True)
        root = Path(cfg.run.output_dir) / cfg.run.name
        return run_with_restarts(lambda: pipeline.run(cfg), lambda: pipeline.resume(root), cfg.run.max_restarts)
    if args.cmd == "resume":
        cfg = load_config(preflight.resume_config(args.run_dir), args.overrides)
        preflight.check(cfg)
        return run_with_restarts(lambda: pipeline.resume(args.run_dir, args.overrides),
                                 lambda: pipeline.resume(args.run_dir), cfg.run.max_restarts)
    if args.cmd in ("eval", "report"):  # a mistyped folder is an error, not a new empty run folder
        preflight.resume_config(args.run_dir)
    if args.cmd == "branch":
        from llama_rlhf.orchestrator.branch import branch

        preflight.resume_config(args.run_dir)
        kept = branch(args.run_dir, args.new_dir, args.after_version)
        print(f"{args.new_dir}: {len(kept['stages'])} stages kept ({', '.join(kept['stages'])}), "
              f"{kept['archive_samples']} archived samples; continue it with `llama-rlhf resume {args.new_dir} "
              "[dotted.key=value ...]`")
        return 0
    if args.cmd == "compare":
        from llama_rlhf.orchestrator.compare import compare

        for d in args.run_dirs:
            preflight.resume_config(d)
        print(compare(args.run_dirs))
        return 0
    if args.cmd == "eval":
        from llama_rlhf.orchestrator import reeval

        if not args.temperature and args.gatt_dialogs is None:
            return pipeline.evaluate_run(args.run_dir)
        return reeval.rejudge(args.run_dir, args.temperature, args.samples, args.gatt_dialogs)
    if args.cmd == "report":
        return pipeline.report(args.run_dir, args.readme)
    return 1


if __name__ == "__main__":
    sys.exit(main())
