"""`edgellm compress RECIPE`: the whole pipeline from one recipe, cached and resumable stage by stage.

    from edgellm.pipeline import compress
    from edgellm.recipe import load_recipe
    result = compress(load_recipe("export/sentiment-minilm.yaml"), "artifacts/sentiment-minilm")
    print(result.summary_markdown)

Encoder tasks (text-classification, feature-extraction) run these stages, each skipped when null in the recipe:

    teacher   fine-tune a head on the teacher (or use its own head / the bare encoder)
    distill   student from the teacher's layers, trained on the teacher's outputs
    prune     structured pruning (+ recovery distillation from the unpruned student)
    vocab     vocabulary trimmed to the training text (export.trim_vocab)
    export    ONNX FP32 (+ OpenVINO IR) checked against torch, one extra model per device target
    quantize  INT8 twins, each evaluated on validation
    evaluate  test-split metrics, size and p50 latency of every stage, side by side

Each stage writes into `WORK/<stage>-<key>/`, where the key hashes the stage's config, its input stage's key, the
data split and the edgellm version. A finished stage leaves `stage.json` (with the sha256 of every file it wrote);
a rerun with the same recipe skips finished stages whose files are unchanged and resumes an interrupted one from
its checkpoints. The artifact itself is published atomically
at the end (`edgellm.artifact.staging`). Causal-LM recipes (text-generation) run the same cache through their
own stages (teacher, baseline, corpus, distill, prune, export, quantize, evaluate): `edgellm.pipeline_lm`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgellm._faults import fault_point, fault_scope
from edgellm._pause import TrainingPaused, pause_training
from edgellm.artifact import Manifest, atomic_write_text, check_output, read_manifest, staging, write_manifest
from edgellm.config import jsonable, to_dict
from edgellm.recipe import Recipe

__all__ = ["compress", "CompressResult", "StageCache", "EncoderStages", "ENCODER_STAGES", "load_encoder_data",
           "stage_key", "fingerprint_path", "render_summary",
           "SUMMARY_FILE", "default_work_dir"]

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"
STAGE_FILE = "stage.json"
_LATENCY_TEXTS = 16  # distinct texts cycled through in latency measurements


@dataclass
class StageRecord:
    name: str
    key: str
    folder: Path
    metrics: dict[str, Any]
    cached: bool
    seconds: float | None = None  # wall time of the run that produced the stage (also when reused from the cache)


@dataclass
class CompressResult:
    manifest: Manifest
    output: Path
    work_dir: Path
    summary: list[dict[str, Any]]
    stages: dict[str, StageRecord] = field(default_factory=dict)

    @property
    def summary_markdown(self) -> str:
        return render_summary(self.summary)


def default_work_dir(output: str | os.PathLike[str]) -> Path:
    """Where stage outputs and checkpoints go unless told otherwise: `<output>.work` beside the artifact."""
    out = Path(output)
    return out.with_name(out.name + ".work")


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """sha256 over the relative names and contents of a file or folder (a hub id hashes as its name)."""
    p = Path(path)
    h = hashlib.sha256()
    if not p.exists():
        h.update(str(path).encode())
        return h.hexdigest()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    from edgellm.artifact import sha256_file

    for f in files:
        rel = f.name if p.is_file() else f.relative_to(p).as_posix()
        h.update(f"{rel}\t{sha256_file(f)}\n".encode())
    return h.hexdigest()


# Bumped when a stage's code changes what it writes for the same inputs, so that reruns do not reuse stale output
# (1 adds nothing to the key, which keeps work folders made before revisions existed valid).
# export 2: a BERT classifier's last layer at [CLS] only; quantize 2: bias folded into the INT8 MatMuls;
# evaluate 2: the artifact's models timed in alternating rounds, a pause before each turn; 3: a decoder artifact's
# default model chosen by its measured decode speed.
STAGE_REVISIONS = {"export": 2, "quantize": 2, "evaluate": 3}


def stage_key(material: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of everything a stage's output depends on."""
    text = json.dumps(material, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageCache:
    """Runs stages into `root/<name>-<key>/`; a folder holding stage.json is a finished stage and is reused."""

    def __init__(self, root: Path, echo: Callable[[str], None]) -> None:
        self.root = root
        self.echo = echo
        self.root.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, material: dict[str, Any], fn: Callable[[Path], dict[str, Any]], *,
            measure: Callable[[Path], dict[str, Any]] | None = None, defer: bool = False) -> StageRecord:
        """Run `fn(folder)` unless the stage is finished; its metrics go into the stage's record.

        `measure(folder)`: more metrics of the finished output (test-split numbers, latency) that are not part of
        what the stage makes. With `defer` they are left for later: the record says `deferred`, and the first run
        of the same stage without `defer` measures them into it (the output is reused, not made again). `edgellm
        fit` defers them so that only the chosen plan is ever measured on the test split.

        A run paused part-way (edgellm._pause) raises TrainingPaused with the stage's name, key and folder set.
        """
        revision = STAGE_REVISIONS.get(name, 1)
        key = stage_key({"stage": name, **material, **({"revision": revision} if revision > 1 else {})})
        folder = self.root / f"{name}-{key}"
        done = folder / STAGE_FILE
        record = self._finished(name, folder)
        if record is not None:
            self.echo(f"[{name}] unchanged since {record.get('finished', '?')}: reusing {folder}")
            metrics = record.get("metrics", {})
            if record.get("deferred") and measure is not None and not defer:
                metrics = {**metrics, **measure(folder)}
                record = {k: v for k, v in record.items() if k != "deferred"}
                record["metrics"] = metrics
                atomic_write_text(done, json.dumps(record, indent=2, default=jsonable))
                headline = stage_headline(metrics)
                self.echo(f"[{name}] measured now" + (f": {headline}" if headline else ""))
            return StageRecord(name, key, folder, metrics, cached=True, seconds=record.get("seconds"))
        resumed = folder.exists() and any(folder.iterdir())
        folder.mkdir(parents=True, exist_ok=True)
        self.echo(f"[{name}] {'resuming' if resumed else 'running'} in {folder}")
        started = time.perf_counter()
        with fault_scope(name):
            try:
                metrics = fn(folder)
            except TrainingPaused as paused:
                paused.stage, paused.key, paused.folder = name, key, folder
                self.echo(f"[{name}] paused at step {paused.step} of {paused.total} after "
                          f"{time.perf_counter() - started:.0f} s" +
                          (f": validation {paused.metric} {paused.score:.2f}" if paused.score is not None else ""))
                raise
            deferred = measure is not None and defer
            if measure is not None and not defer:
                metrics = {**metrics, **measure(folder)}
            seconds = time.perf_counter() - started
            record = {"stage": name, "key": key, "material": material, "metrics": metrics, "seconds": seconds,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": _stage_files(folder),
                      **({"deferred": True} if deferred else {})}
            fault_point("done")
            atomic_write_text(done, json.dumps(record, indent=2, default=jsonable))
        headline = stage_headline(metrics)
        self.echo(f"[{name}] done in {seconds:.0f} s" + (f": {headline}" if headline else ""))
        return StageRecord(name, key, folder, metrics, cached=False, seconds=seconds)

    def _finished(self, name: str, folder: Path) -> dict[str, Any] | None:
        """The stage.json record of a finished stage whose output files are as it left them, else None.

        An unreadable record, or outputs changed or removed since, make the stage run again from an empty folder
        (the folder is the pipeline's own, inside the work folder)."""
        done = folder / STAGE_FILE
        if not done.is_file():
            return None
        try:
            record = json.loads(done.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            problem = f"{STAGE_FILE} is unreadable"
        elif "files" in record and record["files"] != _stage_files(folder):
            problem = "its output files changed after it finished"
        else:
            return record
        self.echo(f"[{name}] {problem}: running it again in {folder}")
        shutil.rmtree(folder)
        return None


def stage_headline(metrics: dict[str, Any]) -> str:
    """The key number of a stage's metrics for its "done" line (empty when it has none)."""
    def pick(m: dict[str, Any]) -> str:
        test = m.get("test") if isinstance(m.get("test"), dict) else {}
        if "accuracy" in test:
            return f"test accuracy {test['accuracy']:.2f} %"
        if "spearman" in test:
            return f"test Spearman vs teacher {test['spearman']:.4f}"
        if "perplexity_out_of_domain" in m:
            sources = m.get("perplexity_out_of_domain_by_source") or {}
            return (f"perplexity in-domain {m['perplexity_in_domain']:.2f}, out-of-domain "
                    f"{m['perplexity_out_of_domain']:.2f}" + (" (" + ", ".join(
                        f"{name} {ppl:.2f}" for name, ppl in sources.items()) + ")" if len(sources) > 1 else ""))
        if "tokens" in m and "texts" in m:
            return f"{m['texts']} texts, {m['tokens']} tokens"
        return ""

    found = pick(metrics)
    if found:
        return found
    models = metrics.get("models", metrics)  # per-model records (export, quantize, evaluate)
    parts = [f"{name} {text}" for name, m in models.items() if isinstance(m, dict) and (text := pick(m))]
    return "; ".join(parts[:3]) + (f" (+{len(parts) - 3} more)" if len(parts) > 3 else "")


def _stage_files(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file a stage left in its folder (stage.json and the temporary files of its
    atomic writes excepted: a killed writer's one is removed by the next write)."""
    from edgellm.artifact import sha256_file

    return {f.relative_to(folder).as_posix(): sha256_file(f)
            for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != STAGE_FILE and not f.name.startswith(f".{STAGE_FILE}.")}


# --- the pipeline ---------------------------------------------------------------------------------------------------

def compress(
    recipe: Recipe,
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    targets: Sequence[str] = (),
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    prune_work: bool = False,
) -> CompressResult:
    """Run `recipe` and publish the artifact at `output`.

    Args:
        targets: device profiles added to the recipe's own `targets` (one extra model each).
        work_dir: stage outputs and checkpoints (default `<output>.work`); rerunning reuses finished stages.
        echo: receives one line per stage event (the CLI prints them); logging gets them too.
        prune_work: once the artifact is published, delete the work folder's stage folders this run did not use
            (earlier recipes' stages, unfinished ones): `prune_work_dir`.
    """
    say = _echo(echo)
    out = check_output(output, overwrite=overwrite)  # refuse early, before hours of training
    work = Path(work_dir) if work_dir else default_work_dir(out)
    all_targets = list(dict.fromkeys([*recipe.targets, *targets]))
    if all_targets:
        from edgellm.targets import load_target

        for name in all_targets:
            load_target(name)  # an unknown target fails now, not after training
    _check_text_sources(recipe)
    if recipe.task == "text-generation":
        # imported here: pipeline_lm builds on this module (StageCache, publishing)
        from edgellm.pipeline_lm import compress_causal_lm

        result = compress_causal_lm(recipe, out, work, all_targets, overwrite=overwrite, progress=progress, say=say)
    else:
        result = _compress_encoder(recipe, out, work, all_targets, overwrite=overwrite, progress=progress, say=say)
    if prune_work:
        removed, freed = prune_work_dir(work, keep=[r.folder for r in result.stages.values()])
        say(f"[prune-work] removed {len(removed)} stage folder(s) this run did not use: {freed / 1e9:.2f} GB freed")
    return result


_STAGE_FOLDER = re.compile(r"(\.?)([a-z][a-z-]*-[0-9a-f]{16})(\.pruning)?")  # a stage, or one a prune was removing


def prune_work_dir(work: str | os.PathLike[str], keep: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], int]:
    """Delete the stage folders (`<stage>-<16 hex key>`) directly in `work` except those in `keep`, as
    (folders removed, bytes freed). Anything else in `work` (files, other folders) is left alone: only what
    StageCache made is removed. Each folder is renamed aside first, so an interrupted prune leaves no stage folder
    half-deleted under its own name (a stage folder without its stage.json would be re-run, not trusted)."""
    root = Path(work)
    kept = {Path(k).resolve() for k in keep}
    removed: list[Path] = []
    freed = 0
    if not root.is_dir():
        return removed, freed
    for folder in sorted(root.iterdir()):
        match = _STAGE_FOLDER.fullmatch(folder.name)
        if not (match and folder.is_dir() and not folder.is_symlink()) or bool(match[1]) != bool(match[3]):
            continue
        if folder.resolve() in kept:
            continue
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
        doomed = folder if match[3] else folder.with_name(f".{folder.name}.pruning")
        if doomed != folder:
            folder.rename(doomed)
        shutil.rmtree(doomed)
        removed.append(root / match[2])
        freed += size
    return removed, freed


def _echo(echo: Callable[[str], None] | None) -> Callable[[str], None]:
    def say(line: str) -> None:
        if echo is not None:
            echo(line)
            log.debug(line)  # the caller shows it; logging it at INFO too would print it twice under -v
        else:
            log.info(line)

    return say


def _check_text_sources(recipe: Recipe) -> None:
    """Every extra-text source the stages will read exists now (a typo fails before training, not after it)."""
    from edgellm.data import check_text_source

    fields = [("distill.augment_with", recipe.distill.augment_with if recipe.distill else []),
              ("export.vocab_texts", recipe.export.vocab_texts)]
    for field_name, sources in fields:
        for i, source in enumerate(sources):
            check_text_source(source, f"recipe.{field_name}[{i}]")


def load_encoder_data(recipe: Recipe, say: Callable[[str], None]) -> Any:
    """The task's data (seeded split) with the teacher tokenizer's coverage of the training text, and its [data]
    line: known now, not after hours of training, how much of the text the teacher's vocabulary cannot read."""
    from edgellm.data import load_task_data
    from edgellm.models import load_tokenizer
    from edgellm.vocab import text_coverage

    _check_architecture(recipe)
    data = load_task_data(recipe.data, task=recipe.task)
    data.coverage = {"tokenizer": recipe.teacher, "split": "train",
                     **text_coverage(load_tokenizer(recipe.teacher), data.train.texts,
                                     extending=recipe.finetune is not None and recipe.finetune.extend_vocab is not None)}
    described = data.describe()
    say(f"[data] {described['source'].get('name') or described['source'].get('path')}: "
        f"{described['split']['sizes']} rows (seed {data.split.seed}), labels {data.labels}; "
        f"{data.coverage['unknown_rate']:.1%} of the training tokens unknown to the teacher's tokenizer"
        + (" (see the warning)" if "warning" in data.coverage else " (extended before fine-tuning)"
           if "note" in data.coverage else ""))
    return data


ENCODER_STAGES = ("teacher", "distill", "prune", "vocab", "export", "quantize", "evaluate")


class EncoderStages:
    """The encoder pipeline of one recipe on one data split, stage by stage through a StageCache.

        stages = EncoderStages(recipe, data, StageCache(work, say))
        stages.run()                          # every stage, as `edgellm compress` does
        stages.publish(out)                   # summary + the artifact

    `run(until=..., pause=...)` stops after a stage, or pauses a stage's training part-way (edgellm._pause);
    `defer=True` leaves the torch stages' test-split metrics and latency for a later run of the same stages
    (StageCache.run's `measure`): `edgellm fit` builds many recipes' stages this way and measures only the chosen
    one on the test split. Recipes that differ only in later stages share the earlier stages' folders.
    """

    def __init__(self, recipe: Recipe, data: Any, cache: StageCache, targets: Sequence[str] = (), *,
                 progress: bool = True, defer: bool = False) -> None:
        from edgellm import __version__

        self.recipe, self.data, self.cache = recipe, data, cache
        self.targets = list(targets)
        self.progress, self.defer = progress, defer
        self.base = {"edgellm": __version__, "task": recipe.task, "data": data.describe()["split"]["sha256"],
                     "labels": data.labels, "max_length": data.max_length}
        self.stages: dict[str, StageRecord] = {}

    @property
    def teacher_folder(self) -> Path:
        return self.stages["teacher"].folder / "model"

    def run(self, until: str | None = None, *, pause: dict[str, float] | None = None) -> dict[str, StageRecord]:
        """Run the recipe's stages in order, up to and including `until` (default: all); `pause` maps a stage name
        to the share of its training to run now (TrainingPaused is raised there). Returns the stage records."""
        from edgellm.config import to_dict
        from edgellm.models import resolve_model
        from edgellm.runtime.tasks import BATCHING  # scores taken through the runtime depend on its batching

        if until is not None and until not in ENCODER_STAGES:
            raise ValueError(f"until = {until!r} is not one of {ENCODER_STAGES}")
        last = ENCODER_STAGES.index(until) if until else len(ENCODER_STAGES) - 1
        recipe, data, base, pause = self.recipe, self.data, self.base, pause or {}

        def step(name: str, material: dict[str, Any], fn: Callable[[Path], dict[str, Any]],
                 measure: Callable[[Path], dict[str, Any]] | None = None) -> StageRecord | None:
            if ENCODER_STAGES.index(name) > last:
                return None
            with pause_training(pause.get(name)):
                self.stages[name] = record = self.cache.run(name, {**base, **material}, fn, measure=measure,
                                                            defer=self.defer)
            return record

        evaluate = to_dict(recipe.evaluate)
        teacher_path = resolve_model(recipe.teacher)
        current = step("teacher", {"teacher": recipe.teacher, "files": fingerprint_path(teacher_path),
                                   "finetune": _finetune_material(recipe), "evaluate": evaluate},
                       lambda folder: _teacher_stage(recipe, data, folder, self.progress),
                       lambda folder: _torch_metrics(recipe, data, folder / "model"))
        teacher_folder = self.teacher_folder
        if recipe.distill is not None and current is not None:
            current = step("distill", {"input": current.key, "distill": to_dict(recipe.distill), "evaluate": evaluate},
                           lambda folder: _distill_stage(recipe, data, teacher_folder, folder, self.progress),
                           lambda folder: _torch_metrics(recipe, data, folder / "model",
                                                         teacher=_load_teacher(recipe, teacher_folder)))
        later = lambda folder: _torch_metrics(recipe, data, folder / "model",  # noqa: E731
                                              teacher=_embedding_teacher(recipe, teacher_folder))
        if recipe.prune is not None and current is not None:
            source = current.folder / "model"
            current = step("prune", {"input": current.key, "prune": to_dict(recipe.prune),
                                     "distill": to_dict(recipe.distill), "evaluate": evaluate},
                           lambda folder: _prune_stage(recipe, data, source, folder, self.progress), later)
        if recipe.export.trim_vocab and current is not None:
            source = current.folder / "model"
            current = step("vocab", {"input": current.key, "evaluate": evaluate,
                                     "vocab_texts": recipe.export.vocab_texts},
                           lambda folder: _vocab_stage(recipe, data, source, folder), later)
        if current is not None:
            model_folder = current.folder / "model"
            current = step("export", {"input": current.key, "export": to_dict(recipe.export),
                                      "targets": self.targets},
                           lambda folder: _export_stage(recipe, data, model_folder, self.targets, folder))
        if recipe.quantize is not None and recipe.quantize.mode != "none" and current is not None:
            source = current.folder / "artifact"
            current = step("quantize", {"input": current.key, "quantize": to_dict(recipe.quantize),
                                        "threads": recipe.evaluate.threads, "batching": BATCHING},
                           lambda folder: _quantize_stage(recipe, data, source, folder))
        if current is not None:
            source = current.folder / "artifact"
            step("evaluate", {"input": current.key, "evaluate": evaluate, "batching": BATCHING},
                 lambda folder: _evaluate_stage(recipe, data, source, folder, teacher_folder))
        return self.stages

    @property
    def artifact(self) -> Path:
        """The artifact folder of the last stage run that has one (export, quantize or evaluate)."""
        for name in ("evaluate", "quantize", "export"):
            if name in self.stages:
                return self.stages[name].folder / "artifact"
        raise ValueError("no stage with an artifact has run yet")

    def publish(self, out: Path, *, overwrite: bool) -> CompressResult:
        """The summary of every stage run and the artifact at `out` (atomically); run() must have run them all."""
        summary = _summary_rows(self.stages, read_manifest(self.artifact))
        manifest = _publish(self.recipe, self.data, self.artifact, out, self.stages, summary, overwrite=overwrite)
        return CompressResult(manifest=manifest, output=out, work_dir=self.cache.root, summary=summary,
                              stages=dict(self.stages))


def _compress_encoder(recipe: Recipe, out: Path, work: Path, targets: list[str], *, overwrite: bool,
                      progress: bool, say: Callable[[str], None]) -> CompressResult:
    data = load_encoder_data(recipe, say)
    stages = EncoderStages(recipe, data, StageCache(work, say), targets, progress=progress)
    stages.run()
    extension = vocab_extension(stages.stages)
    if extension is not None:
        say(f"[teacher] {extension_line(extension)}")
    result = stages.publish(out, overwrite=overwrite)
    say(f"wrote {out} (default model {result.manifest.default_model}); stage outputs kept in {work}")
    return result


def _check_architecture(recipe: Recipe) -> None:
    """Every stage the recipe runs handles the teacher's architecture (edgellm.families) and, with trim_vocab, its
    tokenizer model: refused now, naming the architecture and the stage, not after hours of training."""
    from transformers import AutoConfig

    from edgellm.families import require, stages_for_recipe
    from edgellm.models import load_tokenizer, resolve_model

    path = resolve_model(recipe.teacher)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception:  # noqa: BLE001 - the teacher stage names a folder that is not a model, with its own error
        return
    for stage in stages_for_recipe(recipe):
        require(config, stage)
    if recipe.export.trim_vocab:
        from edgellm.vocab import check_trimmable

        check_trimmable(load_tokenizer(path))


def _finetune_material(recipe: Recipe) -> dict[str, Any] | None:
    """The teacher stage's finetune settings for its key; extend_vocab only when set, so that work folders made
    before the option existed keep their keys."""
    material = to_dict(recipe.finetune)
    if isinstance(material, dict) and material.get("extend_vocab") is None:
        material.pop("extend_vocab", None)
    return material


# --- stages (each returns its metrics and leaves its output in `folder`) ------------------------------------------

def _teacher_stage(recipe: Recipe, data: Any, folder: Path, progress: bool) -> dict[str, Any]:
    from edgellm.recipe import FinetuneConfig
    from edgellm.train import finetune

    config = recipe.finetune or FinetuneConfig(enabled=False)
    tm = finetune(recipe.teacher, data, config, folder, progress=progress)
    model_dir = folder / "model"
    if not (model_dir / "config.json").is_file():  # finetune saves only what it trained
        tm.save(model_dir, overwrite=True)
    return {"training": tm.metrics}


def _distill_stage(recipe: Recipe, data: Any, teacher_folder: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from edgellm.train import distill, load_model

    teacher = load_model(teacher_folder, task=recipe.task)
    student = distill(teacher, data, recipe.distill, folder, progress=progress)
    student.save(folder / "model", overwrite=True)
    return {"training": student.metrics}


def _load_teacher(recipe: Recipe, teacher_folder: Path) -> Any:
    from edgellm.train import load_model

    return load_model(teacher_folder, task=recipe.task)


def _prune_stage(recipe: Recipe, data: Any, source: Path, folder: Path, progress: bool) -> dict[str, Any]:
    from edgellm.prune import prune
    from edgellm.recipe import DistillConfig

    report = prune(source, folder / "model", config=recipe.prune, data=data, task=recipe.task,
                   distill=recipe.distill or DistillConfig(), work_dir=folder / "work", overwrite=True,
                   progress=progress)
    return {"report": report}


def _embedding_teacher(recipe: Recipe, teacher_folder: Path) -> Any:
    """The teacher embedding models are judged against (None for classification: labels judge those)."""
    if recipe.task != "feature-extraction":
        return None
    from edgellm.train import load_model

    return load_model(teacher_folder, task=recipe.task)


def _vocab_stage(recipe: Recipe, data: Any, source: Path, folder: Path) -> dict[str, Any]:
    import dataclasses

    from edgellm.train import load_model
    from edgellm.vocab import trim_vocabulary

    from edgellm.data import load_texts

    tm = load_model(source, task=recipe.task)
    texts = list(data.train.texts)
    held_out = set(data.validation.texts) | set(data.test.texts)  # never let evaluation text choose the tokens
    for name in recipe.export.vocab_texts:  # more text of the domain: its words keep their own tokens
        texts += [t for t in load_texts(name) if t not in held_out]
    result = trim_vocabulary(tm.model, tm.tokenizer, texts, held_out=data.validation.texts)
    trimmed = dataclasses.replace(tm, model=result.model, tokenizer=result.tokenizer)
    trimmed.save(folder / "model", overwrite=True, metrics={"vocab": result.report})
    return {"report": result.report}


def _export_stage(recipe: Recipe, data: Any, model_folder: Path, targets: list[str], folder: Path) -> dict[str, Any]:
    from edgellm.exporting import encoder_manifest, write_encoder_models
    from edgellm.exporting.target import export_for_target
    from edgellm.models import default_max_length
    from edgellm.train import load_model

    tm = load_model(model_folder, task=recipe.task)
    max_length = recipe.export.max_length or default_max_length(tm.model, tm.tokenizer, str(model_folder))
    texts = _check_texts(data)
    artifact = _fresh(folder / "artifact")
    tm.tokenizer.backend_tokenizer.save(str(artifact / "tokenizer.json"))
    entries = write_encoder_models(tm.model, tm.tokenizer, artifact, task=recipe.task, max_length=max_length,
                                   formats=recipe.export.formats, texts=texts, atol=recipe.export.atol,
                                   cls_only=recipe.export.cls_only)
    for target in targets:
        entries += export_for_target(tm.model, tm.tokenizer, artifact, target, task=recipe.task,
                                     max_length=max_length, texts=texts, atol=recipe.export.atol,
                                     cls_only=recipe.export.cls_only)
    manifest = encoder_manifest(tm.model, task=recipe.task, models=entries, max_length=max_length,
                                source=recipe.teacher, embedding=tm.embedding)
    if recipe.task == "text-classification":
        manifest.labels = list(tm.labels or manifest.labels or [])
    manifest.metrics["export"] = {e.name: e.metrics for e in entries}
    write_manifest(artifact, manifest)
    return {e.name: e.metrics for e in entries}


def _check_texts(data: Any, count: int = 64) -> list[str]:
    """Real task text for checking exports against torch: validation sentences (train when there are none)."""
    texts = list(data.validation.texts[:count]) or list(data.train.texts[:count])
    return texts if texts else ["a sentence"]


def _quantize_stage(recipe: Recipe, data: Any, source: Path, folder: Path) -> dict[str, Any]:
    from edgellm.quantize import quantize_models

    artifact = _copy_artifact(source, folder / "artifact")
    manifest = read_manifest(artifact)
    # Calibration uses the task's own training texts, whose coverage was reported when the data was read.
    quantize_models(artifact, manifest, config=recipe.quantize, data=data, threads=recipe.evaluate.threads,
                    own_texts=True)
    write_manifest(artifact, manifest)
    return dict(manifest.metrics.get("quantize", {}))


def _evaluate_stage(recipe: Recipe, data: Any, source: Path, folder: Path, teacher_folder: Path) -> dict[str, Any]:
    """Test-split metric, size and latency of every model in the artifact, through the runtime; the latencies of
    all of them timed in the same alternating rounds (`_runtime_latency`).

    Classifiers: accuracy and macro-F1 on the test split. Embedders: Spearman of their test-pair similarities
    against the teacher's (PyTorch) embeddings.
    """
    from edgellm.runtime import load

    artifact = _copy_artifact(source, folder / "artifact")
    manifest = read_manifest(artifact)
    results: dict[str, Any] = {}
    reference = _teacher_vectors(teacher_folder, data.test.texts, recipe) if recipe.task == "feature-extraction" \
        else None
    loaded: dict[str, Any] = {}
    for entry in manifest.models:
        model = loaded[entry.name] = load(artifact, model=entry.name, threads=recipe.evaluate.threads, verify=False,
                                          device="auto")
        size = sum((artifact / f).stat().st_size for f in entry.files)
        record: dict[str, Any] = {"size_bytes": size, "device": model.describe().get("device")}
        if recipe.task == "text-classification":
            from edgellm.evaluate import evaluate_classifier

            record["test"] = evaluate_classifier(model, data.test.texts, data.test.labels)
        else:
            record["test"] = _embedding_test(model.embed(data.test.texts), reference, data)
        entry.metrics["test"] = record["test"]
        results[entry.name] = record
    if recipe.evaluate.latency:
        for name, latency in _runtime_latency(loaded, data, recipe).items():
            results[name]["latency"] = manifest.model(name).metrics["latency"] = latency
    write_manifest(artifact, manifest)
    return results


def _teacher_vectors(teacher_folder: Path, texts: Sequence[str], recipe: Recipe) -> Any:
    """The teacher's pooled (and, as configured, normalised) sentence embeddings, in PyTorch FP32."""
    import numpy as np
    import torch

    from edgellm.train import load_model
    from edgellm.train.losses import mean_pool

    tm = load_model(teacher_folder, task="feature-extraction")
    pooling = (tm.embedding or {}).get("pooling", "mean")
    normalize = bool((tm.embedding or {}).get("normalize", False))
    length = recipe.export.max_length or 512
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            enc = tm.tokenizer(list(texts[start:start + 64]), padding=True, truncation=True, max_length=length,
                               return_tensors="pt")
            hidden = tm.model(**enc).last_hidden_state
            pooled = hidden[:, 0] if pooling == "cls" else mean_pool(hidden, enc["attention_mask"])
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=1)
            out.append(pooled.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _embedding_test(vectors: Any, reference: Any, data: Any) -> dict[str, Any]:
    from edgellm.evaluate import AGREEMENT_PAIRS, embedding_agreement, sentence_pairs

    pairs = sentence_pairs(len(vectors), AGREEMENT_PAIRS, data.split.seed)
    return embedding_agreement(reference, vectors, pairs)


# --- measurements ---------------------------------------------------------------------------------------------------

def _latency_texts(tokenizer: Any, data: Any, length: int, split: str = "test") -> tuple[list[str], list[str]]:
    """(texts of exactly `length` tokens, real sentences of `split`) for latency measurements."""
    from edgellm.bench import texts_of_length

    real = list(getattr(data, split).texts[:_LATENCY_TEXTS]) or list(data.train.texts[:_LATENCY_TEXTS])
    padded = texts_of_length(tokenizer, real, length, _LATENCY_TEXTS)
    return padded, real


def batch1_call(model: Any, texts: Sequence[str]) -> Callable[[], Any]:
    """One runtime model (classifier or embedder) at batch 1, cycling through `texts`."""
    from edgellm.bench.stats import cycling

    call = model.scores if hasattr(model, "scores") else model.embed
    return cycling(lambda text: call([text]), texts)


def _runtime_latency(models: dict[str, Any], data: Any, recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Batch-1 p50 of every runtime model (name -> loaded model) at `evaluate.latency_length` tokens and on real test
    sentences, all of them timed in the same alternating rounds (`edgellm.bench.time_interleaved`), so that their
    ratios hold on a machine whose speed drifts."""
    from edgellm.bench import time_interleaved

    out: dict[str, dict[str, Any]] = {}
    padded_calls, real_calls = {}, {}
    for name, model in models.items():
        length = min(recipe.evaluate.latency_length, model.manifest.max_length)
        padded, real = _latency_texts(model.encoder.tokenizer, data, length)
        padded_calls[name], real_calls[name] = batch1_call(model, padded), batch1_call(model, real)
        out[name] = {"tokens": length, "batch": 1, "threads": recipe.evaluate.threads,
                     "timing": f"{len(models)} models in alternating rounds"}
    repeat = recipe.evaluate.repeat
    for key, calls in (("p50_ms_{tokens}", padded_calls), ("p50_ms_real", real_calls)):
        for name, stats in time_interleaved(calls, warmup=10, repeat=repeat).items():
            out[name][key.format(tokens=out[name]["tokens"])] = stats["p50_ms"]
    return out


def _torch_metrics(recipe: Recipe, data: Any, folder: Path, *, teacher: Any = None) -> dict[str, Any]:
    """Test metrics, size on disk and PyTorch FP32 latency of a torch stage's saved model.

    Embedding models are scored against `teacher` (Spearman of similarities); the teacher itself gets none.
    """
    from edgellm.models import count_parameters
    from edgellm.train import evaluate_model, load_model

    tm = load_model(folder, task=recipe.task)
    out: dict[str, Any] = {"parameters": count_parameters(tm.model),
                           "size_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors"))}
    if recipe.task == "text-classification":
        out["test"] = evaluate_model(tm, data, split="test")
    elif teacher is not None:
        out["test"] = evaluate_model(tm, data, split="test", teacher=teacher)
    if recipe.evaluate.latency:
        out["latency"] = _torch_latency(tm, data, recipe)
    return out


def _torch_latency(tm: Any, data: Any, recipe: Recipe, split: str = "test") -> dict[str, Any]:
    import torch

    from edgellm.bench import time_calls
    from edgellm.bench.inputs import plain_tokenizer
    from edgellm.bench.stats import cycling

    threads = recipe.evaluate.threads
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    from edgellm.models import max_positions

    limit = max_positions(tm.model.config) or 512
    length = min(recipe.evaluate.latency_length, limit, data.max_length or limit)
    padded, real = _latency_texts(plain_tokenizer(tm.tokenizer), data, length, split)
    model = tm.model.eval()

    def feed(text: str) -> Any:
        return tm.tokenizer([text], truncation=True, max_length=length, return_tensors="pt")

    padded_feeds = [feed(t) for t in padded]
    real_feeds = [feed(t) for t in real]

    def run(batch: Any) -> Any:
        with torch.inference_mode():
            return model(**batch)

    try:
        repeat = recipe.evaluate.repeat
        return {
            "tokens": length,
            "batch": 1,
            "threads": threads,
            "engine": f"PyTorch {torch.__version__} FP32",
            f"p50_ms_{length}": time_calls(cycling(run, padded_feeds), warmup=10, repeat=repeat)["p50_ms"],
            "p50_ms_real": time_calls(cycling(run, real_feeds), warmup=10, repeat=repeat)["p50_ms"],
        }
    finally:
        torch.set_num_threads(previous)


# --- summary and publishing -----------------------------------------------------------------------------------------

_STAGE_TITLES = {"teacher": "teacher (fine-tuned)", "distill": "student (distilled)", "prune": "pruned",
                 "vocab": "vocabulary trimmed"}


def _summary_rows(stages: dict[str, StageRecord], manifest: Manifest) -> list[dict[str, Any]]:
    rows = []
    for name, record in stages.items():
        if name not in _STAGE_TITLES:
            continue
        m = record.metrics
        latency = m.get("latency") or {}
        rows.append({
            "stage": _STAGE_TITLES[name], "model": "PyTorch FP32", "parameters": m.get("parameters"),
            "size_mb": (m.get("size_bytes") or 0) / 1e6 or None, **_metric(m.get("test")),
            "p50_ms": _p50(latency), "p50_ms_real": latency.get("p50_ms_real"),
        })
    for entry in manifest.models:
        latency = entry.metrics.get("latency") or {}
        size = sum(manifest.files.get(f, {}).get("bytes", 0) for f in entry.files)
        stage = "quantize" if entry.precision == "int8" else "export"
        rows.append({
            "stage": stage + (f" ({entry.target})" if entry.target else ""),
            "model": f"{entry.name} ({entry.backend} {entry.precision})",
            "parameters": manifest.source.get("parameters"), "size_mb": size / 1e6,
            **_metric(entry.metrics.get("test")), "p50_ms": _p50(latency), "p50_ms_real": latency.get("p50_ms_real"),
        })
    return rows


def _p50(latency: dict[str, Any]) -> float | None:
    return next((v for k, v in latency.items() if k.startswith("p50_ms_") and k != "p50_ms_real"), None)


def _metric(test: dict[str, Any] | None) -> dict[str, Any]:
    if not test:
        return {"metric": None, "metric_name": None}
    if "accuracy" in test:
        return {"metric": test["accuracy"], "metric_name": "test accuracy %"}
    return {"metric": test.get("spearman"), "metric_name": "test Spearman vs teacher"}


def render_summary(rows: list[dict[str, Any]]) -> str:
    """The end-of-run table as Markdown: stage, model, parameters, size MB, metric, p50 ms (padded / real);
    text-generation rows get their own columns (`edgellm.pipeline_lm.render_lm_summary`)."""
    if any("ppl_out_of_domain" in r for r in rows):
        from edgellm.pipeline_lm import render_lm_summary  # here: pipeline_lm imports this module

        return render_lm_summary(rows)
    metric = next((r["metric_name"] for r in rows if r.get("metric_name")), "metric")
    length_note = "p50 ms (batch 1, padded)"
    lines = [f"| stage | model | parameters | size MB | {metric} | {length_note} | p50 ms (real lengths) |",
             "|---|---|---|---|---|---|---|"]

    for r in rows:
        params = f"{r['parameters'] / 1e6:.2f} M" if r.get("parameters") else "-"
        lines.append(f"| {r['stage']} | {r['model']} | {params} | {fmt(r.get('size_mb'), '.1f')} | "
                     f"{fmt(r.get('metric'), '.2f')} | {fmt(r.get('p50_ms'), '.2f')} | {fmt(r.get('p50_ms_real'), '.2f')} |")
    return "\n".join(lines) + "\n"


def fmt(value: Any, spec: str) -> str:
    """A summary-table cell: `value` formatted with `spec`, "-" when there is none."""
    return "-" if value is None else format(value, spec)


def _publish(recipe: Recipe, data: Any, source: Path, out: Path, stages: dict[str, StageRecord],
             summary: list[dict[str, Any]], *, overwrite: bool) -> Manifest:
    with fault_scope("publish"), staging(out, overwrite=overwrite) as stage:
        _copy_artifact(source, stage, into_existing=True)
        manifest = read_manifest(stage)
        manifest.data = data.describe()
        manifest.recipe = recipe.to_dict()
        previous = dict(manifest.metrics)
        manifest.metrics = {}
        for name, record in stages.items():
            manifest.metrics[name] = {"key": record.key, "seconds": record.seconds, **(previous.get(name) or {}),
                                      **record.metrics}
        manifest.metrics["summary"] = summary
        extension = vocab_extension(stages)
        if extension is not None:
            manifest.metrics["vocab_extension"] = extension
        note = f"\n{extension_line(extension)}\n" if extension is not None else ""
        (stage / SUMMARY_FILE).write_text(
            f"# {recipe.name or out.name}: compress summary\n\n{render_summary(summary)}{note}", encoding="utf-8")
        write_manifest(stage, manifest)
    return read_manifest(out)


def vocab_extension(stages: dict[str, StageRecord]) -> dict[str, Any] | None:
    """The teacher stage's vocabulary-extension report (finetune.extend_vocab), None when there was none."""
    teacher = stages.get("teacher")
    training = (teacher.metrics.get("training") or {}) if teacher is not None else {}
    return training.get("vocab_extension") if isinstance(training, dict) else None


def extension_line(report: dict[str, Any]) -> str:
    """One sentence for the summary: tokens added and the unknown-token rates before -> after."""
    rates = [f"{part} {report[part]['unknown_rate_before']:.1%} -> {report[part]['unknown_rate_after']:.1%}"
             for part in ("train", "test") if isinstance(report.get(part), dict)]
    return (f"Vocabulary extended before fine-tuning: {report['added']:,} tokens added "
            f"({report['vocab_size_before']:,} -> {report['vocab_size_after']:,}); tokens unknown to the teacher: "
            + ", ".join(rates) + ".")


def _fresh(folder: Path) -> Path:
    """An empty folder (a half-written one from a killed run is cleared: it is ours, inside the work folder)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _copy_artifact(source: Path, dest: Path, *, into_existing: bool = False) -> Path:
    if not into_existing:
        _fresh(dest)
    for item in source.iterdir():
        if item.is_file():
            shutil.copy2(item, dest / item.name)
        elif item.is_dir():
            shutil.copytree(item, dest / item.name)
    return dest
