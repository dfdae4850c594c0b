"""The `edgellm` command. Each command parses options and calls one library verb; nothing else lives here.

Library imports happen inside the commands, so `edgellm run` works on a runtime-only install (no torch).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from edgellm import __version__
from edgellm.config import jsonable
from edgellm.console import configure
from edgellm.errors import EdgeLLMError
from edgellm.recipe import DataConfig, DistillConfig, ExportConfig, PruneConfig, QuantizeConfig
from edgellm.runtime.generate import GenerationOptions  # numpy only: the generation defaults live there, once

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
@click.option("-v", "--verbose", count=True, help="-v: edgellm's progress logs; -vv: its debug logs, plus the "
              "third-party warnings, logs and progress displays that are hidden by default.")
def cli(verbose: int) -> None:
    """Distil, prune, quantize and export language models for edge devices, and run them."""
    configure(verbose)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=jsonable))


@cli.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--task", required=True, type=click.Choice(["text-classification", "feature-extraction"]))
@click.option("--format", "formats", multiple=True, type=click.Choice(["onnx", "openvino"]),
              help="Formats to emit (repeatable). Default: onnx and openvino.")
@click.option("--max-length", type=int, default=None, help="Token limit (default: the model's own).")
@click.option("--atol", type=float, default=None, help=f"Max abs difference allowed vs torch (default {ExportConfig.atol:g}).")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at OUTPUT.")
@click.option("--target", "targets", multiple=True,
              help="Also build one model for this device profile (repeatable; edgellm targets list). "
                   "With --target and no --format, only the targets' models are written.")
@click.option("--cls-only/--full-graph", default=True, show_default=True,
              help="BERT classifiers: run the last layer for the [CLS] position only (same logits, checked).")
def export_cmd(model: str, output: str, task: str, formats: tuple[str, ...], max_length: int | None,
               atol: float | None, overwrite: bool, targets: tuple[str, ...], cls_only: bool) -> None:
    """Export an existing Hugging Face encoder MODEL (folder, hub id, embedded:...) to an artifact."""
    from edgellm.exporting import export

    kwargs: dict[str, Any] = {"atol": atol} if atol is not None else {}
    manifest = export(model, output, task=task, formats=formats or None, max_length=max_length,
                      overwrite=overwrite, targets=targets, cls_only=cls_only, **kwargs)
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
@click.option("--device", default="auto", show_default=True,
              help="auto (the model's target chain, e.g. npu -> gpu -> cpu), or demand one: cpu, gpu, cuda, npu ...")
@click.option("--target", default=None,
              help="Run the model built for this target profile, or auto: the one whose device this machine has.")
@click.option("--strict", is_flag=True, help="With --device auto: fail instead of falling back to a lesser device.")
@click.option("--model", "model_name", default=None, help="A model name from the manifest.")
@click.option("--threads", type=int, default=None, help="Inference threads.")
@click.option("--top-k", type=int, default=1, show_default=True, help="Labels per text (classification).")
def run_cmd(artifact: str, texts: tuple[str, ...], as_json: bool, backend: str, device: str, target: str | None,
            strict: bool, model_name: str | None, threads: int | None, top_k: int) -> None:
    """Run ARTIFACT on TEXTS (or on lines of stdin when no TEXT or TEXT is '-')."""
    from edgellm.runtime import load

    items = list(texts)
    if not items or items == ["-"]:
        items = [line.rstrip("\n") for line in sys.stdin]
    model = load(artifact, backend=backend, device=device, model=model_name, target=target, strict=strict,
                 threads=threads)
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


@cli.command("generate")
@click.argument("artifact", type=click.Path())
@click.argument("prompt")
@click.option("--chat", is_flag=True, help="Send PROMPT as a user message through the tokenizer's chat template.")
@click.option("--system", default=None, help="With --chat: a system message first.")
@click.option("--max-new-tokens", type=int, default=GenerationOptions.max_new_tokens, show_default=True,
              help="Tokens to generate at most.")
@click.option("--temperature", type=float, default=GenerationOptions.temperature, show_default=True,
              help="0 = greedy; > 0 samples.")
@click.option("--top-k", type=int, default=GenerationOptions.top_k, show_default=True,
              help="Sample among the k most likely (0 = all).")
@click.option("--top-p", type=float, default=GenerationOptions.top_p, show_default=True,
              help="Nucleus sampling mass, in (0, 1].")
@click.option("--repetition-penalty", type=float, default=GenerationOptions.repetition_penalty, show_default=True,
              help="> 1 discourages repeats.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); not printed.")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--backend", default="auto", show_default=True, help="auto, onnxruntime or openvino.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, gpu, npu ...")
@click.option("--model", "model_name", default=None, help="A model name from the manifest.")
@click.option("--threads", type=int, default=None, help="Inference threads.")
def generate_cmd(artifact: str, prompt: str, chat: bool, system: str | None, max_new_tokens: int, temperature: float,
                 top_k: int, top_p: float, repetition_penalty: float, stop: tuple[str, ...], seed: int | None,
                 backend: str, device: str, model_name: str | None, threads: int | None) -> None:
    """Generate text from PROMPT ('-' reads stdin) with a text-generation ARTIFACT, streamed to the terminal."""
    from edgellm.runtime import load

    text = sys.stdin.read() if prompt == "-" else prompt
    model = load(artifact, backend=backend, device=device, model=model_name, threads=threads)
    if model.task != "text-generation":
        raise click.UsageError(f"this artifact is for {model.task}: use `edgellm run`")
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
               "repetition_penalty": repetition_penalty, "stop": list(stop), "seed": seed}
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        pieces = model.chat(messages, stream=True, **options)
    else:
        pieces = model.stream(text, **options)
    for piece in pieces:
        click.echo(piece, nl=False)
        sys.stdout.flush()
    click.echo()


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
    """Check every file of ARTIFACT against the sha256 in its manifest, and that ONNX external data stays inside."""
    from edgellm.artifact import verify_artifact

    manifest = verify_artifact(artifact)
    click.echo(f"ok: {len(manifest.files)} files match their sha256 and ONNX external data stays inside ({artifact})")


@cli.group("targets")
def targets_group() -> None:
    """Device profiles (targets/NAME.yaml): what a model built for each device looks like."""


@targets_group.command("list")
def targets_list_cmd() -> None:
    """One line per profile: backend, device chain, precision, INT8 preset, static shape."""
    from edgellm.targets import all_targets

    for p in all_targets():
        int8 = f"int8 {p.quantization.preset} ({p.quantization.mode})" if p.quantization else "no int8"
        shape = "x".join(map(str, p.static_shape)) if p.static_shape else "dynamic"
        click.echo(f"{p.name:18s} {p.backend:12s} {' > '.join(p.devices):16s} {p.precision:5s} {int8:30s} "
                   f"{shape:8s} {p.description}")


@targets_group.command("show")
@click.argument("name")
def targets_show_cmd(name: str) -> None:
    """Print profile NAME (a name from `edgellm targets list`, or a .yaml path) as JSON."""
    from edgellm.targets import load_target

    _echo_json(load_target(name).to_dict())


@cli.command("compress")
@click.argument("recipe", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--target", "targets", multiple=True, help="Device profile to add a model for (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe field, e.g. --set distill.epochs=1 (repeatable; values are YAML).")
@click.option("--work-dir", type=click.Path(), default=None, help="Stage outputs and checkpoints "
              "(default OUTPUT.work); a rerun skips finished stages.")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at OUTPUT.")
@click.option("--no-progress", is_flag=True, help="No progress bars (there are none when stderr is not a terminal).")
@click.option("--prune-work", is_flag=True, help="After publishing, delete the work folder's stage folders this run "
              "did not use (earlier recipes' outputs; about 1 GB each for an LLM).")
def compress_cmd(recipe: str, output: str, targets: tuple[str, ...], overrides: tuple[str, ...],
                 work_dir: str | None, overwrite: bool, no_progress: bool, prune_work: bool) -> None:
    """Run the whole pipeline in RECIPE (distil, prune, quantize, export) and write one artifact."""
    from edgellm.pipeline import compress
    from edgellm.recipe import load_recipe

    result = compress(load_recipe(recipe, overrides), output, targets=targets, work_dir=work_dir,
                      overwrite=overwrite, progress=not no_progress, echo=click.echo, prune_work=prune_work)
    click.echo("")
    click.echo(result.summary_markdown)


@cli.command("fit")
@click.argument("recipe", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Folder for the frontier (JSON, Markdown, PNG), the chosen plan.yaml and its artifact/.")
@click.option("--target", required=True, help="Device profile the plan is for (edgellm targets list).")
@click.option("--max-ms", type=float, default=None, help="p50 latency budget in ms (batch 1, --at-length tokens).")
@click.option("--at-length", type=int, default=None,
              help="Tokens of the latency budget (default: the recipe's evaluate.latency_length).")
@click.option("--max-mb", type=float, default=None, help="Size budget of the model files, MB.")
@click.option("--min-speedup", type=float, default=None,
              help="At least this many times faster than the FP32 PyTorch teacher, timed in the same run.")
@click.option("--min-shrink", type=float, default=None, help="At least this many times smaller than the teacher.")
@click.option("--max-drop", type=float, default=None, help="At most this many points below the teacher (validation).")
@click.option("--min-retention", type=float, default=None, help="At least this percentage of the teacher's score.")
@click.option("--budget-minutes", type=float, default=None, help="Wall-clock time for the search.")
@click.option("--space", multiple=True, metavar="AXIS=V1,V2",
              help="Search these values of an axis (repeatable): layers, heads, ffn, trim_vocab, engine, cls_only; "
                   "e.g. --space layers=2,3 --space engine=onnxruntime/dynamic.")
@click.option("--eta", type=int, default=3, show_default=True, help="Successive halving keeps the best 1/eta.")
@click.option("--rungs", type=int, default=2, show_default=True,
              help="Rungs of successive halving (1: every candidate trained fully).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe field (repeatable).")
@click.option("--work-dir", type=click.Path(), default=None,
              help="Stage outputs (default OUTPUT.work); a rerun resumes, reusing finished trials.")
@click.option("--overwrite", is_flag=True, help="Replace an existing fit output at OUTPUT.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def fit_cmd(recipe: str, output: str, target: str, space: tuple[str, ...], overrides: tuple[str, ...],
            work_dir: str | None, overwrite: bool, no_progress: bool, **budget: Any) -> None:
    """Search RECIPE's plans (depth, pruning, vocabulary, INT8 engine) for the one that meets a budget on TARGET."""
    from edgellm.errors import NoPlanError
    from edgellm.fit import FIT_FILES, fit
    from edgellm.recipe import load_recipe

    result = fit(load_recipe(recipe, overrides), target=target, output=output, space=list(space), work_dir=work_dir,
                 overwrite=overwrite, progress=not no_progress, echo=click.echo, **budget)
    click.echo("")
    click.echo((result.output / FIT_FILES["md"]).read_text(encoding="utf-8"))
    if not result.ok:
        raise NoPlanError(result.message, failed=result.failed, closest=result.closest, result=result)


@cli.command("distill")
@click.argument("teacher")
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder for the student (Hugging Face format).")
@click.option("--task", type=click.Choice(["text-classification", "feature-extraction"]), default="text-classification",
              show_default=True)
@click.option("--recipe", "recipe_path", default=None, type=click.Path(),
              help="Take data / finetune / distill from this recipe YAML (options given here override it).")
@click.option("--data", "data_name", default=None, help="Built-in data set (movie-reviews, tweets, ...).")
@click.option("--data-path", default=None, help="CSV / TSV / JSONL / text file, or a datasets save_to_disk folder.")
@click.option("--hf-dataset", default=None, help="Hugging Face dataset name (needs the datasets package).")
@click.option("--text-column", default=None, help=f"Text column (default: {DataConfig.text_column}).")
@click.option("--label-column", default=None, help=f"Label column (default: {DataConfig.label_column}).")
@click.option("--max-rows", type=int, default=None, help="Cap on data rows, for quick runs.")
@click.option("--max-length", type=int, default=None, help=f"Tokens per text in training (default {DataConfig.max_length}).")
@click.option("--layers", default=None, help="Teacher layers the student keeps, e.g. 0,2,4.")
@click.option("--num-layers", type=int, default=None, help=f"Student depth, layers evenly spaced (default {DistillConfig.num_layers}).")
@click.option("--ffn-size", type=int, default=None, help="Narrower FFN for the student (neurons kept by importance).")
@click.option("--epochs", type=float, default=None, help="Distillation epochs.")
@click.option("--teacher-epochs", type=float, default=None, help="Teacher fine-tuning epochs.")
@click.option("--augment-with", multiple=True, help="Extra unlabelled text for distillation (repeatable).")
@click.option("--no-finetune", is_flag=True, help="Use the teacher as it is (it must already have a matching head).")
@click.option("--work-dir", default=None, type=click.Path(), help="Checkpoints (default: OUTPUT.work); rerun to resume.")
@click.option("--overwrite", is_flag=True, help="Replace an existing student folder at OUTPUT.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def distill_cmd(teacher: str, output: str, task: str, recipe_path: str | None, data_name: str | None,
                data_path: str | None, hf_dataset: str | None, text_column: str | None, label_column: str | None,
                max_rows: int | None, max_length: int | None, layers: str | None, num_layers: int | None,
                ffn_size: int | None, epochs: float | None, teacher_epochs: float | None,
                augment_with: tuple[str, ...], no_finetune: bool, work_dir: str | None, overwrite: bool,
                quiet: bool) -> None:
    """Fine-tune TEACHER if it needs a head, distil a student from its layers, write it to OUTPUT."""
    from edgellm.config import from_dict, to_dict
    from edgellm.recipe import DataConfig, DistillConfig, FinetuneConfig, load_recipe
    from edgellm.train import train_student

    base: dict[str, Any] = {"data": {}, "finetune": {}, "distill": {}}
    if recipe_path:
        recipe = load_recipe(recipe_path)
        base = {"data": to_dict(recipe.data), "finetune": to_dict(recipe.finetune) or {"enabled": False},
                "distill": to_dict(recipe.distill) or {}}
    if data_name or data_path or hf_dataset:
        for key in ("name", "path", "hf_dataset"):
            base["data"].pop(key, None)
    try:
        layer_list = [int(x) for x in layers.split(",") if x.strip()] if layers else None
    except ValueError:
        raise click.BadParameter(f"give comma-separated layer indices such as 0,2,4, not {layers!r}") from None
    given = {
        "data": {"name": data_name, "path": data_path, "hf_dataset": hf_dataset, "text_column": text_column,
                 "label_column": label_column, "max_rows": max_rows, "max_length": max_length},
        "finetune": {"epochs": teacher_epochs, "enabled": False if no_finetune else None},
        "distill": {"layers": layer_list, "num_layers": None if layer_list else num_layers, "ffn_size": ffn_size,
                    "epochs": epochs, "augment_with": list(augment_with) or None},
    }
    for section, values in given.items():
        base[section].update({k: v for k, v in values.items() if v is not None})
    if layer_list:
        base["distill"]["num_layers"] = None
    metrics = train_student(
        teacher, output, task=task, data=from_dict(DataConfig, base["data"], "data"),
        finetune_config=from_dict(FinetuneConfig, base["finetune"], "finetune"),
        distill_config=from_dict(DistillConfig, base["distill"], "distill"),
        work_dir=work_dir, overwrite=overwrite, progress=not quiet)
    t, s = metrics["teacher"], metrics["student"]
    if task == "text-classification":
        ratio = s["test"]["accuracy"] / max(t["test"]["accuracy"], 1e-9) * 100
        click.echo(f"teacher  {t['size']['layers']} layers  {t['size']['parameters'] / 1e6:6.1f} M parameters  "
                   f"test accuracy {t['test']['accuracy']:.2f}")
        click.echo(f"student  {s['student']['layers']} layers  {s['student']['parameters'] / 1e6:6.1f} M parameters  "
                   f"test accuracy {s['test']['accuracy']:.2f} ({ratio:.1f}% of the teacher)")
    else:
        click.echo(f"student  {s['student']['layers']} layers  {s['student']['parameters'] / 1e6:6.1f} M parameters  "
                   f"test Spearman vs teacher {s['test']['spearman']:.4f}")
    click.echo(f"wrote {output} (metrics: training_metrics.json)")


@cli.command("prune")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder for the pruned model + prune_report.json.")
@click.option("--task", type=click.Choice(["text-classification", "feature-extraction", "text-generation"]),
              default=None, help="Default: read from the model's config.")
@click.option("--data", "data_name", default=None, help="Built-in data set (movie-reviews, tweets, ...).")
@click.option("--data-path", default=None, help="CSV / TSV / JSONL / text file, or a datasets save_to_disk folder.")
@click.option("--text-column", default=None, help=f"Text column of --data-path (default: {DataConfig.text_column}).")
@click.option("--label-column", default=None, help=f"Label column of --data-path (default: {DataConfig.label_column}).")
@click.option("--max-rows", type=int, default=None, help="Cap on data rows, for quick runs.")
@click.option("--heads", type=float, default=None, help="Fraction of attention heads (KV groups) to remove.")
@click.option("--ffn", type=float, default=None, help="Fraction of FFN neurons to remove.")
@click.option("--layers", type=float, default=None, help="Fraction of layers to remove.")
@click.option("--target-params", type=int, default=None, help="Parameter budget instead of --heads / --ffn.")
@click.option("--importance", type=click.Choice(["taylor", "magnitude"]), default=None,
              help=f"taylor (needs data) or magnitude (default {PruneConfig.importance}).")
@click.option("--sparsity", type=float, default=None, help="Unstructured magnitude sparsity of the block matrices.")
@click.option("--sparsity-scope", type=click.Choice(["global", "layer"]), default=None)
@click.option("--recovery-epochs", type=float, default=None, help="Distillation epochs after pruning (0 = none).")
@click.option("--overwrite", is_flag=True, help="Replace an existing folder at OUTPUT.")
def prune_cmd(model: str, output: str, task: str | None, data_name: str | None, data_path: str | None,
              text_column: str | None, label_column: str | None, max_rows: int | None, overwrite: bool,
              **options: Any) -> None:
    """Prune MODEL (heads, FFN neurons, layers; magnitude sparsity) into a Hugging Face folder OUTPUT."""
    from edgellm.config import from_dict
    from edgellm.prune import prune
    from edgellm.recipe import DataConfig, PruneConfig

    config = from_dict(PruneConfig, {k: v for k, v in options.items() if v is not None}, "prune")
    given = {"name": data_name, "path": data_path, "text_column": text_column, "label_column": label_column,
             "max_rows": max_rows}
    data = from_dict(DataConfig, {k: v for k, v in given.items() if v is not None}, "data")
    report = prune(model, output, config=config, data=data, task=task, overwrite=overwrite)
    before, after = report["before"], report["after"]
    click.echo(f"parameters   {before['parameters']:>14,} -> {after['parameters']:,}")
    click.echo(f"FLOPs/token  {before['flops_per_token']:>14,} -> {after['flops_per_token']:,} "
               f"(at {after['flops_seq_len']} tokens)")
    click.echo(f"layers       {before['layers']:>14} -> {after['layers']}")
    if report.get("sparsity"):
        click.echo(f"sparsity     {report['sparsity']['measured']:>14.1%} of block weights")
    metrics = report.get("metrics") or {}
    if metrics.get("before"):
        for key in ("accuracy", "perplexity", "spearman"):
            if key in metrics["before"] and key in metrics["after"]:
                click.echo(f"{key:12s} {metrics['before'][key]:>14.4g} -> {metrics['after'][key]:.4g} "
                           f"({metrics['split']})")
    click.echo(f"wrote {output} (report: prune_report.json)")


@cli.command("quantize")
@click.argument("artifact", type=click.Path())
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Artifact folder to write (default: ARTIFACT itself, which needs --overwrite).")
@click.option("--mode", type=click.Choice(["dynamic", "static", "weight-only"]), default=None,
              help=f"INT8 mode (default: {QuantizeConfig.mode}; OpenVINO makes NNCF static INT8 for dynamic).")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["onnxruntime", "openvino"]),
              help="Runtimes to make INT8 models for (repeatable; default: both).")
@click.option("--preset", default=None, help="CPU family / device preset: avx512-vnni, avx2, arm64, intel-npu, "
              "qnn-htp (default: this machine's).")
@click.option("--method", "calibration_method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default=None, help=f"Static calibration method (default: {QuantizeConfig.calibration_method}).")
@click.option("--samples", "calibration_samples", type=int, default=None, help=f"Calibration texts (default: {QuantizeConfig.calibration_samples}).")
@click.option("--tolerance", type=float, default=None,
              help="Max accuracy drop in points vs FP32 on validation; ops fall back to float until it holds.")
@click.option("--exclude", multiple=True, help="Node (ORT) / op (OpenVINO) name to keep in float (repeatable).")
@click.option("--per-channel/--per-tensor", default=None, help="Weight scales per output channel (default: preset).")
@click.option("--reduce-range/--full-range", default=None, help="7-bit weights (default: preset).")
@click.option("--no-embeddings", is_flag=True, help="Keep the embedding tables in float.")
@click.option("--fp16", is_flag=True, help="Also write an OpenVINO IR with FP16 weights.")
@click.option("--data", "data_name", default=None, help="Built-in data set (movie-reviews, tweets, ...); default: the "
              "data set the artifact records.")
@click.option("--data-path", default=None, help="CSV / TSV / JSONL / text file with the task's labelled texts.")
@click.option("--text-column", default=None, help=f"Text column of --data-path (default: {DataConfig.text_column}).")
@click.option("--label-column", default=None, help=f"Label column of --data-path (default: {DataConfig.label_column}).")
@click.option("--threads", type=int, default=None, help="Threads for evaluating the models.")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at OUTPUT (or ARTIFACT in place).")
def quantize_cmd(artifact: str, output: str | None, backends: tuple[str, ...], exclude: tuple[str, ...],
                 no_embeddings: bool, fp16: bool, data_name: str | None, data_path: str | None,
                 text_column: str | None, label_column: str | None, threads: int | None, overwrite: bool,
                 **options: Any) -> None:
    """Add INT8 models to the FP32 ARTIFACT, each evaluated on validation against FP32."""
    from edgellm.config import from_dict
    from edgellm.quantize import quantize
    from edgellm.recipe import DataConfig, QuantizeConfig

    given = {k: v for k, v in options.items() if v is not None}
    if backends:
        given["backends"] = list(backends)
    if exclude:
        given["exclude"] = list(exclude)
    if no_embeddings:
        given["quantize_embeddings"] = False
    if fp16:
        given["fp16"] = True
    config = from_dict(QuantizeConfig, given, "quantize")
    columns = {"name": data_name, "path": data_path, "text_column": text_column, "label_column": label_column}
    data = from_dict(DataConfig, {k: v for k, v in columns.items() if v is not None}, "data")
    manifest = quantize(artifact, output, config=config, data=None if data.empty else data, overwrite=overwrite,
                        threads=threads)
    record = manifest.metrics.get("quantize", {})
    metric = record.get("metric", "accuracy")
    for name, row in record.get("models", {}).items():
        fell = f"  {len(row['fell_back'])} op(s) kept in float" if row.get("fell_back") else ""
        click.echo(f"{name:18s} {row['mode'] or '':11s} {metric} {row['metric']:6.2f} (FP32 {row['metric_fp32']:6.2f}, "
                   f"drop {row['drop']:+.2f})  {row['size_bytes'] / 1e6:7.1f} MB ({row['size_vs_fp32']:.0%} of FP32)"
                   f"{fell}")
    click.echo(f"wrote {output or artifact} (default model: {manifest.default_model})")


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"give comma-separated integers such as 32,128, not {value!r}") from None


@cli.command("bench")
@click.argument("artifact", type=click.Path())
@click.option("--compare", multiple=True, type=click.Path(), help="Another artifact measured in the same run (repeatable).")
@click.option("--model", "models", multiple=True, help="Only this model entry of ARTIFACT (repeatable; default: all).")
@click.option("--teacher", default=None, help="Teacher folder for the baselines (default: the manifest's source model).")
@click.option("--no-baselines", is_flag=True, help="Leave out the teacher FP32 PyTorch and Optimum INT8 baselines.")
@click.option("--no-interleave", is_flag=True,
              help="Time one model after another, one loaded at a time (default: the ratios' timings in alternating "
                   "rounds with every model loaded).")
@click.option("--threads", type=int, default=None, help="Intra-op threads for every engine (default: physical cores).")
@click.option("--lengths", callback=_int_list, default=None, help="Padded input lengths in tokens, e.g. 32,128.")
@click.option("--batch-sizes", callback=_int_list, default=None, help="Throughput batch sizes, e.g. 8,32.")
@click.option("--repeat", type=int, default=None, help="Timed batch-1 calls per length.")
@click.option("--cold-runs", type=int, default=None, help="Fresh processes for cold start and peak memory (0: skip).")
@click.option("--max-examples", type=int, default=None, help="Cap on test sentences for accuracy.")
@click.option("--prompt-tokens", type=int, default=None, help="Generators: prompt length in tokens.")
@click.option("--new-tokens", type=int, default=None, help="Generators: tokens generated per run.")
@click.option("--peer", "peers", multiple=True,
              help="Generators: a peer engine measured in the same run (repeatable; the known names are "
                   "edgellm.bench.peers.ENGINES, listed by the error for any other; `make peers` installs them).")
@click.option("--name", default=None, help="Result name (default: the artifact folder's name).")
@click.option("--output-dir", default="bench/results", show_default=True, type=click.Path(),
              help="Where NAME.json, NAME.md and NAME.png go.")
def bench_cmd(artifact: str, compare: tuple[str, ...], models: tuple[str, ...], teacher: str | None,
              no_baselines: bool, no_interleave: bool, threads: int | None, lengths: list[int] | None,
              batch_sizes: list[int] | None, repeat: int | None, cold_runs: int | None, max_examples: int | None, prompt_tokens: int | None,
              new_tokens: int | None, peers: tuple[str, ...], name: str | None, output_dir: str) -> None:
    """Measure every model of ARTIFACT side by side with the teacher (and Optimum INT8): latency, throughput, cold
    start, peak memory, size, accuracy; for generators first-token time, tokens/s and perplexity."""
    import os
    import shlex
    from pathlib import Path

    from edgellm.bench import run_benchmark

    given = {"threads": threads, "lengths": lengths, "batch_sizes": batch_sizes, "repeat": repeat,
             "cold_runs": cold_runs, "max_examples": max_examples, "prompt_tokens": prompt_tokens,
             "new_tokens": new_tokens}
    settings: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if no_baselines:
        settings["baselines"] = False
    if no_interleave:
        settings["interleave"] = False
    if peers:
        settings["peers"] = list(peers)
    command = "edgellm " + shlex.join(sys.argv[1:]) if os.path.basename(sys.argv[0]) == "edgellm" else None
    result = run_benchmark(artifact, compare=compare, models=models or None, teacher=teacher, settings=settings,
                           name=name, output_dir=output_dir, command=command)
    click.echo(Path(result["paths"]["md"]).read_text(encoding="utf-8"))
    click.echo("wrote " + ", ".join(result["paths"].values()))


def main() -> None:
    cli(prog_name="edgellm")


if __name__ == "__main__":  # pragma: no cover
    main()
