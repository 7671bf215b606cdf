"""The ``serprep`` command line."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .config import FeatureConfig, SegmentConfig
from .clickutil import OneLineErrorGroup
from .errors import SerprepError
from .corpora import corpus_names
from .protocol import protocol_names


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler), raised like Ctrl-C so that a build
    cleans up the same way."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


class _Group(OneLineErrorGroup):
    """Turns :class:`SerprepError` and ``OSError`` into a one-line ``error:`` message, exit code 1,
    and Ctrl-C or SIGTERM into ``error: interrupted ...`` / ``error: terminated ...``, exit code
    130 / 143, after the build cleaned up (temp file removed, workers stopped; a journal that
    holds blocks kept for ``--resume``, which the line then says)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SerprepError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:  # disk full, permissions, ...: still one line, no traceback
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            what, code = ("terminated (SIGTERM)", 143) if isinstance(exc, _Terminated) else ("interrupted", 130)
            notes = getattr(exc, "__notes__", None)  # the build's journal kept blocks (serprep.journal)
            if notes:
                click.echo(f"error: {what}; no store written (a previous store at --out is unchanged); {notes[0]}",
                           err=True)
            else:
                click.echo(f"error: {what}; nothing written (a previous store at --out is unchanged)", err=True)
            ctx.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="serprep")
def main() -> None:
    """Turn speech emotion corpora into self-describing HDF5 feature stores."""
    signal.signal(signal.SIGTERM, _raise_terminated)


@main.command()
@click.argument("corpus", type=click.Choice(corpus_names()))
@click.option("--root", required=True, type=click.Path(path_type=Path),
              help="Corpus root (e.g. IEMOCAP_full_release/; `serprep corpora` says what each corpus expects).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Store file to write (.h5).")
@click.option("--protocol", "protocol_ref", default=None, metavar="NAME|FILE",
              help="Build the store of an evaluation protocol (built-in: " + ", ".join(protocol_names())
                   + "; or a protocol .toml file; docs/protocols.md): it sets --classes, --subset, --n-mels, "
                   "--segment-frames, --segment-hop, --augment and --balance, refuses any of them given "
                   "with another value, and is recorded in the store.")
@click.option("--classes", default=None,
              help="Class set of the corpus' label manifest: every corpus has `all` and `4class` (ang, hap, neu, "
                   "sad); `serprep corpora` lists them all (default: the manifest's default; set by --protocol).")
@click.option("--subset", default=None,
              help="Utterance subset of the corpus' label manifest (`serprep corpora` lists them; e.g. IEMOCAP "
                   "improvised, RAVDESS speech/song; set by --protocol).")
@click.option("--n-mels", default=40, show_default=True, type=int, help="Mel bands (set by --protocol).")
@click.option("--segment-frames", default=300, show_default=True, type=int, help="Frames per segment (set by --protocol).")
@click.option("--segment-hop", default=150, show_default=True, type=int, help="Segment hop in frames (set by --protocol).")
@click.option("--augment", default=None,
              help="Augmentation preset name (bundled: serprep/manifests/augment/NAME.toml) or file (set by --protocol).")
@click.option("--copies", default=1, show_default=True, type=int, help="Augmented copies per utterance when augmenting without --balance.")
@click.option("--balance/--no-balance", default=False, show_default=True,
              help="Balance emotion classes in training data: denser training-only windows for minority "
                   "classes, plus augmented copies when --augment is given (set by --protocol).")
@click.option("--max-copies", default=4, show_default=True, type=int, help="Most augmented copies per utterance when balancing.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for augmentation and sampling indices.")
@click.option("--functionals", type=click.Choice(["egemaps"]), default=None,
              help="Also store utterance functionals for the classical baseline (`sertrain baseline`): egemaps = "
                   "the 88 eGeMAPS v02 functionals of openSMILE (needs serprep[egemaps]), of every extracted "
                   "original utterance; an utterance whose functionals are not finite is skipped and recorded. "
                   "Costs extraction time (README: Benchmarks).")
@click.option("--jobs", "-j", default=-1, show_default=True, type=int, help="Extraction workers (-1 or 0 = all cores).")
@click.option("--backend", type=click.Choice(["auto", "threads", "processes", "dask"]), default="auto",
              show_default=True,
              help="Extraction workers: threads (plain builds), processes (used for --augment), auto picks; "
                   "dask: on a Dask cluster (--scheduler; the same store; --jobs is ignored, the cluster's "
                   "worker threads are the jobs; README: Building on a cluster).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:8786",
              help="Dask scheduler for --backend dask (default: $DASK_SCHEDULER_ADDRESS). Workers read the "
                   "corpus at the same absolute path as this command.")
@click.option("--strict", is_flag=True,
              help="Abort on the first unreadable audio file or label line that does not parse, instead of "
                   "skipping and recording it.")
@click.option("--overwrite", is_flag=True,
              help="Replace --out if it exists; without --resume, also discard the journal of an interrupted build.")
@click.option("--resume", is_flag=True,
              help="Continue a build of this --out that was killed or interrupted: the blocks it extracted into "
                   "OUT.partial/ are kept and the rest extracted, giving the same store as an uninterrupted build. "
                   "Refused (one line saying what differs) if the options, corpus or package versions differ; "
                   "with no journal there, it simply builds from the start.")
@click.option("--no-journal", is_flag=True,
              help="Do not keep extracted blocks in OUT.partial/ while building (saves disk space about the "
                   "store's size; a killed build then cannot be resumed).")
@click.option("--block-seconds", default=60.0, type=float, hidden=True,
              help="Seconds of audio per work block (and journal file).")
@click.option("--task-timeout", default=900.0, show_default=True, type=float, help="Seconds a worker may spend on one block.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def build(corpus, root, out, protocol_ref, classes, subset, n_mels, segment_frames, segment_hop, augment, copies,
          balance, max_copies, seed, functionals, jobs, backend, scheduler, strict, overwrite, task_timeout, quiet,
          resume, no_journal, block_seconds) -> None:
    """Build a feature store from a corpus directory.

    \b
    serprep build iemocap --root /data/IEMOCAP_full_release --out feats.h5
    serprep build msp-improv --root /data/MSP-IMPROV --out msp.h5 --augment default --balance
    serprep build iemocap --root /data/IEMOCAP_full_release --protocol acrnn --out feats-acrnn.h5
    serprep build iemocap --root /data/IEMOCAP_full_release --out feats.h5 --resume   # after a kill

    While it runs, a build keeps each extracted block in OUT.partial/ beside --out (about the
    store's size again on disk); it removes the folder once the store is written or when it
    fails with an error. A killed or interrupted build leaves it there for --resume.
    """
    from .build import BuildOptions, build_store

    if backend == "dask":
        from .dask_backend import ENV_VAR, scheduler_address

        if not scheduler_address(scheduler):
            raise click.UsageError(f"--backend dask needs --scheduler tcp://HOST:8786 or {ENV_VAR}")
        root = root.absolute()  # workers read the corpus at this path
    elif scheduler:
        raise click.UsageError("--scheduler is for --backend dask")
    protocol = None
    if protocol_ref:
        from .protocol import BUILD_FLAGS, load_protocol

        protocol = load_protocol(protocol_ref)
        ctx = click.get_current_context()
        values = {"classes": classes, "subset": subset, "n_mels": n_mels, "segment_frames": segment_frames,
                  "segment_hop": segment_hop, "augment": augment, "balance": balance}
        # Only options the user typed can conflict with the protocol; defaults give way to it.
        given = {key: values[key] for key in BUILD_FLAGS
                 if ctx.get_parameter_source(key) not in (None, click.core.ParameterSource.DEFAULT)}
        settings = protocol.build_settings(corpus, given, out=str(out))
        classes, subset, n_mels = settings["classes"], settings["subset"], settings["n_mels"]
        segment_frames, segment_hop = settings["segment_frames"], settings["segment_hop"]
        augment, balance = settings["augment"], settings["balance"]
    opts = BuildOptions(
        corpus=corpus, root=root, out=out, classes=classes, subset=subset,
        features=FeatureConfig(n_mels=n_mels),
        segments=SegmentConfig(frames=segment_frames, hop=segment_hop, min_hop=max(1, min(50, segment_hop))),
        augment=augment, copies=copies, balance=balance, max_copies=max_copies, seed=seed, jobs=jobs, backend=backend,
        scheduler=scheduler, strict=strict, overwrite=overwrite, progress=not quiet, task_timeout=task_timeout,
        protocol=protocol, resume=resume, journal=not no_journal, block_seconds=block_seconds,
        functionals=functionals,
    )
    s = build_store(opts, log=lambda m: click.echo(m, err=True))
    click.echo(
        f"wrote {s.out}: {s.n_extracted}/{s.n_labelled} utterances, {s.n_items} items, {s.n_segments} segments, "
        f"{s.audio_seconds / 3600:.2f} h audio in {s.wall_seconds:.1f} s ({s.audio_seconds / max(s.wall_seconds, 1e-9):.0f}x real time)"
    )
    click.echo("classes: " + ", ".join(f"{c} {n}" for c, n in s.class_counts.items()))
    if s.failures:
        click.echo(f"skipped {len(s.failures)} unreadable file(s) (recorded in the store):")
        for path, err in s.failures:
            click.echo(f"  {err}")
    if s.skipped_labels:
        click.echo(f"skipped {len(s.skipped_labels)} label line(s) that do not parse (recorded in the store):")
        for where, problem in s.skipped_labels:
            click.echo(f"  {where}: {problem}")
    click.echo(f"warnings: {len(s.warnings)}" + (" (recorded in the store; serprep info lists them)" if s.warnings else ""))
    for where, message in s.warnings:
        click.echo(f"  {where}: {message}")
    for note in s.fold_notes:
        click.echo(f"note: {note}")
    if protocol is not None:
        click.echo(f"protocol {protocol.name} {protocol.version} (sha256 {protocol.sha256[:16]}...) recorded in the store")


@main.command()
@click.option("--markdown", is_flag=True, help="The README's corpus table (Markdown).")
def corpora(markdown: bool) -> None:
    """List the corpora serprep reads: root folder, speakers, class sets, subsets, folds."""
    from .corpus_table import corpus_table_markdown, corpus_table_text

    click.echo(corpus_table_markdown() if markdown else corpus_table_text())


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(store: Path, as_json: bool) -> None:
    """Summarise a store: corpus, feature kind and config, dimensional ratings and their scale,
    versions, counts, folds."""
    from .info import format_summary, store_summary

    s = store_summary(store)
    click.echo(json.dumps(s, indent=2, sort_keys=True) if as_json else format_summary(s))


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
def verify(store: Path) -> None:
    """Re-check every checksum, feature frames included; exit 1 (one error line listing every
    problem) if anything is damaged or modified."""
    from .store import verify as verify_store

    problems = verify_store(store)
    if problems:
        # One line, every problem in it: what changed, and how much.
        prefix = f"{store}: damaged or modified store: "
        if len(problems) == 1:
            click.echo(f"error: {problems[0]}", err=True)
        else:
            details = "; ".join(p.removeprefix(prefix) for p in problems)
            click.echo(f"error: {store}: damaged or modified store, {len(problems)} problems: {details}", err=True)
        sys.exit(1)
    from .store import count_datasets

    click.echo(f"{store}: OK ({count_datasets(store)} datasets verified)")


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="CSV file to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def manifest(store: Path, out: Path, overwrite: bool) -> None:
    """Export the utterance table as CSV (written to a temp file, then renamed into place)."""
    import os

    from .output import temp_path
    from .store import StoreReader

    if out.exists() and out.resolve() == store.resolve():
        raise SerprepError(f"{out}: is the store being exported; choose another --out")
    if out.exists() and not overwrite:
        raise SerprepError(f"{out}: already exists (use --overwrite to replace it)")
    df = StoreReader(store).manifest()
    tmp = temp_path(out)
    try:
        df.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"wrote {out}: {len(df)} utterances, {len(df.columns)} columns")


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the PNGs and summary.md.")
@click.option("--scheme", default=None, help="Fold scheme to plot (default: loso).")
def report(store: Path, out: Path, scheme: str | None) -> None:
    """Plot class counts per fold (before/after balancing, by gender) and example spectrograms."""
    from .report import write_report

    for path in write_report(store, out, scheme):
        click.echo(f"wrote {path}")


@main.command("clean-tmp")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--journals", is_flag=True,
              help="Also remove the journals (NAME.partial/) of interrupted builds, which --resume would continue.")
def clean_tmp(folder: Path, journals: bool) -> None:
    """Remove temporary store files and lock files left in FOLDER by builds that were killed.

    Only files named like a build's temp file (.NAME.tmp-HOST-PID) whose process is gone on
    this host, and build lock files (.NAME.lock) that nobody holds; a running build's files, or
    a temp file from another host sharing the folder, are kept. The journals of interrupted
    builds (NAME.partial/: extracted blocks that `serprep build --resume` continues from) are
    listed with their size, and removed with --journals; a running build's journal is never
    touched. FOLDER defaults to the current one.
    """
    from .journal import discard_journal, interrupted_journals
    from .output import remove_stale_locks, remove_stale_temps

    if not folder.is_dir():
        raise SerprepError(f"{folder}: no such folder")
    removed = remove_stale_temps(folder) + remove_stale_locks(folder)
    for path in removed:
        click.echo(f"removed {path}")
    kept = 0
    for journal in interrupted_journals(folder):
        what = (f"{len(journal.blocks)} extracted block(s), {journal.size / 2**20:.1f} MiB, of an interrupted "
                f"build of {journal.out_name}")
        if journals:
            discard_journal(journal.path)
            click.echo(f"removed {journal.path}/ ({what})")
            removed.append(journal.path)
        else:
            kept += 1
            click.echo(f"kept {journal.path}/ ({what}): `serprep build ... --out {journal.path.parent / journal.out_name} "
                       "--resume` continues it; `serprep clean-tmp --journals` removes it")
    click.echo(f"{len(removed)} stale temporary, lock or journal file(s) removed from {folder}"
               + (f"; {kept} journal(s) kept" if kept else ""))


@main.command("demo-corpus")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to write (the corpus root: IEMOCAP_full_release or MSP-IMPROV layout).")
@click.option("--layout", type=click.Choice(["iemocap", "msp-improv"]), default="iemocap", show_default=True,
              help="Corpus layout: iemocap (5 sessions, 10 speakers, IEMOCAP label files) or msp-improv "
                   "(6 sessions, 12 speakers, Evaluation.txt + Audio/); build it with `serprep build <layout>`.")
@click.option("--hours", default=0.5, show_default=True, type=float, help="Total audio duration.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice (same seed, same corpus).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder.")
def demo_corpus(out: Path, layout: str, hours: float, seed: int, overwrite: bool) -> None:
    """Write a synthetic speech-like corpus in the IEMOCAP or MSP-IMPROV layout (no download)."""
    from .demo import write_demo_corpus

    if not hours > 0:
        raise SerprepError(f"--hours {hours}: must be a positive number of hours")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SerprepError(f"{out}: folder exists and is not empty (use --overwrite)")
    s = write_demo_corpus(out, hours=hours, seed=seed, progress=True, layout=layout)
    click.echo(f"wrote {out} ({layout} layout): {s.get('n_utterances')} utterances, "
               f"{s.get('total_seconds', 0) / 60:.1f} min of audio")


if __name__ == "__main__":
    main()
