"""The generic loop: schedule, exact resume (in process and after kill -9), finished runs, data parallel."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgellm.errors import TrainingError
from edgellm.train.loop import FixedBatches, LoopOptions, keep_freed_memory, lr_factor, train_loop
from tests.train import _train_worker as worker

ROOT = Path(__file__).resolve().parents[2]


class _Stop(Exception):
    pass


def _run(tiny_teacher_dir: Path, sentiment_jsonl: Path, work: Path, stop_at: int | None = None, **kw):
    """Returns (result, final weights) of the worker's run; raises _Stop after step `stop_at`."""
    model, plan, loss_fn, eval_fn = worker.setup(str(tiny_teacher_dir), str(sentiment_jsonl))
    final: dict = {}

    def on_step(step: int, logs: dict) -> None:
        if step == 18:
            final.update({k: v.clone() for k, v in model.state_dict().items()})
        if step == stop_at:
            raise _Stop()

    options = LoopOptions(**{**worker.STEPS_OPTIONS, **kw})
    result = train_loop(model, loss_fn, plan, options=options, work_dir=work, eval_fn=eval_fn, on_step=on_step,
                        progress=False)
    return result, final


@pytest.fixture(scope="module")
def reference(tiny_teacher_dir: Path, sentiment_jsonl: Path, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run: 192 training rows, batches of 16 -> 12 steps an epoch, 1.5 epochs = 18 steps."""
    return _run(tiny_teacher_dir, sentiment_jsonl, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("step, expected", [(0, 0.5), (1, 1.0), (2, 1.0), (6, 0.5), (9, 0.125), (10, 0.0)])
def test_warmup_then_linear_decay(step: int, expected: float) -> None:
    # 10 steps, 2 of warm-up: 1/2, 2/2, then (10 - s) / 8.
    assert lr_factor(step, 10, 2) == pytest.approx(expected)


def test_reference_run_learns_and_keeps_the_best(reference) -> None:
    result, final = reference
    assert result.steps == 18 and [h["step"] for h in result.history] == [4, 8, 12, 16, 18]
    best = max(result.history, key=lambda h: h["accuracy"])
    assert result.best == {"step": best["step"], "accuracy": best["accuracy"]}
    assert result.history[-1]["lr"] == pytest.approx(1e-3 * lr_factor(17, 18, 2))
    assert len(final) > 0


def test_resume_reproduces_an_uninterrupted_run(reference, tiny_teacher_dir: Path, sentiment_jsonl: Path,
                                                tmp_path: Path) -> None:
    ref, ref_final = reference
    with pytest.raises(_Stop):  # interrupted after step 10 of 18, mid-epoch; the last checkpoint is step 8
        _run(tiny_teacher_dir, sentiment_jsonl, tmp_path, stop_at=10)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000008"]
    saved = json.loads((tmp_path / "checkpoints" / "step-00000008" / "trainer.json").read_text())
    assert saved["step"] == 8 and "param_groups" in saved["optimizer"]
    (tmp_path / "checkpoints" / ".tmp-step-00000012-dead").mkdir()  # a write killed half-way: ignored
    result, final = _run(tiny_teacher_dir, sentiment_jsonl, tmp_path)
    assert result.resumed_from == 8 and result.steps == 18
    assert result.history == ref.history and result.best == ref.best
    assert final.keys() == ref_final.keys()
    for name in ref_final:  # exact tensors, dropout included
        assert torch.equal(final[name], ref_final[name]), name
    for name, tensor in ref.model.state_dict().items():  # the best weights the run returns
        assert torch.equal(result.model.state_dict()[name], tensor), name
    assert not (tmp_path / "checkpoints").exists() and (tmp_path / "result.json").is_file()


def test_paused_runs_continue_to_the_uninterrupted_result(reference, tiny_teacher_dir: Path, sentiment_jsonl: Path,
                                                          tmp_path: Path) -> None:
    """edgellm fit's rungs: paused after 1/3 (step 6, between evaluations) and 2/3 (step 12, an evaluation step) of
    the schedule, then run to the end: the same history, best checkpoint and weights as one uninterrupted run."""
    from edgellm._pause import TrainingPaused, pause_training

    ref, ref_final = reference
    steps = []
    for fraction, step in ((1 / 3, 6), (2 / 3, 12)):
        with pause_training(fraction), pytest.raises(TrainingPaused) as info:
            _run(tiny_teacher_dir, sentiment_jsonl, tmp_path)
        paused = info.value
        assert (paused.step, paused.total, paused.metric) == (step, 18, "accuracy")
        assert 0.0 <= paused.evaluation["accuracy"] <= 100.0 and paused.score >= paused.evaluation["accuracy"]
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{step:08d}"]
        assert not (tmp_path / "result.json").exists()
        steps.append(paused.step)
    with pause_training(1 / 3), pytest.raises(TrainingPaused) as again:  # past that point: evaluated where it is
        _run(tiny_teacher_dir, sentiment_jsonl, tmp_path)
    assert again.value.step == 12
    result, final = _run(tiny_teacher_dir, sentiment_jsonl, tmp_path)
    assert result.resumed_from == 12 and result.steps == 18
    assert result.history == ref.history and result.best == ref.best
    for name in ref_final:
        assert torch.equal(final[name], ref_final[name]), name
    for name, tensor in ref.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[name], tensor), name


def test_a_finished_run_returns_at_once_and_refuses_other_options(reference, tiny_teacher_dir: Path,
                                                                   sentiment_jsonl: Path, tmp_path: Path) -> None:
    _run(tiny_teacher_dir, sentiment_jsonl, tmp_path)
    model, plan, _, eval_fn = worker.setup(str(tiny_teacher_dir), str(sentiment_jsonl))

    def never(m, b):
        raise AssertionError("a finished run must not train again")

    result = train_loop(model, never, plan, options=LoopOptions(**worker.STEPS_OPTIONS), work_dir=tmp_path,
                        eval_fn=eval_fn, progress=False)
    assert result.steps == 18 and result.resumed_from == 18 and result.best == reference[0].best
    for name, tensor in reference[0].model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    with pytest.raises(TrainingError, match="holds a finished run of a different configuration"):
        train_loop(model, never, plan, options=LoopOptions(**{**worker.STEPS_OPTIONS, "learning_rate": 2e-3}),
                   work_dir=tmp_path, progress=False)


def test_a_checkpoint_of_another_run_is_refused_unless_resume_false(tiny_teacher_dir: Path, sentiment_jsonl: Path,
                                                                    tmp_path: Path) -> None:
    with pytest.raises(_Stop):
        _run(tiny_teacher_dir, sentiment_jsonl, tmp_path, stop_at=5)
    with pytest.raises(TrainingError, match="belongs to a different run"):
        _run(tiny_teacher_dir, sentiment_jsonl, tmp_path, seed=6)
    model, plan, loss_fn, _ = worker.setup(str(tiny_teacher_dir), str(sentiment_jsonl))
    result = train_loop(model, loss_fn, plan, options=LoopOptions(**{**worker.STEPS_OPTIONS, "seed": 6,
                                                                    "max_steps": 2}),
                        work_dir=tmp_path, resume=False, progress=False)
    assert result.resumed_from is None and result.steps == 2 and result.best is None


def test_non_finite_loss_and_empty_plan_are_training_errors(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    model.config = None  # not needed by the loop
    batch = {"x": torch.ones(4, 2)}
    with pytest.raises(TrainingError, match=r"the loss is nan at step 1"):
        train_loop(model, lambda m, b: m(b["x"]).sum() * float("nan"), FixedBatches([batch]),
                   options=LoopOptions(precision="fp32"), work_dir=tmp_path / "a", progress=False)
    with pytest.raises(TrainingError, match="no training batches"):
        train_loop(model, lambda m, b: m(b["x"]).sum(), FixedBatches([]), options=LoopOptions(),
                   work_dir=tmp_path / "b", progress=False)


def test_any_module_trains_with_fixed_batches(tmp_path: Path) -> None:
    """The loop is generic: a plain module, a loss returning logged parts, no evaluation."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(32, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    batches = FixedBatches([{"x": x[i:i + 8], "y": y[i:i + 8]} for i in range(0, 32, 8)])

    def loss_fn(m, b):
        mse = ((m(b["x"]) - b["y"]) ** 2).mean()
        return mse, {"mse": mse}

    with torch.no_grad():
        before = float(loss_fn(model, {"x": x, "y": y})[0])
    result = train_loop(model, loss_fn, batches, options=LoopOptions(epochs=40, learning_rate=0.05, weight_decay=0.0,
                                                                     precision="fp32", eval_every=1000),
                        work_dir=tmp_path, progress=False)
    with torch.no_grad():
        after = float(loss_fn(result.model, {"x": x, "y": y})[0])
    assert result.steps == 160 and after < before / 20
    assert [h["step"] for h in result.history] == [160]


FAST = 2.0 ** -10  # about 1 ms; step times that are powers of two add up exactly, so the re-plans are exact


class _StepClock:
    """Stands in for `time` in edgellm.train.loop: the clock moves only when a step calls `tick`, by `step_s`, so
    the time budget sees the same step times on any machine, however loaded."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s

    def perf_counter(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step_s


def _linear_run(work: Path, monkeypatch: pytest.MonkeyPatch, *, step_s: float = 0.0, stop_at: int | None = None,
                **options):
    """A 3 -> 1 linear model on 4 fixed batches; each step takes `step_s` on the loop's clock; raises _Stop after
    step `stop_at`."""
    from edgellm.train import loop

    clock = _StepClock(step_s)
    monkeypatch.setattr(loop, "time", clock)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(32, 3)
    batches = FixedBatches([{"x": x[i:i + 8]} for i in range(0, 32, 8)])

    def loss_fn(m, b):
        clock.tick()
        return (m(b["x"]) ** 2).mean()

    def on_step(step: int, logs: dict) -> None:
        if step == stop_at:
            raise _Stop()

    return train_loop(model, loss_fn, batches, work_dir=work, progress=False, on_step=on_step,
                      options=LoopOptions(learning_rate=0.01, precision="fp32", **options))


def test_time_budget_lengthens_a_schedule_whose_steps_are_faster_than_estimated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # estimated 1 s a step for 5 s: 5 steps; the steps take about 1 ms, so at the first re-plan (step 4, an
    # evaluation point) the schedule grows to every step `epochs` allows (15 x 4 = 60)
    result = _linear_run(tmp_path, monkeypatch, step_s=FAST, epochs=15, eval_every=4, time_budget_s=5.0,
                         seconds_per_step=1.0)
    assert result.steps == 60
    assert result.replans[0] == {"step": 4, "seconds_per_step": 0.001, "total": 60}
    # the decay ends at step 60: warm-up was 1 step (6% of the first 5), so the last step's factor is 1 / 59
    assert result.history[-1]["lr"] == pytest.approx(0.01 / 59)
    assert result.wall_s == round(60 * FAST, 3)  # the loop's own clock: 60 steps


def test_time_budget_shortens_a_schedule_whose_steps_are_slower_than_estimated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # estimated 1 ms a step for 0.625 s: 625 steps (capped at 25 x 4 = 100); each step takes 62.5 ms, so at the
    # re-plan of step 4, (0.625 - 4 x 0.0625) / 0.0625 = 6 more steps fit, and at step 8 the 2 left still do
    result = _linear_run(tmp_path, monkeypatch, step_s=0.0625, epochs=25, eval_every=4, time_budget_s=0.625,
                         seconds_per_step=0.001)
    assert result.replans == [{"step": 4, "seconds_per_step": 0.0625, "total": 10},
                              {"step": 8, "seconds_per_step": 0.0625, "total": 10}]
    assert result.steps == 10


def test_a_resumed_time_budget_run_keeps_its_replanned_schedule(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    options = {"step_s": FAST, "epochs": 15, "eval_every": 4, "time_budget_s": 5.0, "seconds_per_step": 1.0}
    with pytest.raises(_Stop):
        _linear_run(tmp_path, monkeypatch, stop_at=6, **options)  # re-planned to 60 steps at step 4, checkpointed
    result = _linear_run(tmp_path, monkeypatch, **options)
    # the checkpoint's 60 steps, not the 5 that the options alone give
    assert result.resumed_from == 4 and result.steps == 60


@pytest.mark.slow
def test_resume_after_kill_9(reference, tiny_teacher_dir: Path, sentiment_jsonl: Path, tmp_path: Path) -> None:
    """A subprocess SIGKILLs itself right after step 11 (checkpoint at 8); rerunning resumes exactly."""
    proc = subprocess.run([sys.executable, str(Path(worker.__file__)), str(tiny_teacher_dir), str(sentiment_jsonl),
                           str(tmp_path), "kill@11", "-"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000008"]
    result, final = _run(tiny_teacher_dir, sentiment_jsonl, tmp_path)
    assert result.resumed_from == 8 and result.history == reference[0].history
    for name, tensor in reference[1].items():
        assert torch.equal(final[name], tensor), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_data_parallel_two_cpu_processes_match_one(tiny_teacher_dir: Path, sentiment_jsonl: Path,
                                                   tmp_path: Path) -> None:
    """torchrun with 2 gloo processes, each taking half of every batch, ends where one process ends."""
    from safetensors.torch import load_file

    out = tmp_path / "ddp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(Path(worker.__file__)),
           str(tiny_teacher_dir), str(sentiment_jsonl), str(tmp_path / "work"), "ddp", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp.safetensors.world").read_text() == "2"
    single = worker.run(str(tiny_teacher_dir), str(sentiment_jsonl), str(tmp_path / "single"), dropout=False)
    ddp = load_file(str(out))
    state = single.model.state_dict()
    assert single.world_size == 1 and ddp.keys() == {k for k in state if k in ddp}
    for name, tensor in ddp.items():
        torch.testing.assert_close(tensor, state[name], atol=2e-5, rtol=1e-4)
    moved = max(float((state[k] - v).abs().max()) for k, v in load_file(str(tiny_teacher_dir / "model.safetensors")).items()
                if k in state and state[k].shape == v.shape)
    assert moved > 1e-3  # the weights did train


def test_keep_freed_memory_applies_on_glibc_and_can_be_repeated() -> None:
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected
    assert keep_freed_memory() is expected  # a second call changes nothing and still succeeds
