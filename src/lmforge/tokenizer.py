"""Byte-level BPE tokenizer with chat special tokens, on Hugging Face `tokenizers`.

Byte-level means every string encodes (no unknown token) and decodes back exactly: there is
no normalizer, and all 256 bytes are in the vocabulary. The special tokens have fixed ids
0..6. Text that merely contains a special token's spelling, such as "<|bos|>" in a user's
message, encodes as ordinary text, so no input can inject a control token.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.chat_format import CHAT_TEMPLATE_JINJA, chat_turns
from lmforge.errors import LmforgeError
from lmforge.registry.atomic import atomic_write_text

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END)  # ids 0..6, in this order
BOS_ID, EOS_ID, PAD_ID, SYSTEM_ID, USER_ID, ASSISTANT_ID, END_ID = range(len(SPECIAL_TOKENS))
ROLE_IDS = {"system": SYSTEM_ID, "user": USER_ID, "assistant": ASSISTANT_ID}

def _byte_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters back to the bytes they encode."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:  # unprintable bytes are shifted past 255
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                    show_progress: bool = True) -> Tokenizer:
    """Train a byte-level BPE of at most `vocab_size` tokens (fewer if the text runs out)."""
    floor = 256 + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size <= floor:
        raise LmforgeError(
            f"vocab_size {vocab_size!r} is too small: it must exceed {floor} "
            f"(256 byte tokens and {len(SPECIAL_TOKENS)} special tokens)",
            hint="use a few thousand for small models, 32000 or more for large ones",
        )
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise LmforgeError(f"min_frequency must be a positive integer, not {min_frequency!r}")
    inner = tokenizers.Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    seen = [0]

    def counted() -> Iterable[str]:
        for text in texts:
            if not isinstance(text, str):
                raise LmforgeError(f"tokenizer training text is {type(text).__name__}, not str")
            seen[0] += bool(text)
            yield text

    inner.train_from_iterator(counted(), trainer=trainer)
    if seen[0] == 0:
        raise LmforgeError("no text to train the tokenizer on",
                           hint="check that the dataset holds documents with text")
    return Tokenizer(inner)


class Tokenizer:
    """An lmforge tokenizer: a byte-level BPE whose first ids are `SPECIAL_TOKENS`."""

    bos_id, eos_id, pad_id, end_id = BOS_ID, EOS_ID, PAD_ID, END_ID
    system_id, user_id, assistant_id = SYSTEM_ID, USER_ID, ASSISTANT_ID

    def __init__(self, inner: tokenizers.Tokenizer):
        added = inner.get_added_tokens_decoder()
        for i, tok in enumerate(SPECIAL_TOKENS):
            if i not in added or added[i].content != tok or not added[i].special:
                raise LmforgeError(f"not an lmforge tokenizer: special token {tok} is not id {i}",
                                   hint="train one with `lmforge tokenizer train --input FILES`")
        if not isinstance(inner.decoder, decoders.ByteLevel):
            raise LmforgeError("not an lmforge tokenizer: it is not byte-level",
                               hint="train one with `lmforge tokenizer train --input FILES`")
        inner.encode_special_tokens = True  # "<|bos|>" inside text stays text
        self.inner = inner
        self._token_bytes: list[bytes] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json`, or a folder holding one (such as a model folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise LmforgeError(f"{path}: no tokenizer file there",
                               hint="train one with `lmforge tokenizer train --input FILES`, "
                                    "or check the path")
        try:
            inner = tokenizers.Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception on bad files
            raise LmforgeError(f"{path}: not a valid tokenizer.json ({e})") from None
        return cls(inner)

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` atomically; `transformers` and `tokenizers` both load it."""
        return atomic_write_text(path, self.inner.to_str(pretty=True))

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts in parallel (the Rust side uses all cores)."""
        return [e.ids for e in self.inner.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids back to text; ids outside the vocabulary (model padding) are dropped."""
        return self.inner.decode(list(ids), skip_special_tokens=skip_special)

    def id_to_token(self, token_id: int) -> str | None:
        return self.inner.id_to_token(token_id)

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for (special tokens: their spelling), built once."""
        if self._token_bytes is None:
            alphabet = _byte_alphabet()
            table = []
            for i in range(self.vocab_size):
                tok = self.inner.id_to_token(i) or ""
                table.append(tok.encode() if i < len(SPECIAL_TOKENS)
                             else bytes(alphabet[c] for c in tok))
            self._token_bytes = table
        return self._token_bytes

    def stream_decoder(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                    tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        """Token ids of a conversation, and a mask that is 1 where SFT trains.

        Layout: <|bos|> then per turn <|role|> text <|end|>, the text as `chat_format`
        writes it (tools offered in the system turn, tool calls in the assistant's, tool
        results as user turns); the generation prompt appends <|assistant|>. The mask covers
        assistant turns (their tool calls too) and their <|end|>.
        """
        ids, mask = [BOS_ID], [0]
        for role, text in chat_turns(messages, tools):
            body = self.encode(text) + [END_ID]
            ids += [ROLE_IDS[role], *body]
            mask += [0] + [int(role == "assistant")] * len(body)
        if add_generation_prompt:
            ids.append(ASSISTANT_ID)
            mask.append(0)
        return ids, mask


class StreamDecoder:
    """Decode generated ids one at a time, releasing text only as whole characters.

    A character of several UTF-8 bytes can be split over tokens; its first bytes are held
    back until the rest arrive, so a stream never prints half a character as garbage.
    """

    def __init__(self, tok: Tokenizer, skip_special: bool = False):
        self._table = tok.token_bytes()
        self._skip = len(SPECIAL_TOKENS) if skip_special else 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, ids: int | Iterable[int]) -> str:
        """Take one id or several; return the text they complete (maybe "")."""
        ids = [ids] if isinstance(ids, int) else ids
        data = b"".join(self._table[i] for i in ids if self._skip <= i < len(self._table))
        return self._utf8.decode(data)

    def flush(self) -> str:
        """End of stream: return whatever is held back (an incomplete tail becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


def hf_tokenizer_files(tok: Tokenizer, model_max_length: int | None = None
                       ) -> dict[str, dict]:
    """Contents of tokenizer_config.json and special_tokens_map.json for a HF model folder.

    Write them next to `tokenizer.json` (from `Tokenizer.save`).
    """
    extra = [SYSTEM, USER, ASSISTANT, END]
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
               "additional_special_tokens": extra}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "chat_template": CHAT_TEMPLATE_JINJA,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # keep decoding exact
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}
