"""General-domain text for LM distillation, written by the teacher itself (sequence-level KD data).

    prompts = teacher_prompts(300, seed=0)                    # diverse instructions: forms x topics, seeded
    rows = generate_corpus(generator, prompts, max_new_tokens=256, seed=0)
    rows[0]      # {"prompt": "Write a news article about ...", "text": "...", "tokens": 241}

The generator is the runtime's (`edgellm.runtime.generate.Generator`, the teacher's fused 8-bit ONNX Runtime model
in the pipeline): prompts decoded `batch_size` at a time in one shared KV buffer (`Generator.tokens_batch`),
sampling in numpy, one seed per prompt (`seed + index`), so the same prompts, seed and batch size give the same
corpus on the same machine and ONNX Runtime build. Each prompt goes through the teacher's chat template when it
has one. `corpus_texts` gives the student each row as the conversation it came from (the chat template's turns,
then the reply: the format a chat model is prompted in) or the reply alone. The prompt forms ask for the kinds of
text a general assistant writes (explanations, stories, letters, news, advice, lists), over topics from everyday
life, science, history, work and culture.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgellm.errors import ConfigError, DataError

__all__ = ["PROMPT_FORMS", "PROMPT_TOPICS", "SAMPLING", "teacher_prompts", "generate_corpus", "read_corpus",
           "corpus_texts"]

log = logging.getLogger(__name__)

PROMPT_FORMS = (
    "Write a short essay about {topic}.",
    "Explain {topic} to a curious teenager.",
    "Tell a short story that involves {topic}.",
    "Write a news article about {topic}.",
    "Describe {topic} in detail.",
    "What are the advantages and disadvantages of {topic}?",
    "Write a letter to a friend about {topic}.",
    "Give practical advice about {topic}.",
    "Write a blog post about {topic}.",
    "Summarize what people should know about {topic}.",
    "Write a product description related to {topic}.",
    "Write a dialogue between two people discussing {topic}.",
)

PROMPT_TOPICS = (
    "cooking at home", "the history of Rome", "climate change", "learning a language", "space exploration",
    "city gardens", "the human heart", "saving money", "a rainy day", "electric cars", "the ocean",
    "public libraries", "volcanoes", "friendship", "the printing press", "healthy sleep", "chess", "coffee",
    "remote work", "ancient Egypt", "photosynthesis", "a job interview", "birds in winter", "music lessons",
    "the stock market", "mountain hiking", "vaccines", "old castles", "recycling", "the Moon", "bicycles",
    "a small village", "artificial intelligence", "the French Revolution", "rivers", "time management",
    "a football match", "the immune system", "bread baking", "renewable energy", "museums", "earthquakes",
    "a family holiday", "honey bees", "the internet", "painting", "trains", "deserts", "a birthday party",
    "first aid", "the solar system", "newspapers", "a new neighbour", "forests", "smartphones", "poetry",
    "the Industrial Revolution", "dinosaurs", "a broken laptop", "elections", "a long flight", "mathematics",
    "theatre", "farming", "a lost dog", "tea", "bridges", "the weather", "online shopping", "a school trip",
)


def teacher_prompts(count: int, seed: int) -> list[str]:
    """`count` distinct instructions (form x topic) in a seeded order; repeats only past forms x topics."""
    if count < 0:
        raise ConfigError(f"teacher prompt count must be >= 0, not {count}")
    pairs = [(f, t) for f in PROMPT_FORMS for t in PROMPT_TOPICS]
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(pairs))]
    chosen = [pairs[order[i % len(pairs)]] for i in range(count)]
    return [form.format(topic=topic) for form, topic in chosen]


SAMPLING = {"temperature": 0.8, "top_p": 0.95}  # how the teacher's replies are sampled (recorded with the corpus)


def generate_corpus(generator: Any, prompts: Sequence[str], *, max_new_tokens: int, seed: int,
                    temperature: float = SAMPLING["temperature"], top_p: float = SAMPLING["top_p"],
                    batch_size: int = 16) -> list[dict[str, Any]]:
    """The teacher's reply to each prompt, sampled (`temperature`, `top_p`, seed `seed + i` for prompt i), with its
    token count, `batch_size` prompts decoded together (`Generator.tokens_batch`; SmolLM2's 8-bit model on this
    CPU: 230 tokens/s at 16, 198 at 8); empty replies are dropped."""
    rows = []
    started = time.perf_counter()
    produced = 0
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        ids = [generator.user_prompt_ids(p) for p in chunk]
        outputs = generator.tokens_batch(ids, max_new_tokens, temperature=temperature, top_p=top_p,
                                         seeds=[seed + start + i for i in range(len(chunk))])
        for prompt, tokens in zip(chunk, outputs):
            produced += len(tokens)
            text = generator.decode(tokens).strip()
            if text:
                rows.append({"prompt": prompt, "text": text, "tokens": len(tokens)})
        log.info("teacher corpus: %d / %d texts, %.0f tokens/s", min(start + batch_size, len(prompts)), len(prompts),
                 produced / (time.perf_counter() - started))
    return rows


def read_corpus(path: Path) -> list[dict[str, Any]]:
    """The rows of a corpus written as JSON lines ({"prompt", "text", "tokens"} per line) that have a text; a line
    that is not such a row is a DataError naming the file and line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not JSON ({e.msg}); delete the corpus stage to write it "
                            "again") from e
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("text"), str)):
            raise DataError(f"{path}, line {number}: not a corpus row (a prompt and a text)")
        rows.append(row)
    return [r for r in rows if r["text"]]


def corpus_texts(rows: Sequence[dict[str, Any]], tokenizer: Any, *, chat: bool) -> list[str]:
    """Training texts of corpus rows: with `chat` and a tokenizer that has a chat template, each row as that
    template writes the user's prompt and the assistant's reply (special tokens as text: the tokenizer maps them
    back); else the reply alone."""
    if not (chat and getattr(tokenizer, "chat_template", None)):
        return [r["text"] for r in rows]
    return [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                           {"role": "assistant", "content": r["text"]}], tokenize=False)
            for r in rows]
