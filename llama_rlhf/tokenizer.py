"""The tokenizer: any sentencepiece `tokenizer.model` (Llama 2's 32K BPE) loaded through transformers,
or, for the embedded default, a small BPE sentencepiece model trained here deterministically in a
fraction of a second from text the project ships.

The special tokens are defined once, here: BOS `<s>` = 1, EOS `</s>` = 2, pad = `<unk>` = 0 (Llama 2 has
no pad token; byte fallback means `<unk>` never occurs in real text, so it is a safe pad), and the SFT
separator between packed samples (config `tokenizer.sep_token`, EOS by default).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transformers import LlamaTokenizer

from llama_rlhf.config import ConfigError

SP_FILE = "tokenizer.model"
# Chat-template markers become single pieces in the trained tokenizer (Llama 2's own splits them).
TEMPLATE_SYMBOLS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
UNK, BOS, EOS = "<unk>", "<s>", "</s>"


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    sep: int


class Tokenizer:
    """Thin wrapper over the transformers tokenizer: encode/decode without implicit specials."""

    def __init__(self, folder: str | Path, sep_token: str = EOS):
        self.folder = Path(folder)
        self.hf = LlamaTokenizer.from_pretrained(str(self.folder))
        vocab = self.hf.get_vocab()
        if sep_token not in vocab:
            raise ConfigError(f"tokenizer.sep_token: {sep_token!r} is not in the vocabulary of {self.folder}")
        unk = self.hf.unk_token_id if self.hf.unk_token_id is not None else 0
        self.ids = SpecialIds(
            bos=self.hf.bos_token_id, eos=self.hf.eos_token_id, pad=unk, sep=vocab[sep_token]
        )

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int:
        return self.ids.bos

    @property
    def eos_id(self) -> int:
        return self.ids.eos

    @property
    def pad_id(self) -> int:
        return self.ids.pad

    @property
    def sep_id(self) -> int:
        return self.ids.sep

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def save(self, folder: str | Path) -> Path:
        """Copy the sentencepiece model into an HF folder (loads with LlamaTokenizer.from_pretrained)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.folder / SP_FILE, folder / SP_FILE)
        return folder


def load_tokenizer(path: str | Path, sep_token: str = EOS) -> Tokenizer:
    """Load a `tokenizer.model` file or a folder holding one.

    transformers 5 ignores `LlamaTokenizer(vocab_file=...)`, so a bare file is placed in a folder of its
    own under the name `from_pretrained` looks for.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / SP_FILE).is_file() and not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer.path: {path} holds neither {SP_FILE} nor tokenizer.json")
        return Tokenizer(path, sep_token)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer.path: no such file or folder: {path}")
    folder = Path(tempfile.mkdtemp(prefix="llama_rlhf_tok_"))
    shutil.copy2(path, folder / SP_FILE)
    return Tokenizer(folder, sep_token)


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024, sep_token: str = EOS
) -> Tokenizer:
    """Train a Llama-style BPE sentencepiece model (byte fallback, split digits, same special ids as
    Llama 2) and write it as `out_dir/tokenizer.model`. Deterministic: one thread, fixed order."""
    import sentencepiece as spm

    lines = [line for t in texts for line in t.splitlines() if line.strip()]
    if not lines:
        raise ValueError("train_tokenizer: no text to train on")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece=UNK,
        bos_piece=BOS,
        eos_piece=EOS,
        user_defined_symbols=list(TEMPLATE_SYMBOLS),
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SP_FILE).write_bytes(buf.getvalue())
    return Tokenizer(out_dir, sep_token)


def shipped_corpus() -> list[str]:
    """The text the project ships for the tokenizer of the embedded default."""
    corpus = Path(__file__).parent / "data" / "corpus"
    files = sorted(corpus.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no corpus text under {corpus}")
    return [f.read_text(encoding="utf-8") for f in files]


def tokenizer_from_config(tcfg, work_dir: str | Path) -> Tokenizer:
    """`tokenizer.path` if set, else train the embedded default into `work_dir/tokenizer`."""
    if tcfg.path:
        return load_tokenizer(tcfg.path, tcfg.sep_token)
    return train_tokenizer(shipped_corpus(), Path(work_dir) / "tokenizer", tcfg.vocab_size, tcfg.sep_token)
