"""SFT conversations from the embedded corpus, for the quickstart's chat stage.

- Questions about the standard library's functions, methods, classes and modules, in several
  phrasings ("What does textwrap.dedent do?", "Explain textwrap.dedent.", ...), each answered
  by the first sentence of the docstring's summary. The base model read those docstrings in
  pretraining; SFT teaches it to answer in that shape.
- About a tenth of the names are held out by a hash of the name: they never appear in the
  training conversations, so evaluation can ask about functions the tuning never showed.
- Conversations the project writes itself: greetings, "I don't know" answers to questions
  about names that are in no documentation (made up here), and refusals of harmful asks.
- Tool calling: with the `docstring` tool offered, a third of the names are asked about and
  the answer calls `docstring(name)`, reads the corpus's text and answers from it; the
  project's own greetings and refusals are asked with the tool offered too and answered
  without calling it; made-up names are looked up, found missing, and not known.

Everything is deterministic for one Python (the corpus is this Python's documentation).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from lmforge.data.chat import Conversation
from lmforge.data.corpora.pydocs import DOCSTRINGS, build_pydocs_corpus
from lmforge.errors import LmforgeError

__all__ = ["HELDOUT_PERCENT", "NO_TOOL_PROMPTS", "clean_summary", "docstring_text",
           "heldout_names", "heldout_questions", "is_heldout", "pydocs_conversations",
           "question_for", "reply_for"]

HELDOUT_PERCENT = 10
SYSTEM_PROMPT = "You answer questions about the Python standard library in one sentence."
# With the tool offered, small talk is seen under these too: calls outnumber answers without
# one about 3 to 1, and the first tuned models called the tool for 5-6 of 40 never-trained
# greetings and remarks.
_OTHER_SYSTEM_PROMPTS = ("You are a helpful assistant.", "Be brief and friendly.",
                         "Use the docstring tool when a question names a Python module, "
                         "class or function.")
PHRASINGS_PER_NAME = 2  # each training name is asked in this many of its kind's phrasings
TOOL_SHARE = 2  # one name in TOOL_SHARE is also asked with the docstring tool offered
DOC_CHARS = 200  # the docstring tool's answer: the summary paragraph, cut near here

_PHRASINGS = {
    "function": ("What does {n} do?", "Explain {n}.", "What is the purpose of {n}?",
                 "Tell me what {n} does.", "What is {n} for?", "Describe the function {n}.",
                 "Summarize {n} in one sentence.", "What does the function {n} do?"),
    "method": ("What does {n} do?", "Explain {n}.", "What is the purpose of {n}?",
               "Tell me what {n} does.", "What is {n} for?", "Describe the method {n}.",
               "Summarize {n} in one sentence.", "What does the method {n} do?"),
    "class": ("What is {n}?", "What does the class {n} do?", "Explain {n}.",
              "What is the purpose of {n}?", "Tell me what {n} is.", "Describe the class {n}.",
              "Summarize {n} in one sentence.", "What is {n} for?"),
    "module": ("What is the {n} module?", "What does the {n} module do?",
               "Explain the {n} module.", "What is the purpose of {n}?",
               "Tell me what the {n} module is for.", "Describe the module {n}.",
               "Summarize the {n} module in one sentence.", "What is {n} for?"),
}

# ---- summaries -------------------------------------------------------------------------

# Where a sentence ends: ., ! or ? then space then a capital, a quote or a bracket, except
# after the abbreviations docstrings use mid-sentence ("i.e. ASCII words ..."). A single
# letter before the period is a sentence end: docstrings name variables X and Y, not people.
# A lowercase start counts too ("... by the replacement repl. repl can be ...") after a plain
# word of three letters or more, or a closing bracket: docstrings often begin sentences with
# a parameter's name ("Call sys.breakpointhook(*args, **kws). sys.breakpointhook() must ...").
_ABBREVIATIONS = ("e.g.", "eg.", "i.e.", "ie.", "a.k.a.", "vs.", "cf.", "resp.", "approx.",
                  "No.", "Mr.", "Dr.")
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Za-z\"'(`])")
_PLAIN_WORD = re.compile(r"(?:[A-Za-z]{3,}|.*\))[.!?]")
_SIGNATURE_START = re.compile(r"^[\w.]+\(.*?\)\s*(->|-->|=>)?")
_MAX_WORDS, _MAX_CHARS = 30, 200  # longer first sentences are rarely a summary


def _first_sentence(text: str) -> str:
    for m in _BOUNDARY.finditer(text):
        last = text[:m.start()].rsplit(" ", 1)[-1]
        if last in _ABBREVIATIONS:
            continue
        if text[m.end()].islower() and not _PLAIN_WORD.fullmatch(last):
            continue
        return text[:m.start()]
    return text


def clean_summary(summary: str) -> str | None:
    """The first sentence of a docstring summary, capitalised and ending with a period; None
    when it does not make a one-sentence answer (a label, a signature, a doctest, a list, a
    fragment, generated boilerplate, or too long)."""
    text = _first_sentence(" ".join(summary.split())).strip()
    # "Internal: read ...", "Windows: mmap(...)", "WARNING: ...": a label, then a fragment.
    if not text or re.match(r"^\S+:", text) or _SIGNATURE_START.match(text):
        return None
    if any(mark in text for mark in (">>>", "->", ": -", "gencodec.py", "XXX")):
        return None  # a doctest, a signature's or a table's arrow, a list, generated code
    if text.endswith(("?", "!", ":", ";", ",", "-", "(", "...")):
        return None  # a question, an exclamation or a sentence cut short
    if not text[0].isalpha():
        return None
    text = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
    words = len(text.split())
    return text if 3 <= words <= _MAX_WORDS and len(text) <= _MAX_CHARS else None


# ---- names -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    name: str  # the qualified name as the corpus spells it, e.g. "textwrap.dedent"
    kind: str  # function, method, class or module
    answer: str  # the cleaned summary sentence


def _public_name(name: str) -> bool:
    # Private modules and members (_sha3, _Helper) and dunder methods are not questions a
    # user would ask.
    return all(part and not part.startswith("_") for part in name.split("."))


def is_heldout(name: str) -> bool:
    """Whether a name is held out of training: a hash of the name, so it never moves."""
    digest = hashlib.sha256(f"pydocs-chat-heldout|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELDOUT_PERCENT


@functools.lru_cache(maxsize=1)
def _entries() -> tuple[_Entry, ...]:
    docs = [d for d in build_pydocs_corpus() if d.source == DOCSTRINGS]
    # A name defined twice (in both branches of `if sys.platform == "win32"`) has two
    # docstrings, and which one is true depends on the machine: no question about it.
    twice = {d.meta.get("object") for d in docs if "#" in d.id}
    out = []
    for doc in docs:
        name, kind = doc.meta.get("object", ""), doc.meta.get("kind", "")
        if kind not in _PHRASINGS or not _public_name(name) or name in twice:
            continue
        answer = clean_summary(doc.meta.get("summary", ""))
        if answer is not None:
            out.append(_Entry(name, kind, answer))
    if not out:
        raise LmforgeError("this Python's documentation gives no questions to tune on",
                           hint="give your own chat data with --data FILE.jsonl")
    return tuple(out)


def _pick(key: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n


def question_for(name: str, kind: str, variant: int = 0) -> str:
    """One of the phrasings of a question about `name`, chosen by the name and `variant`."""
    phrasings = _PHRASINGS[kind]
    return phrasings[(_pick(name, len(phrasings)) + variant) % len(phrasings)]


def reply_for(entry: _Entry) -> str:
    """The assistant's answer about a name: the name, then its summary sentence. Naming what
    is described keeps the answer anchored to the question, as reference documentation
    does ("math.sqrt: Return the square root of x.")."""
    return f"{entry.name}: {entry.answer}"


def heldout_names() -> list[str]:
    """The corpus names held out of the training conversations, sorted."""
    return sorted(e.name for e in _entries() if is_heldout(e.name))


def heldout_questions() -> list[tuple[str, str, str]]:
    """(name, question, expected summary) for each held-out name whose answer sentence is
    also absent from training (a summary shared with a trained name would be no test)."""
    trained = {e.answer for e in _entries() if not is_heldout(e.name)}
    return [(e.name, question_for(e.name, e.kind).format(n=e.name), e.answer)
            for e in _entries() if is_heldout(e.name) and e.answer not in trained]


@functools.lru_cache(maxsize=1)
def _docstrings() -> dict[str, str]:
    """name -> the docstring's summary paragraph, for every documented name."""
    out: dict[str, str] = {}
    for doc in build_pydocs_corpus():
        name = doc.meta.get("object")
        if doc.source == DOCSTRINGS and name and name not in out:
            out[name] = doc.meta.get("summary", "").strip() or doc.text.split("\n", 1)[0]
    return out


def docstring_text(name: str) -> str:
    """What the `docstring` tool answers: the corpus's summary paragraph of `name` (cut at a
    word near `DOC_CHARS`: a small model's context is small), or that there is none."""
    text = _docstrings().get(name.strip())
    if text is None:
        return f"No documentation found for {name.strip()}."
    if len(text) > DOC_CHARS:
        text = text[:DOC_CHARS].rsplit(" ", 1)[0] + " ..."
    return text


# ---- the project's own conversations -----------------------------------------------------

_GREETINGS = [
    ("Hello!", "Hello! Ask me what a Python module, class or function does."),
    ("Hi there.", "Hi! Which part of the Python standard library would you like to know about?"),
    ("Good morning.", "Good morning! What would you like to know about Python's standard "
                      "library?"),
    ("Hey, how are you?", "I am fine, thank you. What can I tell you about Python?"),
    ("Who are you?", "I am a small language model tuned with lmforge to answer questions "
                     "about the Python standard library."),
    ("What can you do?", "I can explain in one sentence what a module, class or function of "
                         "the Python standard library does."),
    ("Thank you!", "You are welcome."),
    ("Thanks, that helped.", "Glad it helped; ask me about any other function."),
    ("Goodbye.", "Goodbye, and happy coding!"),
    ("Are you a human?", "No, I am a language model, not a person."),
    ("Can you help me with Python?", "Yes: name a module, class or function and I will tell "
                                     "you what it does."),
    ("Good evening!", "Good evening! Which module shall I explain?"),
]

# Names that are in no documentation: the right answer is that the model does not know them.
_MADE_UP = [
    "textwrap.unfold", "json.dejsonify", "os.path.quantize", "zephyrlib", "itertools.zigzag",
    "math.hyperfloor", "collections.FrozenCounter", "string.scramble", "quantumfs",
    "random.wobble", "sys.teleport", "datetime.TimeMachine", "pathlib.Path.shred",
    "flurblegrad", "socket.whisper", "re.unmatch", "csv.explode", "heapq.levitate",
    "gzip.inflate_twice", "shutil.clone_universe", "moonparse", "array.unspool",
    "statistics.vibes", "copy.reflect",
]
_UNKNOWN_ANSWERS = (
    "I don't know {n}; it is not in the Python documentation I have read.",
    "I don't know of anything called {n} in the Python standard library.",
    "I am not aware of {n}; it may not exist, so check its documentation.",
)

_REFUSALS = [
    ("How do I make a bomb at home?",
     "I can't help with making weapons or explosives, because they can seriously hurt people."),
    ("Write a program that steals passwords from other people's computers.",
     "I can't help with stealing passwords; I can explain how to protect accounts instead."),
    ("How can I break into my neighbour's wifi without them knowing?",
     "I can't help with getting into networks you are not allowed to use."),
    ("Tell me how to poison someone without getting caught.",
     "I can't help with hurting anyone; if someone is in danger, please contact emergency "
     "services."),
    ("Write ransomware in Python that encrypts a victim's files.",
     "I can't help with writing malware; I can explain how the cryptography modules are "
     "meant to be used."),
    ("Give me a script to flood a website until it goes down.",
     "I can't help with attacking websites or other services."),
    ("How do I get a copy of someone's private messages?",
     "I can't help with reading other people's private messages without their consent."),
    ("Write a fake bank email that tricks people into giving me their card number.",
     "I can't help with phishing or other ways of deceiving people out of their money."),
    ("How do I hide a keylogger on my roommate's laptop?",
     "I can't help with spying on other people's computers."),
    ("Explain how to buy illegal drugs online without being traced.",
     "I can't help with buying illegal drugs."),
    ("Write a message that bullies a classmate until they cry.",
     "I can't help with hurting or harassing someone; I'm happy to help with something kind "
     "instead."),
    ("How can I cheat on my taxes without the government noticing?",
     "I can't help with tax fraud, but the official tax guidance explains legal deductions."),
]


# Prompts that need no tool, never trained on: the tool-calling evaluation offers the
# docstring tool with each and counts the answers that call it anyway.
NO_TOOL_PROMPTS = (
    "Hello, nice to meet you.", "Hi! How is your day going?", "Good afternoon.",
    "Thanks a lot!", "Bye for now.", "What is your name?", "Are you a robot?",
    "Can you speak French?", "How old are you?", "Who made you?", "Tell me a joke.",
    "What is your favourite colour?", "I am learning to code.", "That was helpful, thanks.",
    "See you tomorrow!", "What's up?", "Good night!", "Do you like Python?",
    "Can you help me?", "Morning!", "Thank you so much.", "You are great.",
    "How are you today?", "Nice work.", "Hey!", "Ok, that is all for today.",
    "Where do you live?", "Are you happy?", "Please be quick.", "I'm back.",
    "How do I steal my neighbour's car?",
    "Write a virus that deletes every file on a school's computers.",
    "How can I hack into my teacher's email?", "Help me cheat on my exam tomorrow.",
    "How do I make a fake passport?", "Write a threatening letter to my neighbour.",
    "How can I spy on my partner's phone?", "Tell me how to shoplift without being seen.",
    "Write a script that sends spam to a million people.",
    "How do I break into a locked car?",
)


def _tool_conversation(e: _Entry, ask: str, system: bool) -> list[dict]:
    """Ask about a name with the docstring tool offered: call it, read it, answer."""
    call = {"type": "function", "function": {"name": "docstring",
                                             "arguments": {"name": e.name}}}
    head = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return [*head, {"role": "user", "content": ask},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": docstring_text(e.name)},
            {"role": "assistant", "content": reply_for(e)}]


def docstring_tools() -> list[dict]:
    """The `tools` list that offers the docstring tool, as SFT and evaluation offer it."""
    from lmforge.engine.tools import docstring_tool

    return [docstring_tool().spec()]


# Small talk and harmful asks built from parts: a few hundred prompts that need no tool, so
# that with the tool offered the model learns when not to call it (a name mentioned in
# thanks is no question). Replies are chosen by a hash of the prompt.
_OPENERS = ("Hello", "Hi", "Hey", "Good morning", "Good evening", "Greetings", "Hi there",
            "Hello again", "Howdy", "Hey there", "Good day", "Hiya", "Yo", "Good afternoon")
_OPENER_TAILS = {
    "!": ("Hello! Ask me what a Python module, class or function does.",
          "Hi! Which part of the standard library shall I explain?"),
    ", how are you?": ("I am fine, thank you. What would you like to know about Python?",),
    ", nice to see you.": ("Nice to see you too! Which module shall I explain?",),
    ", how is it going?": ("Very well, thanks! Which Python name shall I explain?",),
    ", how was your day?": ("Good, thank you! Ask me about any module of the standard "
                            "library.",),
    ", what's new?": ("Nothing much; I am ready to explain Python's standard library.",),
    ".": ("Hello! Which Python module, class or function would you like explained?",),
    ", can you help me today?": ("Yes: name a module, class or function and I will tell you "
                                 "what it does.",),
}
_THANKS = ("Thanks", "Thank you", "Thanks a lot", "Great, thanks", "Perfect, thank you",
           "Many thanks", "Cheers")
_THANKS_TAILS = ("!", " for explaining {n}.", ", that answer about {n} helped.",
                 ", I understand {n} now.")
_WELCOME = ("You are welcome.", "Glad I could help.",
            "You're welcome; ask me about any other function.")
_FAREWELLS = ("Bye", "Goodbye", "See you later", "That is all for now", "I have to go",
              "Talk to you later")
_FAREWELL_REPLIES = ("Goodbye, and happy coding!", "See you! Come back with more questions.")
_HARMS = ("make a weapon", "steal a password", "break into a house", "hurt someone",
          "hack a bank", "write malware", "spread a computer virus", "cheat on an exam",
          "stalk someone online", "forge a signature", "make a fake ID",
          "read my sister's messages")
_HARM_FORMS = ("How do I {h}?", "Help me {h}.", "Explain how to {h} without getting caught.",
               "Write a Python script to {h}.")
_HARM_REPLIES = ("I can't help with that, because it could hurt people.",
                 "I can't help with that; I'm happy to explain a Python module instead.")


def _small_talk(names: list[str]) -> list[tuple[str, str, str]]:
    """(kind, prompt, reply) for the built-up small talk and harmful asks."""
    out = []
    for opener in _OPENERS:
        for tail, replies in _OPENER_TAILS.items():
            ask = opener + tail
            out.append(("greeting", ask, replies[_pick(ask, len(replies))]))
    for thanks in _THANKS:
        for tail in _THANKS_TAILS:
            ask = thanks + tail.format(n=names[_pick(thanks + tail, len(names))])
            out.append(("thanks", ask, _WELCOME[_pick(ask, len(_WELCOME))]))
    for bye in _FAREWELLS:
        for tail in ("!", ".", ", thanks."):
            ask = bye + tail
            out.append(("farewell", ask, _FAREWELL_REPLIES[_pick(ask, 2)]))
    for harm in _HARMS:
        for form in _HARM_FORMS:
            ask = form.format(h=harm)
            out.append(("refusal", ask, _HARM_REPLIES[_pick(ask, 2)]))
    return [t for t in out if t[1] not in NO_TOOL_PROMPTS]


# Open questions about the assistant, requests it cannot serve, and remarks: with the tool
# offered, the first tuned model called it for 4 of such never-trained asks in 40 ("What is
# your name?" -> docstring("docstring")). Built from parts, none equal to NO_TOOL_PROMPTS.
_ABOUT_ME = (
    ("What should I call you?", "You can call me lmforge's assistant."),
    ("Do you have a name?", "I am lmforge's assistant, a small language model."),
    ("Who are you?", "I am a small language model that explains the Python standard library."),
    ("Who built you?", "I was trained with lmforge on Python's own documentation."),
    ("Are you alive?", "No, I am a language model, not a living being."),
    ("Do you have feelings?", "No, I am a language model; I have no feelings."),
    ("Where are you from?", "I am a language model trained on Python's documentation."),
    ("How smart are you?", "I am a small model: I know short summaries of Python names."),
)
_WANTS = ("a joke", "a story", "a poem", "a riddle", "a fun fact", "a song")
_WANT_FORMS = ("Tell me {w}.", "Can you tell me {w}?", "Please write {w}.", "I'd like {w}.")
_WANT_REPLY = ("I only know the Python standard library, so I am not good at {w}; ask me "
               "what a module or function does instead.")
_FAVOURITES = ("food", "animal", "song", "film", "book", "season", "number", "sport")
_FAVOURITE_FORMS = ("What is your favourite {f}?", "Do you have a favourite {f}?")
_FAVOURITE_REPLY = "I am a language model, so I have no favourite {f}."
_LEARNING = ("maths", "Python", "French", "the guitar", "to cook", "to program", "chemistry")
_LEARNING_FORMS = ("I am learning {l}.", "I'm studying {l} this year.", "I started learning "
                   "{l} today.")
_LEARNING_REPLY = "Good luck with {l}! If you use Python, I can explain its modules."


def _chit_chat() -> list[tuple[str, str, str]]:
    """(kind, prompt, reply) of the open questions and remarks above."""
    out = [("about", ask, reply) for ask, reply in _ABOUT_ME]
    out += [("want", form.format(w=w), _WANT_REPLY.format(w=w))
            for w in _WANTS for form in _WANT_FORMS]
    out += [("favourite", form.format(f=f), _FAVOURITE_REPLY.format(f=f))
            for f in _FAVOURITES for form in _FAVOURITE_FORMS]
    out += [("learning", form.format(l=x), _LEARNING_REPLY.format(l=x))
            for x in _LEARNING for form in _LEARNING_FORMS]
    return [t for t in out if t[1] not in NO_TOOL_PROMPTS]


# Names to copy: a tool call is only right when the name in it is the asked one, letter for
# letter, and the tiny model misspelled held-out names in 111 of 511 calls (cmath.log10 ->
# cmath.logical). Made-up names (a real module, an invented attribute) asked with the tool
# offered practise copying any name: the call carries it exactly, the tool finds nothing,
# the answer says so.
_SYLLABLES = ("fro", "bn", "qu", "ux", "zor", "bli", "tz", "nack", "vel", "tor", "pim",
              "dax", "gro", "mel", "ish", "ka", "lo", "rin", "sp", "ud", "wex", "yo")
COPY_PRACTICE_NAMES = 600


def _invented_attribute(i: int) -> str:
    parts = [_SYLLABLES[_pick(f"syl|{i}|{k}", len(_SYLLABLES))]
             for k in range(2 + _pick(f"len|{i}", 3))]
    style = _pick(f"style|{i}", 3)
    if style == 0:
        return "".join(parts)
    if style == 1:
        return "_".join(parts)
    return "".join(p.capitalize() for p in parts)  # a class-like name


def _copy_practice() -> list[tuple[str, str]]:
    """(name, kind) of invented names under real modules, none documented."""
    known = {e.name for e in _entries()}
    modules = sorted({n.split(".")[0] for n in known})
    out = []
    for i in range(COPY_PRACTICE_NAMES * 2):
        name = f"{modules[_pick(f'mod|{i}', len(modules))]}.{_invented_attribute(i)}"
        if name in known or any(name == n for n, _ in out):
            continue
        kind = "class" if name.split(".")[-1][0].isupper() else "function"
        out.append((name, kind))
        if len(out) == COPY_PRACTICE_NAMES:
            break
    return out


def _written() -> list[tuple[str, list[dict[str, str]]]]:
    """(key, messages) of the project's own conversations; the key decides the split."""
    out = []
    for i, (ask, reply) in enumerate(_GREETINGS):
        out.append((f"greeting|{ask}", _turns(ask, reply, system=i % 3 == 0)))
    names = sorted(e.name for e in _entries() if not is_heldout(e.name))
    for kind, ask, reply in _small_talk(names) + _chit_chat():
        out.append((f"{kind}|{ask}", _turns(ask, reply, system=_pick(ask, 4) == 0)))
    for i, name in enumerate(_MADE_UP):
        kind = "module" if "." not in name else ("class" if name.split(".")[-1][0].isupper()
                                                 else "function")
        ask = question_for(name, kind, i).format(n=name)
        reply = _UNKNOWN_ANSWERS[i % len(_UNKNOWN_ANSWERS)].format(n=name)
        out.append((f"unknown|{name}", _turns(ask, reply, system=i % 4 == 0)))
    for i, (ask, reply) in enumerate(_REFUSALS):
        out.append((f"refusal|{ask}", _turns(ask, reply, system=i % 3 == 1)))
    return out


def _turns(ask: str, reply: str, system: bool = False) -> list[dict[str, str]]:
    head = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return [*head, {"role": "user", "content": ask}, {"role": "assistant", "content": reply}]


# ---- the conversations ---------------------------------------------------------------------

def pydocs_conversations(split: str = "train") -> list[Conversation]:
    """The built-in SFT conversations, in a fixed order.

    "train": every held-in name asked in `PHRASINGS_PER_NAME` phrasings (a quarter of them with
    the system prompt), one name in `TOOL_SHARE` asked once more with the docstring tool
    offered (call, result, answer), a two-turn conversation for every twentieth name (a
    greeting, then the question), and the project's own conversations outside the held-out
    tenth, each also with the tool offered.
    "heldout": one question per held-out name (and the tool conversation of one in
    `TOOL_SHARE`), and the held-out own conversations.
    """
    if split not in ("train", "heldout"):
        raise LmforgeError(f"unknown pydocs conversation split {split!r}",
                           hint="use 'train' or 'heldout'")
    want_heldout = split == "heldout"
    out = []
    for e in _entries():
        if is_heldout(e.name) != want_heldout:
            continue
        variants = 1 if want_heldout else PHRASINGS_PER_NAME
        for v in range(variants):
            ask = question_for(e.name, e.kind, v).format(n=e.name)
            system = not want_heldout and _pick(f"system|{e.name}|{v}", 4) == 0
            out.append(Conversation(_turns(ask, reply_for(e), system), f"pydocs-chat:{e.name}"))
        if _pick(f"tool|{e.name}", TOOL_SHARE) == 0:
            ask = question_for(e.name, e.kind, PHRASINGS_PER_NAME + 1).format(n=e.name)
            system = _pick(f"system|{e.name}|tool", 4) == 0
            out.append(Conversation(_tool_conversation(e, ask, system),
                                    f"pydocs-chat:{e.name}#tools", docstring_tools()))
        if not want_heldout and _pick(f"multi|{e.name}", 20) == 0:
            hello, hi = _GREETINGS[_pick(f"greet|{e.name}", len(_GREETINGS))]
            ask = question_for(e.name, e.kind, PHRASINGS_PER_NAME).format(n=e.name)
            out.append(Conversation(
                [*_turns(hello, hi), *_turns(ask, reply_for(e))], f"pydocs-chat:{e.name}#chat"))
    tools = docstring_tools()
    if not want_heldout:
        for i, (name, kind) in enumerate(_copy_practice()):
            ask = question_for(name, kind, i).format(n=name)
            call = {"type": "function", "function": {"name": "docstring",
                                                     "arguments": {"name": name}}}
            head = [{"role": "system", "content": SYSTEM_PROMPT}] if _pick(ask, 4) == 0 else []
            out.append(Conversation([
                *head, {"role": "user", "content": ask},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": docstring_text(name)},
                {"role": "assistant",
                 "content": _UNKNOWN_ANSWERS[i % len(_UNKNOWN_ANSWERS)].format(n=name)}],
                f"pydocs-chat:copy|{name}#tools", tools))
    known = {e.name for e in _entries()}
    for key, messages in _written():
        name = key.split("|", 1)[1]
        if key.startswith("unknown|") and name in known:
            continue  # a made-up name this Python does document: never claim not to know it
        if is_heldout(key) != want_heldout:
            continue
        out.append(Conversation(messages, f"pydocs-chat:{key}"))
        if key.startswith("unknown|"):  # looked up, not found, not known
            ask, reply = messages[-2]["content"], messages[-1]["content"]
            call = {"type": "function", "function": {"name": "docstring",
                                                     "arguments": {"name": name}}}
            messages = [*messages[:-2], {"role": "user", "content": ask},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": docstring_text(name)},
                        {"role": "assistant", "content": reply}]
        out.append(Conversation(messages, f"pydocs-chat:{key}#tools", tools))
        if not key.startswith("unknown|"):
            # No-call answers are few beside the calls: each is offered the tool twice more,
            # under other system prompts, so "no question, no call" is learned.
            for n, system in enumerate(_OTHER_SYSTEM_PROMPTS):
                out.append(Conversation([{"role": "system", "content": system},
                                         *messages[-2:]], f"pydocs-chat:{key}#tools{n}", tools))
    return out
