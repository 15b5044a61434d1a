"""`bitnet` subcommands provided by bitnet-models."""

from __future__ import annotations

import argparse
import json
import os
import sys

from bitnet_quantization.command import Command


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="path to a .gguf file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-tensors", action="store_true", help="omit the per-tensor table")


def _inspect(args: argparse.Namespace) -> int:
    from bitnet_models.gguf import read_gguf
    from bitnet_models.inspect import format_text, summarize

    with read_gguf(args.model) as f:
        s = summarize(f)
    if args.json:
        json.dump(s, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_text(s, show_tensors=not args.no_tensors))
    return 0


def _settings(args: argparse.Namespace):
    from bitnet_models.settings import Settings

    return Settings.from_env(
        os.environ, cache_dir=getattr(args, "cache_dir", None), offline=getattr(args, "offline", None) or None
    )


def _models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    p.add_argument("--cache-dir", metavar="DIR", help="the model cache (default: BITNET_CACHE, else ~/.cache/bitnet)")


def _models(args: argparse.Namespace) -> int:
    from bitnet_models.discovery import list_models

    settings = _settings(args)
    listing = list_models(settings)
    strategy = settings.model_strategy.value
    if listing.found:
        would_use = {"source": listing.found[0].source, "path": str(listing.found[0].path)}
    elif strategy == "prefer_real" and not settings.strict_no_fake_gpu:
        would_use = {"source": "mock", "path": str(listing.mock)}
    else:
        would_use = None
    out = {
        "models_lock": str(listing.lock_path) if listing.lock_path else None,
        "cache_dir": str(settings.cache_dir),
        "strategy": strategy,
        "found": [
            {
                "source": m.source,
                "path": str(m.path),
                "size": m.path.stat().st_size,
                "lock_name": m.lock_entry.name if m.lock_entry else None,
                "tokenizer": str(m.tokenizer_path) if m.tokenizer_path else None,
            }
            for m in listing.found
        ],
        "missing": [
            {"name": e.name, "repo": e.repo, "file": e.file, "revision": e.revision, "size": e.size,
             "license": e.license}
            for e in listing.missing
        ],
        "would_use": would_use,
    }
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"models.lock: {out['models_lock'] or '(none found)'}")
    print(f"cache:       {out['cache_dir']}")
    print(f"strategy:    {strategy}")
    if out["found"]:
        print("found (the first is the one a run uses):")
        for i, m in enumerate(out["found"], 1):
            name = f" [{m['lock_name']}]" if m["lock_name"] else ""
            print(f"  {i}. {m['source']:<12} {m['path']}{name} ({m['size'] / 1e6:.1f} MB)")
    else:
        print("found:       no real model")
    if out["missing"]:
        print("in models.lock, not downloaded (get one with `bitnet download NAME`):")
        for e in out["missing"]:
            print(f"  {e['name']:<24} {e['repo']} {e['file']} ({e['size'] / 1e6:.1f} MB, {e['license']})")
    if would_use is None:
        print(f"a run would fail: no real model and the strategy ({strategy}) does not allow the mock model")
    elif would_use["source"] == "mock":
        print(f"a run would use the MOCK model {would_use['path']} (random weights), with a warning")
    else:
        print(f"a run would use: {would_use['path']} (from {would_use['source']})")
    return 0


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="NAME|REPO", help="a models.lock name, or a Hub repo (owner/name) with FILE")
    p.add_argument("file", metavar="FILE", nargs="?", help="the file in REPO (omit for a models.lock name)")
    p.add_argument("--revision", metavar="R", help="branch, tag or commit (default: the one models.lock pins, else main)")
    p.add_argument("--cache-dir", metavar="DIR", help="the model cache (default: BITNET_CACHE, else ~/.cache/bitnet)")
    p.add_argument("--offline", action="store_true", help="no network: only verify a file already in the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _download(args: argparse.Namespace) -> int:
    from bitnet_models.download import download_model

    settings = _settings(args)
    r = download_model(
        args.target, args.file, settings=settings, revision=args.revision, progress=not args.no_progress
    )
    state = "downloaded" if r.downloaded else "already in the cache"
    check = f", sha256 verified against models.lock ({r.entry.name})" if r.verified else ", not in models.lock: unverified"
    print(f"{state}{check}: {r.path}", file=sys.stderr)
    print(r.path)
    return 0


COMMANDS = {
    "inspect": Command("show a GGUF file's architecture, tokenizer and tensors", _inspect_args, _inspect),
    "models": Command("list the models discovery finds, where from, and the models.lock entries not downloaded",
                      _models_args, _models),
    "download": Command("download a models.lock model (or REPO FILE) from the Hugging Face Hub into the cache",
                        _download_args, _download),
}
