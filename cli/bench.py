"""``imagine bench engine|scheduler|queue``: every benchmark flag, and each command's
arguments turned into plain typed calls of :mod:`backend.bench`.

The engine benchmark imports torch, so it is imported only when that command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.bench import real
from backend.bench.policies import POLICIES
from backend.bench.queue import BACKENDS, run_queue_bench
from backend.bench.scheduler import (
    FAIR_MIN_JOBS,
    SYNTHETIC_JOBS,
    check_policies,
    load_resume_costs,
    load_step_model,
    run_scheduler_bench,
)
from backend.bench.sim import service_time
from backend.bench.sweep import SWEEP_JOBS
from backend.bench.trace import TraceSource, trace_from, write_trace
from backend.errors import BadInputError
from backend.models import SCHEDULER_NAMES
from cli.common import (
    EXIT_OK,
    at_least,
    batch_list,
    positive_int,
    positive_multiple_of_8,
    read_settings,
    settings_for,
)
from config.settings import Settings, redis_url_problem

if TYPE_CHECKING:
    from cli.common import Commands

# The engine benchmark's batch sizes unless --batches says otherwise (the same as
# backend.bench.engine.DEFAULT_BATCHES, which is not read here: that module loads torch).
ENGINE_BATCHES = (1, 2, 4, 8, 16)
# The queue a memory-only run would name; it touches no Redis key.
QUEUE_NAMESPACE = "imagine"


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``imagine bench`` and its ``engine``, ``scheduler`` and ``queue`` commands."""
    bench = commands.add_parser("bench", parents=[common], help="measure and print figures")
    benches = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    engine = benches.add_parser(
        "engine", parents=[common], help="throughput by batch size, overhead, preemption"
    )
    _engine_arguments(engine)
    engine.set_defaults(func=_cmd_engine)
    scheduler = benches.add_parser(
        "scheduler",
        parents=[common],
        help="replay a trace through scheduling policies on a simulated device",
    )
    _scheduler_arguments(scheduler)
    scheduler.set_defaults(func=_cmd_scheduler)
    queue = benches.add_parser(
        "queue", parents=[common], help="queue operations per second, memory and Redis"
    )
    _queue_arguments(queue)
    queue.set_defaults(func=_cmd_queue)


# -- bench engine ----------------------------------------------------------------------


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: the default model)")
    parser.add_argument("--width", type=positive_multiple_of_8, default=64)
    parser.add_argument("--height", type=positive_multiple_of_8, default=64)
    parser.add_argument("--steps", type=positive_int, default=4)
    parser.add_argument("--scheduler", default="euler", choices=SCHEDULER_NAMES)
    parser.add_argument(
        "--batches", type=batch_list, default=ENGINE_BATCHES, help="e.g. 1,2,4,8,16"
    )
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def _cmd_engine(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    from backend.bench.engine import EngineBenchConfig, run_engine_bench
    from backend.catalog import ModelCatalog

    ModelCatalog(settings).get(args.model)  # unknown model: exit 2 before loading torch work
    config = EngineBenchConfig(
        model=args.model,
        width=args.width,
        height=args.height,
        steps=args.steps,
        scheduler=args.scheduler,
        batches=args.batches,
        repeats=args.repeats,
    )
    result = run_engine_bench(settings, config, say=_say)
    pre = result["preemption"]
    print(
        f"best batch {result['best_batch']} ({result['speedup_best_vs_1']}x batch 1), "
        f"95% of peak at batch {result['batch_95']}, "
        f"overhead vs stock {result['overhead_vs_stock']:+.1%} (median over batch sizes)"
    )
    print(
        f"preemption: p50 {pre['latency_s_p50'] * 1000:.1f} ms, max "
        f"{pre['latency_steps_max']:.2f} steps; state "
        f"{pre['state_bytes_per_sample'] / 1024:.1f} KiB/sample here, SD1.5 512px: "
        + ", ".join(f"{k} {v} KiB" for k, v in result["state_kib_per_sample_sd15_512"].items())
    )
    _print_json(result, args.json)
    return EXIT_OK


# -- bench scheduler (simulated, or --real) ---------------------------------------------


def _scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--trace",
        type=Path,
        action="append",
        help="JSON Lines trace, one job per line (with --sweep: repeat to add several)",
    )
    source.add_argument(
        "--synthetic", action="store_true", help="the default synthetic trace (the default)"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="replay the grid of synthetic workloads (and any --trace files) through "
        "every policy; --jobs sizes each trace",
    )
    parser.add_argument("--seed", type=int, default=1, help="synthetic trace seed")
    parser.add_argument(
        "--jobs",
        type=int,
        help=f"synthetic trace length (default: {SYNTHETIC_JOBS}, {SWEEP_JOBS} per trace "
        f"with --sweep, or {real.REAL_JOBS} with --real)",
    )
    parser.add_argument("--load", type=float, default=0.85, help="offered load vs capacity")
    parser.add_argument(
        "--step-times",
        type=Path,
        help="an `imagine bench engine --json` result to use as the device",
    )
    parser.add_argument(
        "--resume-costs",
        type=Path,
        help="`imagine bench engine --json` results (one per line, per shape) whose "
        "checkpoint save and load times evictions and resumes cost (default: a table "
        "measured on a 2-core CPU)",
    )
    parser.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated subset of {','.join(POLICIES)}",
    )
    parser.add_argument(
        "--fair-min-jobs",
        type=float,
        default=FAIR_MIN_JOBS,
        help="Jain counts flows whose fair share is at least this many of their jobs",
    )
    parser.add_argument(
        "--no-admission",
        dest="admission",
        action="store_false",
        help="let every job in (default: the tiers' rate limits and queued caps apply)",
    )
    parser.add_argument("--out", type=Path, help="write report.md, result.json and PNG plots here")
    parser.add_argument("--save-trace", type=Path, help="also write the trace used as JSON Lines")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument(
        "--real",
        action="store_true",
        help="replay a short trace through the real engine (tiny model, CPU) and report "
        "the scheduler's overhead per step",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=real.TIME_SCALE,
        help="with --real: seconds of the run per trace second",
    )


def _cmd_scheduler(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    if args.real:
        return _run_real(settings, args)
    if args.sweep:
        return _run_sweep(settings, args)
    return _run_simulation(settings, args)


def _single_trace(args: argparse.Namespace) -> Path | None:
    traces: list[Path] = args.trace or []
    if len(traces) > 1:
        raise BadInputError("--trace is given once, except with --sweep")
    return traces[0] if traces else None


def _run_sweep(settings: Settings, args: argparse.Namespace) -> int:
    from backend.bench.sweep import SweepConfig, run_sweep
    from backend.bench.sweep_report import sweep_markdown, write_sweep_report

    if args.synthetic or args.save_trace is not None:
        raise BadInputError("--synthetic and --save-trace do not apply to --sweep")
    config = SweepConfig(
        jobs=SWEEP_JOBS if args.jobs is None else args.jobs,
        seed=args.seed,
        policies=check_policies([n.strip() for n in args.policies.split(",") if n.strip()]),
        extra=tuple(args.trace or ()),
        admission=args.admission,
    )
    result = run_sweep(
        settings,
        config,
        step_model=load_step_model(settings.scheduler, args.step_times),
        resume=load_resume_costs(args.resume_costs),
        say=_say,
    )
    print(sweep_markdown(result))
    if args.out is not None:
        for path in write_sweep_report(args.out, result):
            print(f"wrote {path}")
    _print_json(result, args.json)
    return EXIT_OK


def _run_simulation(settings: Settings, args: argparse.Namespace) -> int:
    from backend.bench.report import markdown_table, write_report

    policies = check_policies([name.strip() for name in args.policies.split(",") if name.strip()])
    step_model = load_step_model(settings.scheduler, args.step_times)
    jobs = SYNTHETIC_JOBS if args.jobs is None else args.jobs
    trace = trace_from(
        TraceSource(_single_trace(args), args.seed, jobs, args.load),
        tiers=settings.scheduler.tiers,
        mean_service_s=service_time(step_model),
    )
    if args.save_trace is not None:
        write_trace(args.save_trace, trace)
    result, waits, busy = run_scheduler_bench(
        settings,
        trace,
        step_model=step_model,
        policies=policies,
        fair_min_jobs=args.fair_min_jobs,
        admission=args.admission,
        resume=load_resume_costs(args.resume_costs),
        say=_say,
    )
    print(markdown_table(result))
    if args.out is not None:
        for path in write_report(args.out, result, waits, busy):
            print(f"wrote {path}")
    _print_json(result, args.json)
    return EXIT_OK


def _run_real(settings: Settings, args: argparse.Namespace) -> int:
    """``--real``: the simulation's options where they apply, refusing the others."""
    if args.sweep:
        raise BadInputError("--sweep applies to the simulation, not to --real")
    if args.out is not None or args.step_times is not None or args.resume_costs is not None:
        raise BadInputError(
            "--out, --step-times and --resume-costs apply to the simulation, not to --real"
        )
    jobs = real.REAL_JOBS if args.jobs is None else args.jobs
    trace = trace_from(
        TraceSource(_single_trace(args), args.seed, jobs, args.load),
        tiers=settings.scheduler.tiers,
        mean_service_s=service_time(load_step_model(settings.scheduler, None)),
    )
    if args.save_trace is not None:
        write_trace(args.save_trace, trace)
    result = real.run_real(settings, trace, time_scale=args.time_scale, say=_say)
    print(real.markdown_table(result))
    _print_json(result, args.json)
    return EXIT_OK


# -- bench queue -------------------------------------------------------------------------


def _queue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--ops", type=at_least(1), default=5000, help="jobs per timed phase")
    parser.add_argument(
        "--preload", type=at_least(0), default=10_000, help="jobs queued before timing"
    )
    parser.add_argument("--redis-url", help="default: queue.redis_url of the settings")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def _cmd_queue(args: argparse.Namespace) -> int:
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    redis_url = args.redis_url or ""
    problem = redis_url_problem(redis_url) if redis_url else None
    if problem is not None:
        raise BadInputError(f"--redis-url {problem}")
    namespace = QUEUE_NAMESPACE
    if "redis" in backends:
        # Settings only for Redis: a memory-only run works with any configuration.
        settings = read_settings(args)
        redis_url = redis_url or settings.queue.redis_url.get_secret_value()
        namespace = settings.queue.namespace
    run_queue_bench(
        backends=backends,
        ops=args.ops,
        preload=args.preload,
        redis_url=redis_url,
        namespace=namespace,
        as_json=args.json,
        emit=_say,
    )
    return EXIT_OK


# -- output ------------------------------------------------------------------------------


def _say(line: str) -> None:
    # Progress lines show up as they happen, even when stdout is a pipe.
    print(line, flush=True)


def _print_json(result: dict[str, Any], wanted: bool) -> None:
    if wanted:
        print(json.dumps(result, separators=(",", ":")))
