"""The ``sertrain`` command: cv, baseline, cross, train, evaluate, compare, report, predict.

Errors the user can act on (missing file, store without folds, fold out of range,
incompatible store, bad config value) print one line ``error: ...`` on stderr and exit
with 2 (bad argument or input) or 1 (failure while running); no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
from serprep.clickutil import OneLineErrorGroup

from . import __version__
from .errors import InputError, SertrainError
from .tasks import TASKS, aux_names, parse_aux

#: What --aux takes (from the task registry).
_AUX_HELP = ("Active auxiliary tasks: none, or task names joined by + (" + ", ".join(aux_names())
             + "; vad = arousal+valence+dominance, the dimensions the store rates), e.g. gender+speaker+vad "
             "[loss.aux].")

# Options that map straight onto config keys: (option name, config key, click type, help).
_CONFIG_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--epochs", "train.epochs", int, "Maximum epochs [config train.epochs]."),
    ("--batch-size", "train.batch_size", int, "Training batch size [train.batch_size]."),
    ("--lr", "train.lr", float, "Learning rate [train.lr]."),
    ("--optimizer", "train.optimizer", click.Choice(["adam", "adamw", "sgd"]), "Optimiser [train.optimizer]."),
    ("--weight-decay", "train.weight_decay", float, "Weight decay [train.weight_decay]."),
    ("--patience", "train.patience", int,
     "Early stopping: epochs without a change of the selected model; 0 = never [train.patience]."),
    ("--steps-per-epoch", "train.steps_per_epoch", int,
     "Batches per epoch; 0 = one pass over the balanced index [train.steps_per_epoch]."),
    ("--seed", "train.seed", int, "Random seed (init, dropout, batch order) [train.seed]."),
    ("--num-workers", "train.num_workers", int, "DataLoader worker processes [train.num_workers]."),
    ("--cache", "train.cache", click.Choice(["none", "device"]),
     "Training data: none = DataLoader over the store; device = the fold's features read once onto the training "
     "device (GPU memory; on CPU main memory), batches gathered there (same values) [train.cache]."),
    ("--compile", "train.compile", click.Choice(["off", "default", "reduce-overhead", "max-autotune"]),
     "torch.compile the model's fixed-shape parts for training (reduce-overhead: CUDA graphs) [train.compile]."),
    ("--amp", "train.amp", click.Choice(["auto", "bf16", "fp16", "off"]),
     "Mixed precision on CUDA (ignored on CPU) [train.amp]."),
    ("--aggregate", "train.aggregate", click.Choice(["mean", "max"]),
     "Utterance decision from segment posteriors [train.aggregate]."),
    ("--selection", "train.selection", click.Choice(["val_ua", "val_loss", "val_ua_smooth3", "top3_average"]),
     "Model selection on the validation speakers: best UA, lowest loss, best 3-epoch mean UA, or the "
     "average weights of the 3 best-UA epochs [train.selection]."),
    # One weight option per task of the registry (sertrain/tasks.py).
    *[(f"--w-{name}", f"loss.weights.{name}", float,
       f"Weight of the {name} loss: {task.description} [loss.weights.{name}].") for name, task in TASKS.items()],
    ("--scheme", "data.scheme", str, "Fold scheme of the store, e.g. loso, loso-speaker [data.scheme]."),
]


_VERIFY_OPTION = click.option(
    "--verify", is_flag=True,
    help="Also check the checksums of the store's feature frames before using it (reads the whole file; "
         "every other dataset is checked on every open).")


def _open_for_run(store: Path, verify: bool) -> Any:
    """The store path, or with --verify the store opened with its frames checked."""
    if not verify:
        return store
    from .data import open_store

    return open_store(store, verify_features=True)


_RESUME_HELP = ("Continue an interrupted run from OUT/last.pt (optimizer, epoch, best metric, RNG); "
                "finished folds are only re-tested. Only the same store, fold, scheme and config "
                "are continued: --epochs, --patience, --lr, --num-workers, --cache, --compile, "
                "train.eval_batch_size and train.cache_dtype may change, any other differing value is refused.")


def _config_options(func: Callable, *, skip: tuple[str, ...] = (), resume_help: str = _RESUME_HELP) -> Callable:
    """Add --config, the config-key options (but those in ``skip``), --set, --device, --resume,
    --threads, --verify, --quiet."""
    decorators = [
        click.option("--config", "config_name", metavar="NAME|FILE", default=None,
                     help="Config preset (paper, cpu-small) or TOML file. Default: paper on CUDA, cpu-small on CPU."),
        *[click.option(opt, key.replace(".", "__"), type=typ, default=None, help=hlp)
          for opt, key, typ, hlp in _CONFIG_OPTIONS if opt not in skip],
        click.option("--set", "set_values", metavar="KEY=VALUE", multiple=True,
                     help="Override any config key, e.g. --set model.lstm_hidden=32 (repeatable)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--resume", is_flag=True, help=resume_help),
        click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)."),
        _VERIFY_OPTION,
        click.option("--quiet", "-q", is_flag=True, help="Only print the results, not every epoch."),
    ]
    for deco in reversed(decorators):
        func = deco(func)
    return func


def _handle_errors(func: Callable) -> Callable:
    """Turn expected errors into one ``error:`` line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from serprep.errors import SerprepError

        try:
            return func(*args, **kwargs)
        except SertrainError as exc:
            _fail(str(exc), exc.exit_code)
        except SerprepError as exc:
            from serprep.protocol import ProtocolError, ProtocolMismatch

            # A protocol that cannot be read, or a store not built for it, is a bad input (2).
            _fail(str(exc), 2 if isinstance(exc, (ProtocolError, ProtocolMismatch)) else 1)
        except OSError as exc:
            _fail(f"{getattr(exc, 'filename', '') or ''}: {exc.strerror or exc}".lstrip(": "), 1)
        except KeyboardInterrupt:
            _fail("interrupted (a training run continues with --resume)", 130)

    return wrapper


def _rank() -> int:
    """This process's rank under torchrun (its RANK variable; 0 otherwise). Read here rather
    than from sertrain.distributed so that printing an error never imports torch."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _rank_count() -> int:
    """How many processes torchrun started (its WORLD_SIZE variable; 1 otherwise)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _fail(message: str, code: int) -> None:
    rank = _rank()
    if rank == 0:
        click.echo(f"error: {_first_line(message)}", err=True)
    elif code not in (2, 130):  # torchrun: bad inputs and Ctrl-C are rank 0's to report
        click.echo(f"error: [rank {rank}] {_first_line(message)}", err=True)
    sys.exit(code)


def _first_line(message: str) -> str:
    """The line a user needs from an error message.

    An exception raised in a DataLoader worker reaches the main process re-created with
    torch's text, "Caught StoreError in DataLoader worker process 0." followed by the
    worker's traceback, whose last line holds the original message: show that one.
    """
    lines = [line for line in message.strip().splitlines() if line.strip()] or ["unknown error"]
    if lines[0].startswith("Caught ") and "worker process" in lines[0] and len(lines) > 1:
        last = lines[-1]
        name, sep, text = last.partition(": ")
        return text if sep and name.replace(".", "").replace("_", "").isalnum() else last
    return lines[0]


def _resolve(kwargs: dict[str, Any], protocol: Any = None) -> tuple[Any, dict[str, Any], Any]:
    """(config, explicit overrides, torch device) from the parsed options.

    Under a ``protocol`` the config is the protocol's (its preset unless --config names
    another, its [run.set] values and fold scheme) with the explicit options on top, and the
    protocol's values count as requests (a resume compares them with the run's)."""
    import torch

    from .config import apply_overrides, default_config_name, load_config, parse_value
    from .runtime import resolve_device

    if kwargs.get("threads"):
        torch.set_num_threads(int(kwargs["threads"]))
    device = resolve_device(kwargs["device"])
    overrides: dict[str, Any] = {}
    for _, key, _, _ in _CONFIG_OPTIONS:
        value = kwargs.get(key.replace(".", "__"))
        if value is not None:
            overrides[key] = value
    for item in kwargs.get("set_values") or ():
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_value(value.strip())
    if protocol is not None:
        from .protocols import protocol_overrides, run_config

        cfg = run_config(protocol, kwargs["config_name"], overrides)
        return cfg, {**protocol_overrides(protocol), **overrides}, device
    cfg = load_config(kwargs["config_name"] or default_config_name(device.type))
    if kwargs.get("resume") and kwargs["config_name"]:
        # On --resume the run's own config is used; an explicit --config is a request like
        # any option, so its values go with the overrides to be compared with the run's
        # (train_fold refuses any that differ). Its adjustable values (epochs, lr ...) are
        # left out: only options given explicitly change those.
        from .train import RESUME_ADJUSTABLE

        preset = cfg.flat()
        overrides = {**{k: v for k, v in preset.items() if k not in RESUME_ADJUSTABLE}, **overrides}
    cfg = apply_overrides(cfg, overrides)
    return cfg, overrides, device


def _logger(quiet: bool) -> Callable[[str], None]:
    # Under torchrun only rank 0 prints.
    return (lambda m: None) if quiet or _rank() != 0 else (lambda m: click.echo(m))


def _echo(message: str) -> None:
    """A result line: printed once, by rank 0 under torchrun."""
    if _rank() == 0:
        click.echo(message)


def _join_torchrun(device: Any) -> bool:
    """Launched by torchrun with WORLD_SIZE > 1: join its process group (gloo on CPU, nccl
    on CUDA) for this command, left when the command ends (:mod:`sertrain.distributed`)."""
    from . import distributed

    if distributed.init_from_env(device):
        click.get_current_context().call_on_close(distributed.shutdown)
        return True
    return False


def _parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--folds expects a comma list of fold numbers, got {text!r}") from None


def _parse_aux(text: str | None) -> list[str] | None:
    """The settings of a comma list ``--aux none,gender+speaker,vad`` (each checked against the
    task registry; the same tasks listed twice are refused)."""
    if not text:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    seen: dict[tuple[str, ...], str] = {}
    for item in items:
        try:
            tasks = parse_aux(item)
        except InputError as exc:
            raise InputError(f"--aux: {exc}") from None
        if tasks in seen:
            raise InputError(f"--aux lists a setting twice: {seen[tasks]!r} and {item!r}")
        seen[tasks] = item
    return items


def _check_aux(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback: one ``--aux`` setting, checked against the task registry."""
    if value is not None:
        try:
            parse_aux(value)
        except InputError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sertrain")
def main() -> None:
    """Train and evaluate the multi-task CNN + attention-BLSTM emotion model on a serprep store.

    \b
      sertrain cv feats.h5 --out runs/iemocap          # all folds, mean ± std table
      sertrain baseline feats.h5 --out runs/baseline   # eGeMAPS + linear SVM on the same folds
      sertrain cv feats.h5 --protocol iemocap-5531 --out runs/p   # a published protocol
      sertrain cross --train iemocap.h5 --test msp.h5 --out runs/x  # cross-corpus
      sertrain compare runs/A runs/B                   # paired difference, CI, p-value
      sertrain report runs/iemocap                     # self-contained HTML
      sertrain train feats.h5 --fold 3 --out runs/f3   # one fold
      sertrain evaluate runs/f3/best.pt feats.h5 --fold 3
      sertrain predict runs/f3/best.pt some.wav other.wav
    """


_TENSORBOARD_OPTION = click.option(
    "--tensorboard", "tensorboard", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
    help="Log losses and validation metrics of every epoch for TensorBoard (tensorboard --logdir DIR).")


@main.command()
@click.argument("store", type=click.Path(path_type=Path))  # a directory: one error line, from the reader
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (fold_<k>/ per fold, fold_<k>/seed_<s>/ with several seeds; "
                   "<aux>/... for an --aux grid).")
@click.option("--protocol", "protocol_name", metavar="NAME|FILE", default=None,
              help="Run a named protocol (acrnn, iemocap-5531, msp-improv-6, liu2023, or a TOML file): its "
                   "config, seeds and fold scheme; the store must have been built for it. Options given on top "
                   "are recorded as deviations.")
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train every fold N times with seeds --seed .. --seed+N-1 (default 1; under --protocol "
                   "its seeds).")
@click.option("--folds", "folds_text", metavar="LIST", default=None,
              help="Comma list of fold numbers to run (default: all folds of the scheme).")
@click.option("--aux", "aux_text", metavar="LIST", default=None,
              help=_AUX_HELP[:-len(" [loss.aux].")] + "; or a comma list of settings for an ablation grid with "
                   "one comparison table, e.g. none,gender+speaker,vad,gender+speaker+vad [loss.aux].")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=1000), default=1000, show_default=True,
              metavar="N", help="Bootstrap resamples of the confidence intervals (seeded).")
@_TENSORBOARD_OPTION
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@click.option("--parallel", "n_parallel", type=int, default=None, metavar="K",
              help="Train K runs (folds x seeds x settings) side by side on the CPU, each in its own process "
                   "with cores/K torch threads (--threads sets it); results equal the sequential cv's.")
@click.option("--devices", "devices_text", metavar="LIST", default=None,
              help="Train runs side by side on these GPUs, one run per listed device at a time (e.g. 0,1,2,3; "
                   "list a device twice to run two on it).")
@click.option("--baseline", "baseline_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="A `sertrain baseline` folder of the same store and scheme: print (and write to "
                                  "OUT/baseline_comparison.txt) its row beside the model's, with the paired Δ UA "
                                  "where the runs compare (one seed, 0, like the baseline's).")
@_config_options
@_handle_errors
def cv(store: Path, out_dir: Path, protocol_name: str | None, n_seeds: int | None, folds_text: str | None,
       aux_text: str | None, n_resamples: int, tensorboard: Path | None, no_report: bool, n_parallel: int | None,
       devices_text: str | None, baseline_dir: Path | None, **kwargs: Any) -> None:
    """Cross-validate: train every fold (× seed), test each selected checkpoint.

    Prints the per-fold table (mean ± sample std over seeds), the summary over all runs, the
    pooled metrics and 95 % bootstrap intervals over test utterances and test speakers, and
    writes metrics.json, predictions.csv, table.txt, confusion.png, curves.png and report.html
    to OUT; with several --aux settings also comparison.md / comparison.json with the paired
    difference of each setting to none.

    \b
    Several processes:
      torchrun --nproc-per-node N -m sertrain cv ...   # each run data-parallel over N processes/GPUs
      sertrain cv ... --parallel 2                      # 2 independent runs at a time (CPU)
      sertrain cv ... --devices 0,1,2,3                 # one run per GPU at a time
    """
    from .protocols import deviation_text, deviations, provenance, seeds_for
    from .cv import run_cv

    protocol = _load_protocol(protocol_name)
    cfg, overrides, device = _resolve(kwargs, protocol)
    slots = _cv_slots(n_parallel, devices_text, device)
    _join_torchrun(device)
    folds = _parse_folds(folds_text)
    aux_settings = _parse_aux(aux_text)
    seeds = seeds_for(protocol, n_seeds, cfg.train.seed)
    source = _check_protocol_store(_open_for_run(store, kwargs["verify"]), store, protocol,
                                   _logger(kwargs["quiet"]))
    devs = deviations(protocol, cfg, seeds, aux_settings, folds) if protocol is not None else []
    if devs and _rank() == 0:
        click.echo(f"note: this run deviates from protocol {protocol.name}: {deviation_text(devs, list(overrides))} "
                   "(recorded in every result file)", err=True)
    if baseline_dir is not None:  # refused before any training, not after
        _check_baseline(baseline_dir, store, cfg.data.scheme)
    result = run_cv(source, cfg, out_dir, folds=folds, aux_settings=aux_settings, seeds=seeds,
                    provenance=provenance(protocol, devs), device=str(device), resume=kwargs["resume"],
                    overrides=overrides, log=_logger(kwargs["quiet"]), report=_echo, tensorboard=tensorboard,
                    n_resamples=n_resamples, html=not no_report, slots=slots, worker_threads=kwargs.get("threads"))
    if baseline_dir is not None and _rank() == 0:
        from .baseline import baseline_comparison

        dirs = {aux: out_dir if len(result.results) == 1 else out_dir / aux for aux in result.results}
        table = baseline_comparison(dirs, result.results, baseline_dir, n_resamples)
        (out_dir / "baseline_comparison.txt").write_text(table + "\n")
        _echo("\nmodel vs the eGeMAPS baseline (test, %; mean ± sample std over runs)")
        _echo(table)


def _check_baseline(baseline_dir: Path, store: Path, scheme: str) -> None:
    """Refuse a ``--baseline`` folder that is not a baseline of this store and scheme."""
    from .baseline import check_baseline_for, load_baseline
    from .data import open_store

    reader = open_store(store)
    try:
        check_baseline_for(load_baseline(baseline_dir), baseline_dir, reader.content_sha256, scheme)
    finally:
        reader.close()


def _cv_slots(n_parallel: int | None, devices_text: str | None, device: Any) -> list[str] | None:
    """Worker slots of ``cv --parallel K`` / ``--devices LIST`` (None: one run at a time, here)."""
    from . import distributed, parallel

    if n_parallel is None and devices_text is None:
        return None
    if distributed.launched_by_torchrun():
        raise InputError("--parallel/--devices cannot be used under torchrun (there every process trains the "
                         "same run); use one or the other")
    if n_parallel is not None and devices_text is not None:
        raise InputError("--parallel and --devices exclude each other: --parallel K for CPU runs, --devices for GPUs")
    if devices_text is not None:
        if device.type != "cuda":
            raise InputError("--devices lists GPUs, but this run is on the CPU (use --parallel K there)")
        return parallel.cuda_slots(devices_text)
    if device.type == "cuda":
        raise InputError("--parallel K runs CPU processes; on CUDA name the GPUs with --devices (e.g. --devices 0,1)")
    slots = parallel.cpu_slots(int(n_parallel or 0))
    return slots if len(slots) > 1 else None


@main.command()
@click.argument("store", type=click.Path(path_type=Path))  # a directory: one error line, from the reader
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: STORE's folder / <store name>-baseline).")
@click.option("--scheme", default="loso", show_default=True, help="Fold scheme of the store (as cv's --scheme).")
@click.option("--folds", "folds_text", metavar="LIST", default=None,
              help="Comma list of fold numbers to run (default: all folds of the scheme).")
@click.option("--model", type=click.Choice(["svm", "logreg"]), default="svm", show_default=True,
              help="svm: linear SVM (LinearSVC); logreg: logistic regression. Classes weighted to balance.")
@click.option("--c-grid", "c_grid_text", metavar="LIST", default=None,
              help="Comma list of C values tried on the validation speakers (default 1e-4,1e-3,...,1e1).")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=1000), default=1000, show_default=True,
              metavar="N", help="Bootstrap resamples of the confidence intervals (seeded).")
@_handle_errors
def baseline(store: Path, out_dir: Path | None, scheme: str, folds_text: str | None, model: str,
             c_grid_text: str | None, n_resamples: int) -> None:
    """The classical baseline on the folds of `sertrain cv`: eGeMAPS functionals and a linear classifier.

    Needs a store built with `serprep build ... --functionals egemaps`. Per fold: the functionals
    are standardised with the mean and std of the training speakers' utterances, a linear SVM (or
    logistic regression) is fitted on them for each C of the grid, the C with the best UA on the
    validation speakers is kept, and that model is tested on the test speakers. Prints the table
    of `sertrain cv` (per-fold WA/UA/F1, mean ± std, pooled, bootstrap intervals; the last column
    is the chosen C) and writes metrics.json, predictions.csv, table.txt and confusion.png to OUT.
    `sertrain cv ... --baseline OUT` shows it beside the model.
    """
    from .baseline import C_GRID, run_baseline

    grid = C_GRID if not c_grid_text else _parse_grid(c_grid_text)
    out = out_dir if out_dir is not None else store.parent / f"{store.stem}-baseline"
    run_baseline(store, out, scheme=scheme, folds=_parse_folds(folds_text), model=model, grid=grid,
                 n_resamples=n_resamples, report=_echo)
    click.echo(f"results: {out}/metrics.json, predictions.csv, table.txt, confusion.png")


def _parse_grid(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--c-grid expects a comma list of numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(f"--c-grid expects positive numbers, got {text!r}")
    return values


@main.command()
@click.option("--train", "train_stores", multiple=True, required=True, metavar="STORE",
              type=click.Path(path_type=Path),
              help="Training store (repeatable): every labelled original utterance of its training speakers is "
                   "trained on.")
@click.option("--test", "test_stores", multiple=True, required=True, metavar="STORE",
              type=click.Path(path_type=Path),
              help="Test store (repeatable): every labelled utterance is tested. Another corpus than every "
                   "training store (same content or same corpus fingerprint is refused).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: seed_<s>/ per seed, metrics.json, predictions.csv, table.txt, plots.")
@click.option("--validation-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              show_default=True,
              help="Share of each training store's speakers held out to choose the model (at least one speaker "
                   "per store, at least one left to train; genders alternate).")
@click.option("--validation-seed", type=int, default=0, show_default=True,
              help="Seed of the choice of validation speakers and of the balanced index (the same for every seed).")
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Train N times with seeds --seed .. --seed+N-1; the table shows mean ± sample std over seeds.")
@click.option("--within", "within_dirs", multiple=True, metavar="RUN_DIR", type=click.Path(path_type=Path),
              help="A `sertrain cv` folder run on a test store (matched by the store content sha256 in its "
                   "metrics.json; repeatable): adds that cv's pooled result as a within-corpus reference row.")
@click.option("--aux", metavar="TASKS", default=None, callback=_check_aux, help=_AUX_HELP)
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=1000), default=1000, show_default=True,
              metavar="N", help="Bootstrap resamples of the confidence intervals (seeded).")
@functools.partial(
    _config_options, skip=("--scheme",),
    resume_help="Continue interrupted seeds from OUT/seed_<s>/last.pt; finished seeds are only re-tested. Only the "
                "same stores, validation split and config are continued: --epochs, --patience, --lr, "
                "--num-workers, --cache, --compile, train.eval_batch_size and train.cache_dtype may change, any "
                "other differing value is refused.")
@_handle_errors
def cross(train_stores: tuple[Path, ...], test_stores: tuple[Path, ...], out_dir: Path, validation_share: float,
          validation_seed: int, n_seeds: int, within_dirs: tuple[Path, ...], aux: str | None, n_resamples: int,
          **kwargs: Any) -> None:
    """Cross-corpus: train on the --train stores, test on every labelled utterance of each --test store.

    \b
      sertrain cross --train iemocap.h5 --test msp.h5 --out runs/i2m
      sertrain cross --train iemocap.h5 --train crema-d.h5 --test msp.h5 --test emodb.h5 --out runs/x
      sertrain cross --train iemocap.h5 --test msp.h5 --out runs/i2m --seeds 3 --within runs/msp-cv

    Every store needs the same feature and segment configuration and the classes ang, hap,
    neu, sad (built with --classes 4class, or 4class-merged for IEMOCAP); anything else is
    refused in one line. Trains on the original utterances (no augmented copies) of each
    training store's speakers but a seeded validation share, whose utterances choose the
    model (--selection) and stop training early; features are normalised with statistics of
    the training speakers only. Prints one row per test store (WA, UA, macro-F1, UA per
    gender: mean ± sample std over seeds; 95 % bootstrap intervals of UA over utterances and
    over speakers), with a within-corpus reference row for each --within folder, and the
    intervals of every pooled metric.
    """
    from .config import apply_overrides
    from .cross import run_cross

    if _rank_count() > 1:
        raise InputError("sertrain cross runs in one process; torchrun runs `sertrain train` and `sertrain cv`")
    cfg, overrides, device = _resolve(kwargs)
    if aux:
        overrides["loss.aux"] = aux
        cfg = apply_overrides(cfg, {"loss.aux": aux})
    seeds = [cfg.train.seed + i for i in range(n_seeds)]
    run_cross(list(train_stores), list(test_stores), cfg, out_dir, seeds=seeds, validation_share=validation_share,
              validation_seed=validation_seed, within=list(within_dirs), device=str(device),
              resume=kwargs["resume"], overrides=overrides, verify=kwargs["verify"], log=_logger(kwargs["quiet"]),
              report=lambda m: click.echo(m), n_resamples=n_resamples)


def _load_protocol(name: str | None) -> Any:
    if not name:
        return None
    from serprep.protocol import load_protocol

    return load_protocol(name)


def _check_protocol_store(source: Any, store: Path, protocol: Any, log: Callable[[str], None]) -> Any:
    """Refuse a store not built for ``protocol`` (one line with the build command that fits);
    without a protocol, note a store that was built for one. Returns the open reader."""
    from .data import open_store

    reader = source if not isinstance(source, (str, Path)) else open_store(source)
    built_for = (reader.build.get("protocol") or {}).get("name")
    if protocol is not None:
        protocol.check_store(reader, str(store))
    elif built_for:
        log(f"note: {store} was built for protocol {built_for}; `--protocol {built_for}` runs it as published")
    return reader


@main.command()
@click.argument("store", type=click.Path(path_type=Path))  # a directory: one error line, from the reader
@click.option("--fold", type=int, required=True, help="Fold number (1..K of the scheme).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: best.pt, last.pt, metrics.json, predictions.csv, plots.")
@click.option("--aux", metavar="TASKS", default=None, callback=_check_aux, help=_AUX_HELP)
@_TENSORBOARD_OPTION
@_config_options
@_handle_errors
def train(store: Path, fold: int, out_dir: Path, aux: str | None, tensorboard: Path | None, **kwargs: Any) -> None:
    """Train one fold, keep the model the selection rule picks on the validation speakers (default: the
    average of the 3 best validation-UA epochs), and test it.

    `torchrun --nproc-per-node N -m sertrain train ...` trains it data-parallel over N processes
    (GPUs with CUDA): the global batch (--batch-size) is split over the processes; rank 0 writes."""
    from .config import apply_overrides
    from .report import run_table
    from .train import train_fold

    cfg, overrides, device = _resolve(kwargs)
    if aux:
        overrides["loss.aux"] = aux
        cfg = apply_overrides(cfg, {"loss.aux": aux})
    _join_torchrun(device)
    result = train_fold(_open_for_run(store, kwargs["verify"]), fold, cfg, out_dir, device=str(device),
                        resume=kwargs["resume"], overrides=overrides, log=_logger(kwargs["quiet"]),
                        tensorboard=tensorboard)
    _echo(run_table([result.row()]))
    _echo(f"wrote {out_dir / 'best.pt'} and reports in {out_dir}")


@main.command()
# dir_okay: load_checkpoint refuses a directory in one `error:` line (click's own check prints
# a usage block instead).
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("store", type=click.Path(path_type=Path))  # a directory: one error line, from the reader
@click.option("--fold", type=int, default=None, help="Fold number (default: the checkpoint's fold).")
@click.option("--scheme", default=None, help="Fold scheme (default: the checkpoint's).")
@click.option("--split", type=click.Choice(["test", "validation"]), default="test", show_default=True,
              help="Which part of the fold to score.")
@click.option("--aggregate", type=click.Choice(["mean", "max"]), default=None,
              help="Utterance decision from segment posteriors (default: the checkpoint's config).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--num-workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write metrics.json, predictions.csv and confusion.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@_VERIFY_OPTION
@_handle_errors
def evaluate(checkpoint: Path, store: Path, fold: int | None, scheme: str | None, split: str,
             aggregate: str | None, device: str, num_workers: int, out_dir: Path | None, as_json: bool,
             verify: bool) -> None:
    """Score a checkpoint at utterance level on a fold of a store.

    Prints WA, UA, macro-F1, per-class recall, UA by gender and the confusion matrix. The
    store must have the feature configuration the model was built for; features are
    normalised with the statistics saved in the checkpoint. On the training store, a fold
    whose speakers the checkpoint was trained on is refused (not speaker independent).
    """
    from .evaluate import clean_json, evaluate_checkpoint, write_reports
    from .report import pct

    ev, info = evaluate_checkpoint(checkpoint, store, fold, scheme=scheme, split=split,
                                   aggregate_how=aggregate, device=device, num_workers=num_workers,
                                   verify_features=verify)
    m = ev.metrics
    if out_dir is not None:
        write_reports(out_dir, {**info, split: m}, ev.predictions, None, m["confusion"], m["classes"],
                      title=f"{Path(checkpoint).name} on {info['scheme']} fold {info['fold']} ({split})")
    if as_json:
        click.echo(json.dumps(clean_json({**info, "metrics": m}), indent=2))
        return
    if not info["same_store"]:
        click.echo("note: this store differs from the training store ("
                   + ("same corpus, another build" if info["same_corpus"] else "another corpus")
                   + "); using the checkpoint's normalisation statistics", err=True)
    click.echo(f"{info['scheme']} fold {info['fold']} {split} [{', '.join(info['speakers'])}]: "
               f"{m['n']} utterances, aggregate {info['aggregate']}")
    click.echo(f"WA {pct(m['wa'])}  UA {pct(m['ua'])}  macro-F1 {pct(m['macro_f1'])}")
    click.echo("recall: " + "  ".join(f"{c} {pct(r)}" for c, r in m["recall"].items()))
    for g, gm in (m.get("by_gender") or {}).items():
        click.echo(f"gender {g} ({gm['n']} utts): UA {pct(gm['ua'])}  WA {pct(gm['wa'])}  recall "
                   + "  ".join(f"{c} {pct(r)}" for c, r in gm["recall"].items()))
    classes = m["classes"]
    width = max(6, *(len(c) for c in classes))
    click.echo("confusion (rows: reference, columns: predicted)")
    click.echo(" " * width + "".join(c.rjust(width + 1) for c in classes))
    for c, row in zip(classes, m["confusion"]):
        click.echo(c.ljust(width) + "".join(str(v).rjust(width + 1) for v in row))


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write compare_<A>_vs_<B>.json here (e.g. into RUN_A, where `sertrain report` shows it).")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=1000), default=1000, show_default=True,
              metavar="N", help="Paired bootstrap resamples.")
@click.option("--permutations", "n_permutations", type=click.IntRange(min=1000), default=10000, show_default=True,
              metavar="N", help="Permutations of the paired test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the resampling.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def compare(run_a: Path, run_b: Path, out_dir: Path | None, n_resamples: int, n_permutations: int, seed: int,
            as_json: bool) -> None:
    """Paired comparison of two cv runs on the same store, folds, protocol, seeds and utterances.

    Prints A, B and A - B for the pooled WA, UA, macro-F1 and the female-minus-male UA gap,
    with 95 % paired bootstrap intervals and paired permutation p-values, over test
    utterances and over test speakers. Runs that did not test the same utterances the same
    way are refused.
    """
    from .compare import paired_difference
    from .evaluate import clean_json
    from .report import compare_table

    result = paired_difference(run_a, run_b, n_resamples=n_resamples, n_permutations=n_permutations, seed=seed)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"compare_{_slug(run_a)}_vs_{_slug(run_b)}.json"
        (out_dir / name).write_text(json.dumps(clean_json(result), indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(clean_json(result), indent=2))
        return
    click.echo(f"A: {run_a}  ({result['a']['title']})")
    click.echo(f"B: {run_b}  ({result['b']['title']})")
    click.echo(f"{result['n_utterances']} test utterances of {result['n_speakers']} speakers, "
               f"{len(result['folds'])} folds × {len(result['seeds'])} seeds; pooled metrics (%), runs averaged")
    click.echo(compare_table(result))
    click.echo(f"paired percentile bootstrap ({n_resamples} resamples, seed {seed}) and paired permutation test "
               f"({n_permutations} permutations, two-sided); speakers: whole speakers resampled / swapped")


def _slug(path: Path) -> str:
    """A file-name-safe label of a run folder (its last two path parts)."""
    parts = [p for p in Path(path).resolve().parts[-2:] if p not in ("/", "")]
    return "-".join("".join(c if c.isalnum() or c in "-_." else "_" for c in p) for p in parts)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: RUN_DIR/report.html).")
@_handle_errors
def report(run_dir: Path, out_file: Path | None) -> None:
    """Write one self-contained HTML report of a cv run (no network; images inline).

    Protocol and store provenance, per-fold and summary tables with intervals, confusion
    matrices, per-gender recall, learning curves, and the ablation / compare tables present
    in RUN_DIR. `sertrain cv` writes it at the end of every run.
    """
    from .html_report import write_html_report

    click.echo(f"wrote {write_html_report(run_dir, out_file)}")


@main.command()
# dir_okay: load_checkpoint refuses a directory in one `error:` line.
@click.argument("checkpoint", type=click.Path(path_type=Path))
# Files are checked one by one when their turn comes (a missing file or a directory is that
# file's error line), so click must not reject the whole list for one of them.
@click.argument("files", nargs=-1, required=True, type=click.Path(readable=False, path_type=Path))
@click.option("--aggregate", type=click.Choice(["mean", "max"]), default=None,
              help="Combine segment posteriors by mean or max (default: the checkpoint's config).")
@click.option("--min-duration", type=float, default=0.5, show_default=True, metavar="SECONDS",
              help="Shorter files fail instead of getting a label. IEMOCAP's shortest utterances "
                   "last about 0.6 s; a file of a few milliseconds must not get a confident label. "
                   "0 accepts any file long enough for one feature frame.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON list, an entry per file in input order ({file, error} for a failed one).")
@_handle_errors
def predict(checkpoint: Path, files: tuple[Path, ...], aggregate: str | None, min_duration: float, device: str,
            as_json: bool) -> None:
    """Print emotion class probabilities for audio FILES.

    Features are computed with the feature configuration recorded in the checkpoint and
    normalised with its fold statistics; long files are cut into the store's windows and the
    window posteriors are combined (with max, the maxima are rescaled to sum to 1). Files are
    read as a stream, so memory does not grow with their length.

    A file that cannot be classified (missing, undecodable, too short, non-finite features
    or posteriors) gets one line "error: FILE: REASON" on stderr and the others are still
    scored; the exit status is then 1. A bad checkpoint stops the command (exit 2).
    """
    from .predict import FailedFile, Predictor

    predictor = Predictor(checkpoint, device, aggregate, min_duration=min_duration)
    outcomes = []
    for outcome in predictor.predict_each(files):  # text results are printed as each file is done
        outcomes.append(outcome)
        if isinstance(outcome, FailedFile):
            click.echo(f"error: {outcome.message()}", err=True)
            continue
        for warning in outcome.warnings:
            click.echo(f"warning: {outcome.path}: {warning}", err=True)
        if not as_json:
            probs = "  ".join(f"{c} {p:.3f}" for c, p in outcome.probabilities.items())
            click.echo(f"{outcome.path}: {outcome.label}  ({probs})  "
                       f"[{outcome.n_segments} segment(s), {outcome.duration:.2f} s]")
    if as_json:
        # allow_nan=False: strict JSON; a non-finite number is a failed file, never NaN here.
        click.echo(json.dumps([o.to_dict() for o in outcomes], indent=2, allow_nan=False))
    if any(isinstance(o, FailedFile) for o in outcomes):
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
