"""Human and JSON summaries of a store (``serprep info``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .corpora import registry
from .store import GENDERS, UNKNOWN_GENDER, StoreReader


def store_summary(path: str | Path) -> dict[str, Any]:
    """Everything ``serprep info`` shows, as plain JSON-able data."""
    r = StoreReader(path)
    manifest = r.manifest()
    segs = r.segments()
    build = r.build
    ok = manifest["status"] == "ok"
    emotions = r.vocab("emotion")
    genders = [g for g in (*GENDERS, UNKNOWN_GENDER) if g in GENDERS or (manifest["gender"] == g).any()]
    summary: dict[str, Any] = {
        "file": str(Path(path).name),
        "size_bytes": Path(path).stat().st_size,
        "schema_version": r.attrs["schema_version"],
        "corpus": r.corpus,
        "corpus_info": _corpus_info(r.corpus),
        "created": r.attrs.get("created"),
        "corpus_fingerprint": r.fingerprint,
        "versions": json.loads(r.attrs.get("versions", "{}")),
        "feature_kind": r.feature_kind,
        "feature_channels": list(r.feature_channels),
        "feature_config": r.feature_config.to_dict(),
        "segment_config": r.segment_config.to_dict(),
        "build": {k: v for k, v in build.items() if k != "augment"} | {
            "augment": None if not build.get("augment") else build["augment"].get("preset")},
        "utterances": {
            "total": int(len(manifest)),
            "selected": int((manifest["emotion"] != "").sum()),
            "extracted": int(ok.sum()),
            "failed": int((manifest["status"] == "failed").sum()),
            "hours": float(np.nansum(manifest.loc[ok, "duration"]) / 3600.0),
            "by_class": {c: int(((manifest["emotion"] == c) & ok).sum()) for c in emotions},
            "by_gender": {g: int(((manifest["gender"] == g) & ok).sum()) for g in genders},
            "speakers": int(manifest.loc[ok, "speaker"].nunique()),
            "sessions": int(manifest.loc[ok, "session"].nunique()),
        },
        "segments": {
            "total": int(len(segs)),
            "original": int(((segs["copy"] == 0) & ~segs["dense"]).sum()),
            "dense": int(segs["dense"].sum()),
            "augmented": int((segs["copy"] > 0).sum()),
        },
        "dimensions": _dimensions(r.dimension_scales(), segs),
        "frames": int(r.n_frames_total),
        "failures": r.failures().to_dict(orient="records"),
        "warnings": r.warnings().to_dict(orient="records"),
        "content_sha256": r.content_sha256,
        "protocol_note": _protocol_note(build.get("protocol")),
        "folds": {},
    }
    for scheme in r.fold_schemes():
        folds = []
        for k in r.fold_ids(scheme):
            f = r.fold(scheme, k)
            folds.append({
                "fold": k,
                "label": f.label,
                "test_speakers": f.test_speakers,
                "validation_speakers": f.validation_speakers,
                "n_train_speakers": len(f.train_speakers),
                "utterances": {"train": len(f.train_utts), "validation": len(f.validation_utts), "test": len(f.test_utts)},
                "counts": f.counts,
            })
        summary["folds"][scheme] = folds
    sets = r.functional_sets()
    if sets:  # only stores built with --functionals say so (the others' summary is unchanged)
        summary["functionals"] = {name: len(r.functionals(name).names) for name in sets}
    return summary


def _dimensions(scales: dict[str, tuple[float, float]], segs: Any) -> dict[str, Any]:
    """Per rating column of the store: its scale and how many extracted utterances it rates."""
    original = segs[(segs["copy"] == 0) & ~segs["dense"]]
    out = {}
    for name, (lo, hi) in scales.items():
        per_utt = original.groupby("utt")[name].first()
        out[name] = {"scale": [lo, hi], "rated": int(per_utt.notna().sum()), "missing": int(per_utt.isna().sum())}
    return out


def _dimensions_text(dims: dict[str, Any]) -> str:
    """``arousal 1-5 (240 rated), valence 1-5 (238 rated, 2 missing)``, or ``none``."""
    if not dims:
        return "none in this store"
    parts = []
    for name, d in dims.items():
        lo, hi = d["scale"]
        missing = f", {d['missing']} missing" if d["missing"] else ""
        parts.append(f"{name} {lo:g}-{hi:g} ({d['rated']} rated{missing})")
    return ", ".join(parts) + " per utterance"


def _corpus_info(corpus: str) -> dict[str, Any] | None:
    """The registry's description of the store's corpus (None for a corpus this serprep lacks)."""
    info = registry().get(corpus)
    if info is None:
        return None
    return {"title": info.title, "speakers": info.speakers, "dimensions": list(info.dimensions), "scale": info.scale}


def _speakers_text(speakers: list[str], limit: int = 4) -> str:
    if not speakers:
        return "-"
    if len(speakers) <= limit:
        return "+".join(speakers)
    return "+".join(speakers[:limit]) + f"+... ({len(speakers)})"


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable ``serprep info`` text."""
    u, seg, fc, b = s["utterances"], s["segments"], s["feature_config"], s["build"]
    lines = [
        f"{s['file']}: serprep store, schema {s['schema_version']}, {s['size_bytes'] / 2**20:.1f} MiB",
        f"  corpus        {s['corpus']}{' = ' + ci['title'] if (ci := s.get('corpus_info')) else ''} (fingerprint {s['corpus_fingerprint'][:16]}...)",
        *([f"                speakers: {ci['speakers']}; dimensional ratings: "
           + (f"{', '.join(ci['dimensions'])} ({ci['scale']})" if ci["dimensions"] else "none")] if ci else []),
        f"  content       {s['content_sha256'][:16]}... (identifies this store; checkpoints record it)",
        f"  created       {s['created']} with serprep {s['versions'].get('serprep')}, librosa {s['versions'].get('librosa')}, h5py {s['versions'].get('h5py')}",
        f"  protocol      {_protocol_text(b.get('protocol'))}",
        *([f"                {s['protocol_note']}"] if s.get("protocol_note") else []),
        f"  labels        {b.get('classes')} / subset {b.get('subset')} (label manifest v{b.get('label_manifest_version')})",
        f"  features      {s['feature_kind']} {fc['n_mels']} x {len(s['feature_channels'])} channels "
        f"({', '.join(s['feature_channels'])}), {fc['sample_rate']} Hz, win {fc['win_length']} hop {fc['hop_length']} n_fft {fc['n_fft']}, pre-emphasis {fc['preemphasis']}",
        *(["  functionals   " + ", ".join(f"{name} ({n} per extracted utterance)" for name, n in s["functionals"].items())
           + f", opensmile {s['versions'].get('opensmile')}"] if s.get("functionals") else []),
        f"  segments      {s['segment_config']['frames']} frames, hop {s['segment_config']['hop']}"
        + (f"; class hops {b.get('hops')}" if b.get("balance") else ""),
        f"  augmentation  {b.get('augment') or 'none'}; balance {'on' if b.get('balance') else 'off'}; seed {b.get('seed')}",
        f"  utterances    {u['total']} in corpus, {u['selected']} selected, {u['extracted']} extracted, {u['failed']} failed; {u['hours']:.2f} h",
        "  classes       " + ", ".join(f"{c} {n}" for c, n in u["by_class"].items()),
        f"  speakers      {u['speakers']} in {u['sessions']} sessions; "
        + " / ".join(f"{g} {n}" for g, n in u["by_gender"].items()) + " utterances"
        + (f" ({UNKNOWN_GENDER} = gender unknown)" if UNKNOWN_GENDER in u["by_gender"] else ""),
        f"  dimensions    {_dimensions_text(s['dimensions'])}",
        f"  segment rows  {seg['total']} ({seg['original']} original, {seg['dense']} dense-hop, {seg['augmented']} augmented); {s['frames']} frames",
    ]
    if s["failures"]:
        lines.append(f"  skipped       {len(s['failures'])} (unreadable audio, or label lines that do not parse):")
        lines += [f"    {f['path']}: {f['error'].split(': ', 1)[-1] if f['error'].startswith(f['path']) else f['error']}"
                  for f in s["failures"]]
    lines.append(f"  warnings      {len(s['warnings'])}" + (":" if s["warnings"] else ""))
    lines += [f"    {w['path']}: {w['message']}" for w in s["warnings"]]
    for scheme, folds in s["folds"].items():
        classes = list(u["by_class"])
        lines.append(f"  folds {scheme} ({len(folds)}): training segments per class, before -> after balancing")
        for f in folds:
            c = f["counts"]
            pairs = ", ".join(f"{k} {c['before'].get(k, 0)}->{c['after'].get(k, 0)}" for k in classes)
            lines.append(
                f"    {f['fold']:>2}{' ' + f['label'] if f.get('label') else ''} test {_speakers_text(f['test_speakers'])}, "
                f"val {_speakers_text(f['validation_speakers'])}"
                f" | utts {f['utterances']['train']}/{f['utterances']['validation']}/{f['utterances']['test']} | {pairs}"
            )
    if b.get("fold_notes"):
        lines += [f"  note: {n}" for n in b["fold_notes"]]
    return "\n".join(lines)


def _protocol_text(p: dict[str, Any] | None) -> str:
    """``acrnn 1.0 (sha256 0123456789abcdef...): ACRNN (...)``, or how the store was built without one."""
    if not p:
        return "none (built without --protocol)"
    where = "" if p.get("built_in", True) else ", from a file"
    return f"{p['name']} {p['version']} (sha256 {p['sha256'][:16]}...{where}): {p.get('title', '')}"


def _protocol_note(p: dict[str, Any] | None) -> str | None:
    """A note when the built-in protocol of that name is no longer the file the store was
    built for (serprep shipped a new version since): results would name another protocol."""
    if not p or not p.get("built_in", True):
        return None
    from .errors import SerprepError
    from .protocol import load_protocol, protocol_names

    if p["name"] not in protocol_names():
        return f"note: this serprep has no built-in protocol {p['name']}"
    try:
        current = load_protocol(p["name"])
    except SerprepError:
        return None  # a broken bundled file is reported where it is loaded, not here
    if current.sha256 == p["sha256"]:
        return None
    return (f"note: this serprep's {current.name} is {current.version} (sha256 {current.sha256[:16]}...), "
            "not the file this store was built with")
