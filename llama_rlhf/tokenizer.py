"""The tokenizer: any sentencepiece `tokenizer.model` (Llama 2's 32K BPE), encoded by sentencepiece
itself, an HF `tokenizer.json` folder, or, for the embedded default, a small BPE sentencepiece model
trained here deterministically in a fraction of a second from text the project ships.

The special tokens are defined once, here: BOS `<s>` = 1, EOS `</s>` = 2, pad = `<unk>` = 0 (Llama 2 has
no pad token; byte fallback means `<unk>` never occurs in real text, so it is a safe pad), and the SFT
separator between packed samples (config `tokenizer.sep_token`, EOS by default).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from llama_rlhf.config import ConfigError

SP_FILE = "tokenizer.model"
# Chat-template markers become single pieces in the trained tokenizer (Llama 2's own splits them).
TEMPLATE_SYMBOLS = ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
# What a transformers tokenizer folder may hold besides `tokenizer.model` (copied when saving).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    pad: int
    sep: int


class Tokenizer:
    """Encode/decode without implicit specials.

    A sentencepiece `tokenizer.model` is used directly: transformers' Llama tokenizer encodes some text
    differently from the model it was loaded from (a leading space, repeated spaces, special-token
    strings inside user text), and Meta's reference encodes with sentencepiece. A folder holding only a
    `tokenizer.json` (a BPE checkpoint such as SmolLM2) is read with transformers' fast tokenizer.
    """

    def __init__(self, folder: str | Path, sep_token: str = EOS):
        self.folder = Path(folder)
        self._hf = None
        if (self.folder / SP_FILE).is_file():
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=str(self.folder / SP_FILE))
            sep = self.sp.piece_to_id(sep_token)
            if self.sp.id_to_piece(sep) != sep_token:
                sep = None
            unk = self.sp.unk_id()
            bos, eos, pad = self.sp.bos_id(), self.sp.eos_id(), unk if unk >= 0 else 0
        else:
            self.sp = None
            hf = self.hf
            sep = hf.get_vocab().get(sep_token)
            eos = hf.eos_token_id
            bos = hf.bos_token_id if hf.bos_token_id is not None else eos
            pad = next(i for i in (hf.pad_token_id, hf.unk_token_id, eos) if i is not None)
        if sep is None and sep_token == EOS:  # the default names Llama's EOS: any tokenizer's EOS will do
            sep = eos
        if sep is None:
            raise ConfigError(f"tokenizer.sep_token: {sep_token!r} is not in the vocabulary of {self.folder}")
        if bos is None or eos is None or bos < 0 or eos < 0:
            raise ValueError(f"tokenizer.path: {self.folder} defines no BOS/EOS token")
        self.ids = SpecialIds(bos=bos, eos=eos, pad=pad, sep=sep)

    @property
    def hf(self):
        """The transformers tokenizer of the same folder (its chat template, saving); loaded on first use."""
        if self._hf is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(self.folder))
        return self._hf

    @cached_property
    def chat_template(self) -> str | None:
        """The checkpoint's own chat template, if its folder ships one (else Llama 2's format is used).

        A template that renders Llama 2's format (Llama 2 chat checkpoints ship one) counts as none: with
        a sentencepiece model, the exact reference encoding is used rather than transformers' tokenizer."""
        cfg = self.folder / "tokenizer_config.json"
        shipped = (self.folder / "chat_template.jinja").is_file() or (
            cfg.is_file() and "chat_template" in json.loads(cfg.read_text(encoding="utf-8"))
        )
        if not shipped:
            return None
        if self.sp is not None and _renders_llama2(self.hf):
            return None
        return self.hf.chat_template

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.sp is not None else len(self.hf)

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
        if self.sp is not None:
            return self.sp.encode(text)
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = list(ids)
        if self.sp is None:
            return self.hf.decode(ids, skip_special_tokens=skip_special)
        if skip_special:  # pad is `<unk>`, which sentencepiece would render as " ⁇ "
            drop = {self.ids.bos, self.ids.eos, self.ids.pad}
            ids = [i for i in ids if i not in drop]
        return self.sp.decode(ids)

    def save(self, folder: str | Path) -> Path:
        """Copy the tokenizer files into an HF folder (loads with AutoTokenizer.from_pretrained)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (SP_FILE, *HF_TOKENIZER_FILES):
            if (self.folder / name).is_file():
                shutil.copy2(self.folder / name, folder / name)
        if self.sp is not None and not (folder / "tokenizer_config.json").is_file():
            # without it AutoTokenizer guesses from config.json and drops sentencepiece's leading space
            piece = self.sp.id_to_piece
            (folder / "tokenizer_config.json").write_text(json.dumps({
                "tokenizer_class": "LlamaTokenizer", "bos_token": piece(self.bos_id), "eos_token": piece(self.eos_id),
                "unk_token": piece(self.pad_id), "add_bos_token": True, "add_eos_token": False,
            }, indent=1))
        return folder


def _renders_llama2(hf) -> bool:
    """Whether an HF tokenizer's chat template renders probe dialogs exactly as Llama 2's format does."""
    from llama_rlhf.data.chat import render

    turns = [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"},
             {"role": "user", "content": "d"}]
    for probe in (turns, [{"role": "system", "content": "s"}, *turns]):
        try:
            text = hf.apply_chat_template(probe, tokenize=False)
        except Exception:  # a template that refuses the probe is not Llama 2's
            return False
        if text != render(probe):
            return False
    return True


def load_tokenizer(path: str | Path, sep_token: str = EOS) -> Tokenizer:
    """Load a `tokenizer.model` file or a folder holding one.

    A bare file is placed in a folder of its own under the name `from_pretrained` looks for, so the
    transformers tokenizer (chat template, saving) can be loaded from it too.
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


def tokenizer_from_config(tcfg, work_dir: str | Path, init_checkpoint: str | None = None) -> Tokenizer:
    """`tokenizer.path` if set, else the tokenizer of `model.init_checkpoint`'s folder, else train the
    embedded default into `work_dir/tokenizer`."""
    if tcfg.path:
        return load_tokenizer(tcfg.path, tcfg.sep_token)
    if init_checkpoint:
        folder = Path(init_checkpoint)
        if not (folder / SP_FILE).is_file() and not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"model.init_checkpoint: {folder} holds neither {SP_FILE} nor tokenizer.json; "
                                    "set tokenizer.path")
        return load_tokenizer(folder, tcfg.sep_token)
    return train_tokenizer(shipped_corpus(), Path(work_dir) / "tokenizer", tcfg.vocab_size, tcfg.sep_token)
