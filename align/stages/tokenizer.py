"""tokenizer stage: a byte-level BPE trained with `tokenizers`, saved as a PreTrainedTokenizerFast.

Byte-level means no unknown tokens and exact byte round trips, which is what bits-per-byte needs.
``eval_fraction`` keeps the end of the text out of the merges, cut exactly where the pretrain stage
cuts its held-out text (``pretrain.holdout_split``), so held-out bits per byte are measured on text
the tokenizer never saw.
The chat template wraps each assistant turn in ``{% generation %}`` with its end-of-turn token
inside, so TRL's ``assistant_only_loss`` trains the model to stop.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from align.errors import AlignError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]

# Every turn ends with EOS, so generation stops at the end of the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|eos|>{% endgeneration %}"
    "{% else %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|eos|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

REQUIRED = ("dataset",)
DATASET_KEYS = ("dataset",)
EXPECTED = {"dataset": None}  # any format: the text of a text column or of chat turns (see text_column)
KEYS = {"dataset": "the text to learn merges from (a language-modelling dataset)",
        "vocab_size": "number of tokens including the special ones (default 4096)",
        "min_frequency": "least count for a merge (default 2)",
        "text_column": "column with the text (default: text, or the chat turns of a conversational dataset)",
        "eval_fraction": "share of the text, at its end, not learned from (default 0): the pretrain stage's "
                         "eval_fraction on the same dataset, so that its held-out text stays unseen"}
TYPES = {"vocab_size": int, "min_frequency": int, "text_column": str, "eval_fraction": float}


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE and wrap it with bos/eos/pad and the chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def dataset_texts(ds, column: str | None = None) -> Iterable[str]:
    """Plain text to train merges on, from a text column or from the contents of chat turns."""
    if column is None:
        column = "text" if "text" in ds.column_names else "messages" if "messages" in ds.column_names else None
    if column is None:
        raise AlignError(f"tokenizer: the dataset has columns {ds.column_names}; set text_column to the one with text.")
    for value in ds[column]:
        if isinstance(value, str):
            yield value
        else:
            for message in value:
                yield message["content"]


def text_column(spec: dict, ds, where: str, label: str) -> str:
    """The column the merges are learned from: ``text_column``, else text, else the chat turns of messages."""
    column = spec.get("text_column") or ("text" if "text" in ds.column_names else "messages")
    if column not in ds.column_names:
        raise AlignError(f"{where}.text_column: {label} has no column {column!r}; its columns are {ds.column_names}.")
    return column


def check_dataset(spec: dict, key: str, ds, where: str, label: str) -> None:
    text_column(spec, ds, where, label)


def run(ctx) -> dict:
    from align.stages.pretrain import holdout_split

    ds = ctx.dataset("dataset")
    vocab_size = int(ctx.spec.get("vocab_size", 4096))
    column = text_column(ctx.spec, ds, f"stages.{ctx.name}", ctx.where("dataset"))
    texts, heldout = holdout_split(dataset_texts(ds, column), float(ctx.spec.get("eval_fraction", 0)),
                                   where=ctx.where("eval_fraction"))
    tokenizer = train_bpe(texts, vocab_size, int(ctx.spec.get("min_frequency", 2)))
    if ctx.is_main_process:
        tokenizer.save_pretrained(ctx.out_dir)
    sample = next((t for t in texts if t), "")[:2000]
    n_tokens = len(tokenizer(sample)["input_ids"])
    return {"vocab_size": len(tokenizer), "bytes_per_token_sample": round(len(sample.encode()) / max(n_tokens, 1), 3),
            "characters_learned_from": sum(map(len, texts)), "characters_held_out": sum(map(len, heldout))}
