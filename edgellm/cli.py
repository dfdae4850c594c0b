"""The `edgellm` command. Each command parses options and calls one library verb; nothing else lives here.

Library imports happen inside the commands, so `edgellm run` works on a runtime-only install (no torch).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from edgellm import __version__
from edgellm.errors import EdgeLLMError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turns every EdgeLLMError into one line on stderr and exit status 1; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeLLMError as exc:
            click.echo(f"error ({type(exc).__name__}): {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgellm")
@click.option("-v", "--verbose", count=True, help="-v for progress logs, -vv for debug logs.")
def cli(verbose: int) -> None:
    """Distil, prune, quantize and export language models for edge devices, and run them."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@cli.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--task", required=True, type=click.Choice(["text-classification", "feature-extraction"]))
@click.option("--format", "formats", multiple=True, type=click.Choice(["onnx", "openvino"]),
              help="Formats to emit (repeatable). Default: onnx and openvino.")
@click.option("--max-length", type=int, default=None, help="Token limit (default: the model's own).")
@click.option("--atol", type=float, default=None, help="Max abs difference allowed vs torch (default 1e-4).")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at OUTPUT.")
def export_cmd(model: str, output: str, task: str, formats: tuple[str, ...], max_length: int | None,
               atol: float | None, overwrite: bool) -> None:
    """Export an existing Hugging Face encoder MODEL (folder, hub id, embedded:...) to an artifact."""
    from edgellm.exporting import FORMATS, export

    kwargs: dict[str, Any] = {"atol": atol} if atol is not None else {}
    manifest = export(model, output, task=task, formats=formats or FORMATS, max_length=max_length,
                      overwrite=overwrite, **kwargs)
    for entry in manifest.models:
        diff = entry.metrics.get("vs_torch", {}).get("max_abs_diff")
        click.echo(f"{entry.name:16s} {entry.path:22s} {entry.metrics.get('size_bytes', 0) / 1e6:8.1f} MB  "
                   f"max |diff| vs torch {diff:.2g}")
    click.echo(f"wrote {output}")


@cli.command("run")
@click.argument("artifact", type=click.Path())
@click.argument("texts", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--backend", default="auto", show_default=True, help="auto, onnxruntime or openvino.")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, npu, auto ...")
@click.option("--model", "model_name", default=None, help="A model name from the manifest.")
@click.option("--threads", type=int, default=None, help="Inference threads.")
@click.option("--top-k", type=int, default=1, show_default=True, help="Labels per text (classification).")
def run_cmd(artifact: str, texts: tuple[str, ...], as_json: bool, backend: str, device: str,
            model_name: str | None, threads: int | None, top_k: int) -> None:
    """Run ARTIFACT on TEXTS (or on lines of stdin when no TEXT or TEXT is '-')."""
    from edgellm.runtime import load

    items = list(texts)
    if not items or items == ["-"]:
        items = [line.rstrip("\n") for line in sys.stdin]
    model = load(artifact, backend=backend, device=device, model=model_name, threads=threads)
    if model.task == "text-classification":
        results = model.classify(items, top_k=top_k)
        if as_json:
            _echo_json([{"text": t, "result": r} for t, r in zip(items, results)])
        else:
            for text, res in zip(items, results):
                best = res if isinstance(res, dict) else res[0]
                click.echo(f"{best['label']}\t{best['score']:.4f}\t{text}")
    elif model.task == "feature-extraction":
        vectors = model.embed(items)
        if as_json:
            _echo_json([{"text": t, "embedding": v} for t, v in zip(items, vectors)])
        else:
            for text, vec in zip(items, vectors):
                head = " ".join(f"{x:+.4f}" for x in vec[:6])
                click.echo(f"[{head} ...] dim={len(vec)}\t{text}")
    else:
        raise click.UsageError("this artifact generates text: use `edgellm generate`")


@cli.command("inspect")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def inspect_cmd(artifact: str, as_json: bool) -> None:
    """Show what an artifact holds: task, labels, models, sizes, per-stage metrics."""
    from edgellm.artifact import read_manifest

    manifest = read_manifest(artifact)
    if as_json:
        _echo_json(manifest.to_dict())
        return
    click.echo(f"artifact      {artifact}")
    click.echo(f"task          {manifest.task}")
    if manifest.labels:
        click.echo(f"labels        {', '.join(manifest.labels)}")
    if manifest.pooling:
        click.echo(f"pooling       {manifest.pooling}{' + L2 normalise' if manifest.normalize else ''}")
    click.echo(f"max length    {manifest.max_length} tokens")
    click.echo(f"source        {manifest.source.get('model')} ({manifest.source.get('architecture')}, "
               f"{manifest.source.get('parameters', 0) / 1e6:.1f} M parameters)")
    click.echo(f"format        v{manifest.format_version}, edgellm {manifest.edgellm_version}, {manifest.created}")
    click.echo("models:")
    for entry in manifest.models:
        size = sum(manifest.files.get(f, {}).get("bytes", 0) for f in entry.files) / 1e6
        sha = manifest.files.get(entry.path, {}).get("sha256", "")[:12]
        mark = "*" if entry.name == manifest.default_model else " "
        target = f"  target={entry.target}" if entry.target else ""
        click.echo(f" {mark} {entry.name:22s} {entry.backend:12s} {entry.precision:5s} {size:8.1f} MB  "
                   f"{entry.path}  sha256 {sha}{target}")
    if manifest.metrics:
        click.echo("stages: " + ", ".join(manifest.metrics))


@cli.command("verify")
@click.argument("artifact", type=click.Path())
def verify_cmd(artifact: str) -> None:
    """Check every file of ARTIFACT against the sha256 in its manifest."""
    from edgellm.artifact import verify_artifact

    manifest = verify_artifact(artifact)
    click.echo(f"ok: {len(manifest.files)} files match their sha256 ({artifact})")


def main() -> None:
    cli(prog_name="edgellm")


if __name__ == "__main__":  # pragma: no cover
    main()
