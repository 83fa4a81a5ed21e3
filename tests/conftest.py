"""Shared fixtures: a tiny corpus shaped exactly like the pinned npm tarballs, written by the tests themselves.

No network: the fixture tarballs are placed where `ntng data` keeps verified downloads, and the pins are
swapped for the fixtures' own sha512, so the real build (verification, reading, splitting, tokenizers,
packing) runs end to end on a few hundred kilobytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import tarfile
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("NTNG_PRECISION", "fp32")  # exact, machine-independent numbers in tests
if "PYTEST_XDIST_WORKER" in os.environ:
    # `make test` runs two workers on two cores: one thread each (and in the kernels and CLIs they start), so that
    # they share the cores instead of fighting over them. Set before any test module imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_VOCAB = 400
# `tiny`: the smoke preset at a vocabulary the fixture corpus can fill, declared the way a user would declare a
# custom preset (NTNG_PRESETS_FILE), so subprocesses (the CLI, papermill kernels) see it too.
TINY_PRESET = {"name": "tiny", "base": "smoke", "vocab_size": TINY_VOCAB, "t5": {"input_len": 32},
               "bert_recipe": {"eval_sequences": 32}, "t5_recipe": {"eval_sequences": 32}}
_presets_dir = tempfile.mkdtemp(prefix="ntng-test-presets-")
os.environ["NTNG_PRESETS_FILE"] = str(Path(_presets_dir) / "presets.json")
Path(os.environ["NTNG_PRESETS_FILE"]).write_text(json.dumps([TINY_PRESET]))

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "ship", "whale", "sea", "captain", "congress", "nation", "people", "government", "year", "war", "peace", "law", "trade", "money", "state", "union", "freedom", "river", "house", "bank", "market", "report", "jury", "election", "city", "court", "money", "school", "church", "music", "night", "morning", "letter", "house", "window", "garden", "engine", "station", "island", "mountain", "summer", "winter", "story", "friend", "mother", "father", "brother", "sister", "science", "theory", "method", "result", "energy", "motion", "sample", "email", "offer", "free", "click", "price", "order", "account"]
SPAM_WORDS = ["free", "offer", "click", "money", "winner", "cash", "prize", "credit", "urgent", "limited", "deal", "buy", "now", "order"]


def sentence(rng: random.Random, words=WORDS, n=None) -> str:
    n = n or rng.randint(6, 18)
    text = " ".join(rng.choice(words) for _ in range(n))
    return text[0].upper() + text[1:] + rng.choice(".?!")


def paragraph(rng: random.Random, sentences: int, words=WORDS) -> str:
    return " ".join(sentence(rng, words) for _ in range(sentences))


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_fixture_tarballs(raw_dir: Path, seed: int = 0) -> None:
    """Three small tarballs with the pinned packages' file layout and formats."""
    from ntng.data import sources as src

    rng = random.Random(seed)
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(raw_dir / src.STDLIB.filename, "w:gz") as tar:
        presidents = [("george_washington", "n"), ("thomas_jefferson", "dr"), ("abraham_lincoln", "r"),
                      ("franklin_d_roosevelt", "d"), ("ronald_reagan", "r"), ("barack_obama", "d")]
        for i in range(24):
            who, party = presidents[i % len(presidents)]
            year = 1790 + 9 * i
            rec = {"year": year, "name": who.replace("_", " ").title(), "party": party,
                   "text": paragraph(rng, 40)}
            _add(tar, f"package/sotu/data/{year}_{who}_{party}.json", json.dumps(rec))
            _add(tar, f"package/sotu/data/{year}_{who}_{party}.txt", rec["text"])
        for c in range(1, 9):
            _add(tar, f"package/moby-dick/data/chapter_{c}.txt",
                 f"CHAPTER {c}. Loomings.\n\n" + "\n\n".join(paragraph(rng, 6) for _ in range(4)))
        _add(tar, "package/moby-dick/data/contents.txt", "not a chapter")
        for group, n in (("easy-ham-1", 30), ("hard-ham-1", 10), ("spam-1", 20), ("spam-2", 10)):
            for k in range(n):
                words = SPAM_WORDS if group.startswith("spam") else WORDS
                body = paragraph(rng, 4, words)
                raw = (f"From someone@example.com  Thu Aug 22 13:17:22 2002\nReceived: from localhost\n"
                       f"Subject: {sentence(rng, words, 5)}\n\n<p>{body}</p>")
                ident = f"{k:05d}"
                _add(tar, f"package/spam-assassin/data/{group}/{ident}.abc{k:04x}.json",
                     json.dumps({"id": ident, "group": group, "checksum": {}, "text": raw}))
        _add(tar, "package/README.md", "fixture")
    with tarfile.open(raw_dir / src.BROWN.filename, "w:gz") as tar:
        for genre in "abkr":
            for k in range(1, 7):
                paras = []
                for _ in range(5):
                    tagged = " ".join(f"{w}/nn" for w in sentence(rng).rstrip(".?!").split()) + " ./."
                    paras.append("\t" + tagged)
                _add(tar, f"package/c{genre}{k:02d}", "\n\n\n".join(paras))
        _add(tar, "package/cats.txt", "ca01 news\n")
        _add(tar, "package/README", "fixture")
    with tarfile.open(raw_dir / src.NLP_CORPUS.filename, "w:gz") as tar:
        for f in range(3):
            _add(tar, f"package/builds/doc-{f}.json", json.dumps([sentence(rng) for _ in range(250)]))


def fixture_sources(raw_dir: Path):
    from ntng.data import sources as src

    return tuple(dataclasses.replace(s, integrity=src.sri_sha512(raw_dir / s.filename)) for s in src.SOURCES)


def prepare_fixture_data(data_dir: Path, monkeypatch) -> Path:
    """Fixture tarballs in data_dir/raw (where `ntng data` keeps verified downloads), pins pointing at them."""
    from ntng.data import sources as src

    write_fixture_tarballs(data_dir / "raw")
    pins = fixture_sources(data_dir / "raw")
    monkeypatch.setattr(src, "SOURCES", pins)
    for name, pin in zip(("STDLIB", "BROWN", "NLP_CORPUS"), pins, strict=True):
        monkeypatch.setattr(src, name, pin)
    return data_dir


@pytest.fixture
def fixture_env(tmp_path, monkeypatch):
    """A data dir ready to build from the fixture tarballs (nothing built yet)."""
    return prepare_fixture_data(tmp_path / "data", monkeypatch)


@pytest.fixture(scope="session")
def built_fixture(tmp_path_factory):
    """One fixture build shared by read-only tests (building takes a few seconds)."""
    from ntng.data import corpus as data

    mp = pytest.MonkeyPatch()
    data_dir = prepare_fixture_data(tmp_path_factory.mktemp("built") / "data", mp)
    manifest = data.build_data(data_dir, presets=["tiny"], log=lambda m: None)
    yield data_dir, manifest
    mp.undo()
