"""What `edgellm compress` prints into a log file: stage lines and the summary, no progress frames, none of the known
third-party warnings; `-v` / `-vv` bring the detail back. Plus edgellm.console's filters on their own."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterator

import pytest

from edgellm import console

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "export" / "smoke.yaml"
FAST = ["data.max_rows=200", "evaluate.repeat=3"]
STAGES = ("teacher", "distill", "prune", "vocab", "export", "quantize", "evaluate")  # the smoke recipe runs them all

# The third-party output a default run hides, each known to arise in the smoke recipe on the tiny teacher (the -vv
# run below shows every one of them, so hiding them is not an accident of the recipe).
KNOWN = {
    "onnxruntime fusion on pruned heads": r"Input hidden size \(\d+\) is not same as weight matrix dimension of q,k,v",
    "onnxruntime quantizer hint": r"Please consider to run pre-processing before quantization",
    "NNCF progress bars": r"^(Statistics collection|Applying Smooth Quant|Applying Fast Bias correction) ",
    "transformers new classification head": r"Some weights of \w+ were not initialized from the model checkpoint",
}


def _compress(teacher: Path, out: Path, *flags: str, work: Path | None = None) -> str:
    """One `edgellm compress` of the smoke recipe as a subprocess, stdout and stderr into a file (not a terminal)."""
    args = [str(Path(sys.executable).with_name("edgellm")), *flags, "compress", str(SMOKE), "-o", str(out),
            "--set", f"teacher={teacher}"]
    for item in FAST:
        args += ["--set", item]
    if work is not None:
        args += ["--work-dir", str(work), "--overwrite"]
    log = out.with_suffix(".log")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as f:
        done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=600)
    text = log.read_text(encoding="utf-8")
    assert done.returncode == 0, text
    return text


@pytest.fixture(scope="module")
def logs(tiny_bert_factory, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two fresh runs (default, -vv), then a default and a -v run reusing the first run's stages."""
    teacher = tiny_bert_factory(task="feature-extraction", layers=4)
    tmp = tmp_path_factory.mktemp("quiet")
    quiet = _compress(teacher, tmp / "quiet")
    work = Path(str(tmp / "quiet") + ".work")
    return {
        "quiet": quiet,
        "vv": _compress(teacher, tmp / "vv", "-vv"),
        "reused": _compress(teacher, tmp / "reused", work=work),
        "reused-v": _compress(teacher, tmp / "reused-v", "-v", work=work),
    }


def test_default_log_is_short_and_has_no_progress_frames(logs: dict[str, str]) -> None:
    lines = logs["quiet"].splitlines()
    assert len(lines) < 200
    assert "\r" not in logs["quiet"]
    assert "| stage | model | parameters |" in logs["quiet"]  # the summary table


def test_default_log_has_a_start_and_a_timed_end_line_per_stage(logs: dict[str, str]) -> None:
    for stage in STAGES:
        assert re.search(rf"^\[{stage}\] running in \S+$", logs["quiet"], re.M), stage
        assert re.search(rf"^\[{stage}\] done in \d+ s", logs["quiet"], re.M), stage
    # the key number of the stage on its done line
    assert re.search(r"^\[distill\] done in \d+ s: test accuracy \d+\.\d\d %$", logs["quiet"], re.M)
    assert re.search(r"^\[evaluate\] done in \d+ s: onnx-\S+ test accuracy", logs["quiet"], re.M)


@pytest.mark.parametrize("what", sorted(KNOWN))
def test_known_third_party_output_hidden_by_default_and_back_with_vv(logs: dict[str, str], what: str) -> None:
    pattern = re.compile(KNOWN[what], re.M)
    assert not pattern.search(logs["quiet"]), what
    assert pattern.search(logs["vv"]), f"{what}: no longer arises in the smoke run, or -vv does not show it"


def test_default_log_has_no_warnings_at_all(logs: dict[str, str]) -> None:
    leaked = [line for line in logs["quiet"].splitlines() if re.search(r"^WARNING|Warning:|^W\d{4} ", line)]
    assert leaked == []


def test_verbose_flags_bring_edgellm_logs_back(logs: dict[str, str]) -> None:
    assert len(logs["reused-v"].splitlines()) > len(logs["reused"].splitlines())
    assert re.search(r"^INFO edgellm\.", logs["reused-v"], re.M)
    assert len(re.findall(r"\[teacher\] unchanged since", logs["reused-v"])) == 1  # echoed once, not logged again
    assert not re.search(r"^INFO ", logs["reused"], re.M)
    assert re.search(r"^INFO edgellm\.train\.", logs["vv"], re.M)
    assert len(logs["vv"].splitlines()) > len(logs["quiet"].splitlines())


# --- edgellm.console on its own ---------------------------------------------------------------------------------------

@pytest.fixture
def verbosity() -> Iterator[None]:
    before = console.verbosity()
    yield
    console._VERBOSITY["level"] = before


def _emit(logger: logging.Logger) -> list[str]:
    """Log two records on `logger` and warn twice; return what got through (records and warnings)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with console.silence(r"hidden size \(\d+\)", loggers=(logger.name,)):
                logger.warning("Input hidden size (24) is not same as weight matrix dimension of q,k,v (32).")
                logger.warning("fusion failed")
                warnings.warn("Input hidden size (24) differs", UserWarning)
                warnings.warn("something else", UserWarning)
        return seen + [str(w.message) for w in caught]
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("level,kept", [
    (0, ["fusion failed", "something else"]),  # default: only the matching record and warning go
    (1, ["fusion failed", "something else"]),  # -v: edgellm's logs, third-party noise still hidden
    (2, ["Input hidden size (24) is not same as weight matrix dimension of q,k,v (32).", "fusion failed",
         "Input hidden size (24) differs", "something else"]),  # -vv: everything
])
def test_silence_drops_only_matching_messages(verbosity: None, level: int, kept: list[str]) -> None:
    console._VERBOSITY["level"] = level
    assert _emit(logging.getLogger("edgellm-test.fusion")) == kept


def test_silence_removes_its_filter_afterwards(verbosity: None) -> None:
    logger = logging.getLogger("edgellm-test.after")
    with console.silence("x", loggers=(logger.name,)):
        assert len(logger.filters) == 1
    assert logger.filters == []


def test_muted_restores_the_level(verbosity: None) -> None:
    logger = logging.getLogger("edgellm-test.muted")
    logger.setLevel(logging.INFO)
    with console.muted(logger.name):
        assert logger.level == logging.WARNING
    assert logger.level == logging.INFO


@pytest.mark.parametrize("missing,dropped", [
    ("['classifier.bias', 'classifier.weight']", True),  # the new head the teacher stage trains
    ("['bert.pooler.dense.bias', 'bert.pooler.dense.weight', 'classifier.bias', 'classifier.weight']", True),
    ("['classifier.bias', 'bert.encoder.layer.0.attention.self.query.weight']", False),  # a broken checkpoint
    ("['bert.embeddings.word_embeddings.weight']", False),
])
def test_new_head_message_dropped_only_for_the_head(missing: str, dropped: bool) -> None:
    message = (f"Some weights of BertForSequenceClassification were not initialized from the model checkpoint at /m "
               f"and are newly initialized: {missing}\nYou should probably TRAIN this model on a down-stream task")
    record = logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, message, None, None)
    assert console._NEW_HEAD_FILTER.filter(record) is not dropped


def test_no_live_progress_on_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    with (tmp_path / "log").open("w") as f:
        assert console.live_progress(f) is False
    assert console.live_progress(io.StringIO()) is False


@pytest.mark.parametrize("live,requested,bar", [
    (False, True, False),  # a log file: no bar even when asked for
    (True, True, True),  # a terminal
    (True, False, False),  # --no-progress
])
def test_training_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, live: bool, requested: bool,
                                         bar: bool) -> None:
    from edgellm.train import loop

    monkeypatch.setattr(loop, "live_progress", lambda: live)
    made = loop._progress(requested, 10, 0, "teacher")
    assert (made is not None) is bar
    if made is not None:
        made.close()


_GGUF_SCRIPT = """
import sys, tempfile
from edgellm import console
from edgellm.models import EMBEDDED_CAUSAL_LM, gguf_to_folder, load_tokenizer, resolve_model
console.configure(int(sys.argv[1]))
load_tokenizer(EMBEDDED_CAUSAL_LM)
gguf_to_folder(resolve_model(EMBEDDED_CAUSAL_LM), tempfile.mkdtemp() + "/converted")
"""


@pytest.mark.parametrize("verbosity,quiet", [(0, True), (2, False)])
def test_gguf_conversion_into_a_log_file(tmp_path: Path, verbosity: int, quiet: bool) -> None:
    """Reading the embedded GGUF teacher: transformers' legacy-tokenizer notice and its per-tensor de-quantizing
    bar stay out of a log file by default, and come back at -vv."""
    log = tmp_path / "log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-c", _GGUF_SCRIPT, str(verbosity)], stdout=f, stderr=subprocess.STDOUT,
                              cwd=ROOT, timeout=600)
    text = log.read_text(encoding="utf-8")
    assert done.returncode == 0, text
    for shown in ("You are using the default legacy behaviour", "Converting and de-quantizing GGUF tensors"):
        assert (shown not in text) is quiet, text[-2000:]
