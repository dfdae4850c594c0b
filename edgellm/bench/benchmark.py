"""The benchmark run: every model of an artifact (and of the artifacts compared with it) side by side with the
baselines, measured in one run. Encoders (classification, embeddings) and generators."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgellm.bench.generation import measure_generation, measure_generation_interleaved, perplexity
from edgellm.bench.inputs import (
    centroid_accuracy,
    label_ids,
    load_heldout_texts,
    load_test_split,
    plain_tokenizer,
    texts_of_length,
    token_stats,
)
from edgellm.bench.machine import CpuMonitor, available_memory_bytes, machine_info, physical_cores
from edgellm.bench.process import cold_fields, cold_start
from edgellm.bench.report import check_result_name, write_results
from edgellm.bench.stats import (ROUNDS, SETTLE_CALLS, SWITCH_PAUSE_S, cycling, rounds_for, time_calls,
                                 time_interleaved)
from edgellm.bench.subjects import (
    PIPELINE_STAGES,
    Subject,
    artifact_subjects,
    open_subject,
    optimum_subject,
    pipeline_stage_models,
    teacher_subject,
)
from edgellm.config import check_range, from_dict, to_dict
from edgellm.errors import ConfigError, ModelError

__all__ = ["BenchSettings", "interleaved_speed", "measure_subject", "run_benchmark", "RESULT_SCHEMA", "UNITS"]

log = logging.getLogger(__name__)

RESULT_SCHEMA = "edgellm-bench/1"
UNITS = {
    "*_ms": "milliseconds per call (one call = one batch)",
    "*_s": "seconds",
    "*_bytes": "bytes",
    "*_mb": "megabytes (1e6 bytes)",
    "texts_per_s": "texts per second (batch size / median batch latency)",
    "tokens_per_s": "tokens per second",
    "*_pct": "percent (0-100)",
}


@dataclass
class BenchSettings:
    """What the benchmark measures and how often. Suites (bench/suites/*.yaml) are these fields."""

    threads: int | None = None  # intra-op threads for every engine; None -> the machine's physical cores
    lengths: list[int] = field(default_factory=lambda: [32, 128])  # padded input lengths, tokens incl. specials
    batch_sizes: list[int] = field(default_factory=lambda: [8, 32])  # throughput batches
    warmup: int = 10  # untimed calls before each timed series
    repeat: int = 100  # timed batch-1 calls per length
    throughput_repeat: int = 20  # timed batch calls per (batch size, length)
    real_sample: int = 300  # test sentences timed one by one at batch 1, real lengths (0: skip)
    cold_runs: int = 3  # fresh processes per engine for cold start and peak memory (0: skip)
    max_examples: int | None = None  # cap on test examples for accuracy (None: the whole test split)
    interleave: bool = True  # time batch-1 latency per length (generators: first token and decode) of every model in alternating rounds, all loaded at once, so a machine whose speed drifts cannot bias their ratios; false: one model after another (less memory)
    rounds: int = ROUNDS  # interleave: rounds the timed calls are split into (generators: generation_repeat rounds)
    baselines: bool = True  # also measure the teacher in FP32 PyTorch (and, for encoders, Optimum INT8)
    stages: bool = True  # also measure the pipeline's student / pruned / trimmed models (its work folder), PyTorch
    timeout_s: float = 600.0  # per cold-start process
    prompt_tokens: int = 128  # generators: prompt length in tokens, built from held-out text
    new_tokens: int = 128  # generators: tokens generated per run (end-of-sequence does not stop it)
    generation_warmup: int = 1  # generators: untimed runs first
    generation_repeat: int = 3  # generators: timed runs (medians reported)
    perplexity_texts: int = 200  # generators: held-out texts scored for perplexity
    peers: list[str] = field(default_factory=list)  # generators: peer engines measured in the same run on the same prompt ids and text (llama.cpp, onnxruntime-genai, openvino-genai; `make peers`); one that cannot be installed or built is a row saying why

    def validate(self, where: str) -> None:
        check_range(f"{where}.threads", self.threads, low=1)
        if not self.lengths:
            raise ConfigError(f"{where}.lengths is empty; give at least one length such as [32, 128]")
        for i, n in enumerate(self.lengths):
            check_range(f"{where}.lengths[{i}]", n, low=4)
        for i, n in enumerate(self.batch_sizes):
            check_range(f"{where}.batch_sizes[{i}]", n, low=1)
        check_range(f"{where}.warmup", self.warmup, low=0)
        check_range(f"{where}.repeat", self.repeat, low=1)
        check_range(f"{where}.throughput_repeat", self.throughput_repeat, low=1)
        check_range(f"{where}.real_sample", self.real_sample, low=0)
        check_range(f"{where}.cold_runs", self.cold_runs, low=0)
        check_range(f"{where}.max_examples", self.max_examples, low=2)
        check_range(f"{where}.rounds", self.rounds, low=1)
        check_range(f"{where}.timeout_s", self.timeout_s, low=1.0)
        check_range(f"{where}.prompt_tokens", self.prompt_tokens, low=1)
        check_range(f"{where}.new_tokens", self.new_tokens, low=2)
        check_range(f"{where}.generation_warmup", self.generation_warmup, low=0)
        check_range(f"{where}.generation_repeat", self.generation_repeat, low=1)
        check_range(f"{where}.perplexity_texts", self.perplexity_texts, low=1)
        from edgellm.bench.peers import ENGINES

        unknown = [p for p in self.peers if p not in ENGINES]
        if unknown:
            raise ConfigError(f"{where}.peers: unknown engine(s) {unknown}; known: {list(ENGINES)}")
        self.lengths = sorted(set(self.lengths))
        self.batch_sizes = sorted(set(self.batch_sizes))

    def resolved_threads(self) -> int:
        return int(self.threads or physical_cores() or os.cpu_count() or 1)


def _open(subject: Subject, settings: BenchSettings) -> tuple[Any, float]:
    start = time.perf_counter()
    runner = open_subject(subject, threads=settings.resolved_threads())
    return runner, time.perf_counter() - start


def measure_subject(subject: Subject, settings: BenchSettings, data: dict[str, Any], *,
                    opened: tuple[Any, float] | None = None,
                    speed: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """Warm measurements of one subject in this process. Encoders: batch-1 latency per length and on the real test
    sentences, throughput per batch size and length, accuracy on the test split. Generators: time to first token,
    prompt and decode tokens/s, perplexity on held-out text.

    `opened` is (runner, load seconds) of a subject the caller loaded (and closes); `speed` the timings it already
    took in alternating rounds (`interleaved_speed`: encoders' latency per length, a generator's record), which
    are then not timed again.

    Returns (fields, outputs): fields hold "cold_work" for `cold_start`; outputs are the encoder's predictions on
    the test split (None for generators).
    """
    runner, load_s = opened or _open(subject, settings)
    try:
        if subject.task == "text-generation":
            fields: dict[str, Any] = _measure_generator(runner, subject, settings, data, speed)
            outputs = None
        else:
            fields, outputs = _measure_encoder(runner, subject, settings, data, speed)
        return {"load_s": load_s, "threads": settings.resolved_threads(), "runtime": runner.info, **fields}, outputs
    finally:
        if opened is None:
            runner.close()
            del runner
            gc.collect()


def _padded(runner: Any, settings: BenchSettings, data: dict[str, Any]) -> dict[int, list[str]]:
    """Per length, real test texts cut or extended to exactly that many of the runner's tokens."""
    count = max([*settings.batch_sizes, 8])
    return {n: texts_of_length(runner.tokenizer, data["texts"], n, count) for n in settings.lengths}


def _one_at_a_time(runner: Any, texts: Sequence[str]) -> Callable[[], Any]:
    """A batch-1 call that takes the next of `texts` each time (cycling)."""
    return cycling(lambda text: runner.predict([text]), texts)


def interleaved_speed(subjects: Sequence[Subject], runners: dict[str, Any], settings: BenchSettings,
                      data: dict[str, Any], *, peers: dict[str, Any] | None = None,
                      peer_prompt: Sequence[int] = ()) -> dict[str, Any]:
    """The timings whose ratios the report quotes, taken for every subject in the same alternating rounds
    (`time_interleaved`, `measure_generation_interleaved`; the order reversed every other round): encoders'
    batch-1 latency per length (name -> {"32": stats, ...}), generators' first-token and decode record
    (name -> record). `runners` holds every subject loaded (name -> runner); `peers`, opened peer engines (label ->
    peer), take their turns in the generators' rounds on `peer_prompt`."""
    if subjects[0].task == "text-generation":  # a run's subjects share one task
        prompts = {s.name: generation_inputs(runners[s.name].tokenizer, settings, data, s.max_length)[0]
                   for s in subjects}
        streams = {name: (lambda _ids, n, r=runners[name], p=prompt: r.stream(p, n))  # each its own prompt ids
                   for name, prompt in prompts.items()}
        streams.update({label: (lambda _ids, n, r=peer: r.stream(list(peer_prompt), n))
                        for label, peer in (peers or {}).items()})
        return measure_generation_interleaved(streams, next(iter(prompts.values())), max_new_tokens=settings.new_tokens,
                                              warmup=settings.generation_warmup, repeat=settings.generation_repeat)
    padded = {s.name: _padded(runners[s.name], settings, data) for s in subjects}
    latency: dict[str, Any] = {s.name: {} for s in subjects}
    for n in settings.lengths:
        calls = {s.name: _one_at_a_time(runners[s.name], padded[s.name][n]) for s in subjects}
        for name, stats in time_interleaved(calls, warmup=settings.warmup, repeat=settings.repeat,
                                            rounds=settings.rounds).items():
            latency[name][str(n)] = stats
    return latency


def _measure_encoder(runner: Any, subject: Subject, settings: BenchSettings, data: dict[str, Any],
                     timed: dict[str, Any] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    texts = data["texts"]
    padded = _padded(runner, settings, data)
    latency: dict[str, Any] = dict(timed or {})
    for n in settings.lengths:
        if str(n) not in latency:
            latency[str(n)] = time_calls(_one_at_a_time(runner, padded[n]), warmup=settings.warmup,
                                         repeat=settings.repeat)
    if settings.real_sample:
        sample = texts[: settings.real_sample]
        stats = time_calls(_one_at_a_time(runner, sample), warmup=min(settings.warmup, len(sample)),
                           repeat=len(sample))
        latency["real"] = {**stats, **token_stats(runner.tokenizer, sample, subject.max_length)}
    throughput: dict[str, Any] = {}
    for b in settings.batch_sizes:
        throughput[str(b)] = {}
        for n in settings.lengths:
            batch = padded[n][:b]
            stats = time_calls(lambda: runner.predict(batch, batch_size=b), warmup=min(settings.warmup, 3),
                               repeat=settings.throughput_repeat)
            throughput[str(b)][str(n)] = {"texts_per_s": b / (stats["p50_ms"] / 1e3), **stats}
    start = time.perf_counter()
    predictions = runner.predict(texts)
    fields: dict[str, Any] = {
        "latency": latency,
        "throughput": throughput,
        "eval_s": time.perf_counter() - start,
        "cold_work": {"probe": texts[0],
                      "batch": padded[max(settings.lengths)][: max(settings.batch_sizes, default=1)]},
    }
    if subject.task == "text-classification":
        from edgellm.evaluate import classification_metrics

        gold = label_ids(data, subject.labels)
        metrics = classification_metrics(predictions.argmax(1).tolist(), gold, predictions.shape[1])
        fields.update(accuracy_pct=metrics["accuracy"], macro_f1_pct=metrics["macro_f1"],
                      examples=metrics["examples"], accuracy_metric="accuracy on the test split")
    else:
        fields.update(accuracy_pct=centroid_accuracy(predictions, data["labels"]), examples=len(texts),
                      accuracy_metric="nearest class centroid (leave-one-out, cosine) on the test split")
    return fields, predictions


def _measure_generator(runner: Any, subject: Subject, settings: BenchSettings, data: dict[str, Any],
                       timed: dict[str, Any] | None = None) -> dict[str, Any]:
    prompt_ids, held_out = generation_inputs(runner.tokenizer, settings, data, subject.max_length)
    stats = timed or measure_generation(runner.stream, prompt_ids, max_new_tokens=settings.new_tokens,
                                        warmup=settings.generation_warmup, repeat=settings.generation_repeat)
    start = time.perf_counter()
    ppl = perplexity(runner.score, held_out)
    return {
        "generation": stats,
        "perplexity": ppl["perplexity"],
        "perplexity_tokens": ppl["tokens"],
        "perplexity_texts": len(held_out),
        "eval_s": time.perf_counter() - start,
        "cold_work": {"prompt_ids": list(prompt_ids), "new_tokens": settings.new_tokens},
    }


def _default_teacher(manifest: Any, stage_models: dict[str, Path]) -> str | None:
    """The manifest's `source.teacher`, else the fine-tuned teacher in the pipeline's work folder, else the model
    the artifact was exported from (`source.model`)."""
    source = manifest.source or {}
    found = stage_models.get("teacher")
    return source.get("teacher") or (str(found) if found else None) or source.get("model")


def _given_teacher(manifest: Any) -> str | None:
    """The teacher as the recipe named it (a GGUF file, an embedded alias, a folder), before any stage: a causal
    LM's teacher stage only converts it, so the stage folder holds the same weights in another format."""
    return (manifest.source or {}).get("teacher") or (manifest.recipe or {}).get("teacher") \
        or (manifest.source or {}).get("model")


def _check_fits(subjects: list[Subject], settings: BenchSettings) -> None:
    for subject in subjects:
        if subject.task == "text-generation":
            need = settings.prompt_tokens + settings.new_tokens
            if need > subject.max_length:
                raise ConfigError(f"prompt_tokens + new_tokens = {need} exceed {subject.name}'s context of "
                                  f"{subject.max_length} tokens; ask for fewer")
            continue
        too_long = [n for n in settings.lengths if n > subject.max_length]
        if too_long:
            raise ConfigError(f"length(s) {too_long} exceed {subject.name}'s max_length of {subject.max_length} "
                              f"tokens; choose lengths up to {subject.max_length}")


def run_benchmark(
    artifact: str | os.PathLike[str],
    *,
    compare: Sequence[str | os.PathLike[str]] = (),
    models: Sequence[str] | None = None,
    teacher: str | None = None,
    settings: BenchSettings | dict[str, Any] | None = None,
    name: str | None = None,
    output_dir: str | os.PathLike[str] | None = "bench/results",
    data: dict[str, Any] | None = None,
    command: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Benchmark every model entry of `artifact` (or those named in `models`) and of each `compare` artifact, plus
    the baselines unless `settings.baselines` is false: the teacher in FP32 PyTorch, and for encoders Optimum's
    INT8 (ORTModel export + ORTQuantizer avx512_vnni dynamic), all measured in this run.

    A model of a `compare` artifact with the same files as one already listed (an export stage two builds share)
    is measured once. With `settings.stages`, the pipeline's student / pruned / trimmed models of every artifact are
    measured too, each folder once, read from `work_dir` (the work folder the artifacts were built in; default:
    each artifact's own `<artifact>.work`).

    Writes NAME.json, NAME.md and NAME.png into `output_dir` (None: write nothing) and returns the result dict
    (with "paths" when written). `data` overrides the evaluation data: {"texts", "labels", "label_names", "info"}
    for encoders (the test split), {"texts", "info"} for generators (held-out text).
    """
    from edgellm.artifact import read_manifest

    settings = from_dict(BenchSettings, to_dict(settings or {}), "settings")  # validates a caller-built one too
    folder = Path(artifact)
    manifest = read_manifest(folder)
    folders = [folder, *(Path(c) for c in compare)]
    many = len(folders) > 1
    subjects: list[Subject] = []
    seen: dict[tuple[Any, ...], Subject] = {}
    for k, f in enumerate(folders):
        found = artifact_subjects(f, models if k == 0 else None, prefix=f"{f.name}:" if many else "")
        if found[0].task != manifest.task:
            raise ConfigError(f"cannot compare {f} ({found[0].task}) with {folder} ({manifest.task}): tasks differ")
        for subject in found:
            same = seen.setdefault(_model_identity(subject), subject)
            if same is subject:
                subjects.append(subject)
            else:
                same.note = (same.note + ", " if same.note else "same files as ") + subject.name
                log.info("%s: the same files as %s, measured once", subject.name, same.name)
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise ConfigError(f"two artifacts share a folder name; subject names collide: {names}")
    result_name = name or folder.name
    check_result_name(result_name)
    _check_fits(subjects, settings)
    base = None
    stage_models = pipeline_stage_models(folder, manifest, work_dir=work_dir)
    like = {"task": manifest.task, "labels": manifest.labels, "max_length": manifest.max_length,
            "pooling": manifest.pooling, "normalize": manifest.normalize}
    if settings.baselines:
        source = teacher or _default_teacher(manifest, stage_models)
        if not source:
            raise ModelError(f"{folder}'s manifest names no teacher; pass --teacher PATH or --no-baselines")
        base = teacher_subject(source, **like)
    stage_subjects = _stage_subjects(folders, stage_models, like, work_dir) if settings.stages else []
    generating = manifest.task == "text-generation"
    if data is None:
        data = (load_heldout_texts(manifest) if generating
                else load_test_split(manifest, max_examples=settings.max_examples))
    threads = settings.resolved_threads()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    peer_items: list[Any] = []
    peer_inputs: tuple[list[int], list[list[int]]] = ([], [])
    if generating and settings.peers:  # the peers convert the teacher as given (llama.cpp needs its GGUF file)
        peer_items = _prepare_peers(folder, teacher or _given_teacher(manifest)
                                    or _default_teacher(manifest, stage_models), settings)
        peer_inputs = _peer_inputs(folder, manifest, settings, data)
    with tempfile.TemporaryDirectory(prefix="edgellm-bench-") as work:
        subjects = [*stage_subjects, *subjects]
        if base is not None:
            subjects = [base, *subjects] if generating else [base, *subjects, optimum_subject(base, Path(work) / "optimum")]
        rows = []
        outputs: dict[str, Any] = {}
        opened: dict[str, tuple[Any, float]] = {}
        speed: dict[str, Any] = {}
        try:
            timing = _sequential_reason(subjects, settings, peers=peer_items)
            if timing is None:
                for subject in subjects:
                    log.info("loading %s (%s, %s)", subject.name, subject.engine, subject.precision)
                    opened[subject.name] = _open(subject, settings)
                from edgellm.bench.peers import open_peers

                peer_items = open_peers(peer_items, threads=threads)
                ready = _ready_peers(peer_items)
                log.info("timing %d models in alternating rounds", len(subjects) + len(ready))
                with CpuMonitor() as monitor:
                    speed = interleaved_speed(subjects, {k: r for k, (r, _) in opened.items()}, settings, data,
                                              peers=ready, peer_prompt=peer_inputs[0])
                timing = {"mode": "interleaved", "models": len(subjects) + len(ready), "peers": len(ready),
                          "contention": monitor.result,
                          "rounds": settings.generation_repeat if generating else rounds_for(settings.rounds,
                                                                                             settings.repeat),
                          "pause_s": SWITCH_PAUSE_S, "settle_calls": 0 if generating else SETTLE_CALLS}
            for subject in subjects:
                log.info("measuring %s (%s, %s)", subject.name, subject.engine, subject.precision)
                with CpuMonitor() as monitor:
                    fields, outputs[subject.name] = measure_subject(subject, settings, data,
                                                                    opened=opened.get(subject.name),
                                                                    speed=speed.get(subject.name))
                    work_spec = fields.pop("cold_work")
                    runs = [cold_start(subject, threads=threads, work=work_spec, timeout_s=settings.timeout_s)
                            for _ in range(settings.cold_runs)]
                rows.append({**dataclasses.asdict(subject), "size_mb": subject.size_bytes / 1e6, **fields,
                             **cold_fields(runs), "contention": monitor.result})
            _close_runners(opened)  # before the peers' own measurements: their memory back
            if peer_items:
                rows.extend(_measure_peers(peer_items, settings, peer_inputs, timed=speed))
        finally:
            _close_runners(opened)
            for peer in _ready_peers(peer_items).values():
                peer.close()
    if manifest.task == "feature-extraction":
        _add_agreement(rows, outputs)
    if generating:
        _add_generation_ratios(rows)
    else:
        _add_ratios(rows, max(settings.lengths))
    result = {
        "schema": RESULT_SCHEMA,
        "name": result_name,
        "created": started,
        "command": command,
        "task": manifest.task,
        "artifacts": [str(f) for f in folders],
        "machine": machine_info(),
        "settings": {**to_dict(settings), "threads": threads},
        "timing": timing,
        "data": data["info"],
        "units": UNITS,
        "subjects": rows,
    }
    if output_dir is not None:
        result["paths"] = write_results(result, output_dir, result["name"])
    return result


def _close_runners(opened: dict[str, tuple[Any, float]]) -> None:
    """Close every opened runner, in reverse (each torch runner restores the thread count it found when opened)."""
    for runner, _load_s in reversed(list(opened.values())):
        runner.close()
    opened.clear()
    gc.collect()


LOADED_PER_FILE_BYTE = 2  # memory a loaded model takes per byte of its files (weights + the engine's working copies)


def _sequential_reason(subjects: Sequence[Subject], settings: BenchSettings, *,
                       peers: Sequence[Any] = ()) -> dict[str, Any] | None:
    """None when every subject (and every peer of `peers` that has files: `PeerSpec`s) can be loaded at once for
    the alternating rounds; otherwise the `timing` record of a run that times one model after another, with the
    reason when it is not the settings' choice."""
    files = [s.size_bytes for s in subjects] + [p.size_bytes for p in peers if hasattr(p, "size_bytes")]
    if not settings.interleave or len(files) < 2:
        return {"mode": "sequential"}
    need = LOADED_PER_FILE_BYTE * sum(files)
    free = available_memory_bytes()
    if free is not None and need > free:
        reason = (f"all {len(files)} models loaded at once would take about {need / 1e9:.1f} GB "
                  f"({LOADED_PER_FILE_BYTE}x their files), {free / 1e9:.1f} GB available")
        log.warning("timing one model after another: %s", reason)
        return {"mode": "sequential", "reason": reason}
    return None


def _model_identity(subject: Subject) -> tuple[Any, ...]:
    """What makes two artifact models the same measurement: engine, files (sha256), tokenizer and input length."""
    from edgellm.artifact import read_manifest

    manifest = read_manifest(subject.path)
    entry = manifest.model(subject.model)
    digest = lambda rel: manifest.files.get(rel, {}).get("sha256") or f"{subject.path}/{rel}"  # noqa: E731
    return (subject.engine, entry.inference_precision, subject.max_length, digest(manifest.tokenizer),
            tuple(sorted(digest(f) for f in entry.files)))


def _stage_subjects(folders: list[Path], main_models: dict[str, Path], like: dict[str, Any],
                    work_dir: str | os.PathLike[str] | None) -> list[Subject]:
    """FP32 PyTorch subjects for the pipeline stage models (the teacher excepted: it is the baseline) of the main
    artifact, then those of the compared artifacts that are not already listed, named ARTIFACT:STAGE-pytorch-fp32."""
    out: list[Subject] = []
    listed: set[Path] = set()
    for k, f in enumerate(folders):
        found = main_models if k == 0 else pipeline_stage_models(f, work_dir=work_dir)
        for stage, path in found.items():
            if stage == "teacher" or path in listed:
                continue
            listed.add(path)
            subject = teacher_subject(path, stage=PIPELINE_STAGES[stage], **like)
            if k:
                subject.name = f"{f.name}:{subject.name}"
            out.append(subject)
    return out


def generation_inputs(tokenizer: Any, settings: BenchSettings, data: dict[str, Any],
                      max_length: int) -> tuple[list[int], list[list[int]]]:
    """The prompt ids and held-out token sequences every generator of a run gets (the same for every engine)."""
    tok = plain_tokenizer(tokenizer)
    prompt_ids = tok.encode(texts_of_length(tok, data["texts"], settings.prompt_tokens, 1)[0]).ids
    held_out = [tok.encode(t).ids[:max_length] for t in data["texts"][: settings.perplexity_texts]]
    return list(prompt_ids), held_out


def _prepare_peers(folder: Path, teacher: str | None, settings: BenchSettings) -> list[Any]:
    """The peer engines' files (`settings.peers`) made from the teacher, or found made: a `PeerSpec` each, or a
    `Missing` naming why there is none."""
    from edgellm.bench.peers import prepare_peers

    if not teacher:
        raise ModelError(f"{folder}'s manifest names no teacher for the peers; pass --teacher PATH")
    return prepare_peers(teacher, engines=settings.peers, threads=settings.resolved_threads())


def _ready_peers(items: Sequence[Any]) -> dict[str, Any]:
    """The opened peers of `items` (neither a `PeerSpec` nor a `Missing`), by label."""
    from edgellm.bench.peers import Missing, PeerSpec, peer_label

    return {peer_label(p): p for p in items if not isinstance(p, (Missing, PeerSpec))}


def _peer_inputs(folder: Path, manifest: Any, settings: BenchSettings,
                 data: dict[str, Any]) -> tuple[list[int], list[list[int]]]:
    """The prompt ids and held-out sequences every peer gets: those of the artifact's tokenizer."""
    from tokenizers import Tokenizer

    return generation_inputs(Tokenizer.from_file(str(folder / manifest.tokenizer)), settings, data,
                             manifest.max_length)


def _measure_peers(items: Sequence[Any], settings: BenchSettings, inputs: tuple[list[int], list[list[int]]], *,
                   timed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows for the peer engines (`items`: specs, opened peers, missing ones) on `inputs` (`_peer_inputs`: prompt
    ids, held-out sequences), measured here, in this run; `timed` holds the generation records of the peers timed
    in the alternating rounds."""
    from edgellm.bench.peers import measure_peers

    threads = settings.resolved_threads()
    prompt_ids, held_out = inputs
    rows = []
    for r in measure_peers(items, threads=threads, prompt_ids=prompt_ids, max_new_tokens=settings.new_tokens,
                           heldout=held_out, warmup=settings.generation_warmup, repeat=settings.generation_repeat,
                           timed=timed):
        rss = r.get("peak_rss_bytes")
        rows.append({
            "name": f"{r['name']} {r['format']}", "kind": "peer", "stage": "peer", "engine": r["name"],
            "precision": r["format"], "path": "", "task": "text-generation", "backend": r["name"],
            "size_bytes": r.get("size_bytes") or 0, "size_mb": (r.get("size_bytes") or 0) / 1e6,
            "missing": r["missing"], "reason": r.get("reason"), "generation": r.get("generation"),
            "perplexity": r.get("perplexity"), "perplexity_error": r.get("perplexity_error"),
            "perplexity_texts": len(held_out), "peak_rss_mb": rss / 1e6 if rss else None,
            "threads": threads, "runtime": r.get("info"),
        })
    return rows


def _add_agreement(rows: list[dict[str, Any]], outputs: dict[str, Any]) -> None:
    """Embeddings: agreement of every subject with the reference (the teacher, else the first subject)."""
    from edgellm.evaluate import AGREEMENT_PAIRS, embedding_agreement, sentence_pairs

    ref = next((r for r in rows if r["kind"] == "pytorch" and r["stage"] == "teacher"), rows[0])["name"]
    pairs = sentence_pairs(len(outputs[ref]), AGREEMENT_PAIRS, 0)
    for row in rows:
        row["agreement"] = {"reference": ref, **embedding_agreement(outputs[ref], outputs[row["name"]], pairs)}


def _add_ratios(rows: list[dict[str, Any]], length: int) -> None:
    """Per subject: p50 speed-up (batch 1, `length` tokens), size ratio and accuracy retained vs the teacher and
    vs the Optimum baseline."""
    key = str(length)
    for kind, field_name in (("pytorch", "vs_teacher"), ("optimum", "vs_optimum")):
        ref = next((r for r in rows if r["kind"] == kind and r["stage"] in ("teacher", "baseline")), None)
        if ref is None:
            continue
        for row in rows:
            row[field_name] = {
                "length": length,
                "p50_speedup": ref["latency"][key]["p50_ms"] / row["latency"][key]["p50_ms"],
                "size_ratio": ref["size_bytes"] / max(row["size_bytes"], 1),
                "accuracy_retained_pct": 100.0 * row["accuracy_pct"] / ref["accuracy_pct"] if ref["accuracy_pct"] else None,
            }


def _add_generation_ratios(rows: list[dict[str, Any]]) -> None:
    """Per generator vs the teacher: decode and first-token speed-ups, size ratio, perplexity ratio."""
    ref = next((r for r in rows if r["kind"] == "pytorch" and r["stage"] == "teacher"), None)
    if ref is None:
        return
    base = ref["generation"]
    for row in rows:
        gen = row["generation"]
        if row.get("missing") or gen is None:
            continue
        row["vs_teacher"] = {
            "decode_speedup": gen["decode_tokens_per_s"] / base["decode_tokens_per_s"],
            "first_token_speedup": base["time_to_first_token_ms"] / gen["time_to_first_token_ms"],
            "size_ratio": ref["size_bytes"] / max(row["size_bytes"], 1),
            "perplexity_ratio": row["perplexity"] / ref["perplexity"] if row.get("perplexity") else None,
        }
