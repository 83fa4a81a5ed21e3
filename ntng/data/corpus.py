"""The data pipeline: sources -> corpus + tasks -> tokenizers -> packed sequences with stable example ids.

Layout under the data directory (default ./data, or $NTNG_DATA_DIR):

    raw/                       the verified npm tarballs
    tasks/<task>/              labelled stand-ins for GLUE (datasets DatasetDict: train, dev)
    <corpus>/corpus/           pre-training documents (DatasetDict: train, validation; held out by document)
    <corpus>/tokenizers/       wordpiece-<V>.json (BERT), unigram-<V>.json (T5, 100 sentinels on top)
    <corpus>/packed/<name>/    fixed-length token windows with `example_id` (DatasetDict: train, validation)
    manifest.json, README.md   what was built, from what, under which license, and how big it is

Every artifact is written under a temporary name and renamed into place, so an interrupted build never leaves a
half-written directory behind; a second call finds everything in place and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ntng.data import sources as src
from ntng.data import vocab
from ntng.errors import RunError, UsageError
from ntng.files import atomic_path, remove_temporaries, write_text_atomic
from ntng.presets import PRESETS, Preset, get_preset

DATA_FORMAT = 1  # bump when the layout or any build rule changes: old builds are then rebuilt
SPLIT_SEED = 1234  # fixes which documents are held out; never change it casually
VALIDATION_FRACTION = 0.03  # of each source's documents
TASK_DEV_FRACTION = 0.2
PASSAGE_WORDS = 120  # Brown and SOTU tasks classify passages of about this many words
CORPORA = ("offline", "c4")
C4_SOURCE = "allenai/c4"
C4_FILES = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}

Log = Callable[[str], None]


def default_data_dir() -> Path:
    return Path(os.environ.get("NTNG_DATA_DIR", "data"))


# --- small atomic-write helpers ------------------------------------------------------------------------

def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", make_parent=True)


def _save_dataset_atomic(dataset, target: Path) -> None:
    """save_to_disk into a temporary sibling, then rename: the target is either whole or absent."""
    with atomic_path(target, make_parent=True) as tmp:
        dataset.save_to_disk(str(tmp))


# --- splits ---------------------------------------------------------------------------------------------

def split_by_document(doc_ids: list[str], groups: list[str], fraction: float, seed: int = SPLIT_SEED) -> set[str]:
    """The doc ids held out: `fraction` of each group's documents (at least one), chosen by a fixed seed.

    Depends only on the set of ids, not on their order, so it is stable across machines and rebuilds.
    """
    held_out: set[str] = set()
    by_group: dict[str, list[str]] = {}
    for doc_id, group in zip(doc_ids, groups, strict=True):
        by_group.setdefault(group, []).append(doc_id)
    for group in sorted(by_group):
        ids = sorted(by_group[group])
        rng = np.random.default_rng([seed, int(hashlib.sha256(group.encode()).hexdigest()[:8], 16)])
        n = max(1, round(fraction * len(ids))) if len(ids) > 1 else 0
        held_out.update(ids[i] for i in rng.permutation(len(ids))[:n])
    return held_out


def _sentence_passages(text: str, words_per_passage: int = PASSAGE_WORDS) -> list[str]:
    """Consecutive sentences grouped into passages of about `words_per_passage` words."""
    sentences = re.split(r"(?<=[.!?])\s+", text.replace("\n", " "))
    passages, current, count = [], [], 0
    for sentence in sentences:
        current.append(sentence)
        count += len(sentence.split())
        if count >= words_per_passage:
            passages.append(" ".join(current))
            current, count = [], 0
    if count >= words_per_passage // 3:  # a short tail is dropped rather than padded with noise
        passages.append(" ".join(current))
    return passages


# --- corpus and tasks -----------------------------------------------------------------------------------

@dataclass
class Documents:
    """Everything read from the sources, in a fixed order."""

    pretrain: list[dict]  # doc_id, source, text
    sotu: list[dict]
    brown: list[dict]
    spam: list[dict]


def read_offline_sources(raw_dir: Path, log: Log = print) -> Documents:
    paths = {s.package: src.fetch_tarball(s, raw_dir, log) for s in src.SOURCES}
    stdlib = src.read_stdlib(paths[src.STDLIB.package])
    brown = src.read_brown(paths[src.BROWN.package])
    nlp = src.read_nlp_corpus(paths[src.NLP_CORPUS.package])
    pretrain = [{"doc_id": d["doc_id"], "source": d["source"], "text": d["text"]}
                for d in stdlib["sotu"] + stdlib["moby_dick"] + brown + nlp]
    return Documents(pretrain=pretrain, sotu=stdlib["sotu"], brown=brown, spam=stdlib["spam_assassin"])


def build_corpus_dataset(docs: list[dict]):
    """DatasetDict(train, validation) of documents, the validation documents held out per source."""
    import datasets

    held_out = split_by_document([d["doc_id"] for d in docs], [d["source"] for d in docs], VALIDATION_FRACTION)
    features = datasets.Features({k: datasets.Value("string") for k in ("doc_id", "source", "text")})

    def table(rows):
        return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)

    return datasets.DatasetDict({
        "train": table([d for d in docs if d["doc_id"] not in held_out]),
        "validation": table([d for d in docs if d["doc_id"] in held_out]),
    })


TASKS = {
    "spam_ham": "SpamAssassin emails (subject + body): spam or ham",
    "brown_genre": "Brown corpus passages: which of 15 genres",
    "sotu_party": "State of the Union passages: Democratic or Republican president",
}


def build_task_datasets(documents: Documents) -> dict:
    """The three labelled stand-ins for GLUE, each split into train/dev by document (no passage leaks)."""
    import datasets

    def task(examples: list[dict], labels: list[str]):
        label_of_doc = {e["doc_id"]: e["label"] for e in examples}  # passages share their document's label
        held_out = split_by_document(list(label_of_doc), list(label_of_doc.values()), TASK_DEV_FRACTION)
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=labels),
                                      "doc_id": datasets.Value("string")})

        def table(rows):
            return datasets.Dataset.from_dict(
                {"text": [r["text"] for r in rows], "label": [labels.index(r["label"]) for r in rows],
                 "doc_id": [r["doc_id"] for r in rows]}, features=features)

        # the held-out set is chosen over documents; a document's passages all go the same way
        return datasets.DatasetDict({"train": table([e for e in examples if e["doc_id"] not in held_out]),
                                     "dev": table([e for e in examples if e["doc_id"] in held_out])})

    def passages(docs, label_of):
        out = []
        for d in docs:
            for i, passage in enumerate(_sentence_passages(d["text"])):
                out.append({"doc_id": d["doc_id"], "passage": i, "text": passage, "label": label_of(d)})
        return out

    spam = [{"doc_id": d["doc_id"], "text": d["text"], "label": d["label"]} for d in documents.spam]
    brown = passages(documents.brown, lambda d: d["genre"])
    sotu = passages([d for d in documents.sotu if d["party"] in ("democratic", "republican")], lambda d: d["party"])
    return {
        "spam_ham": task(spam, ["ham", "spam"]),
        "brown_genre": task(brown, sorted(src.BROWN_GENRES.values())),
        "sotu_party": task(sotu, ["democratic", "republican"]),
    }


def read_c4(source: str = C4_SOURCE, max_train_docs: int = 200_000, max_validation_docs: int = 5_000,
            data_files: dict | None = None) -> list[dict]:
    """Documents streamed from C4 (`allenai/c4`, English) through `datasets`; needs the hub (or a local mirror
    laid out like the hub repo, given as `source`). C4's own validation file is the held-out split."""
    import datasets

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" and not Path(source).exists():
        raise UsageError("--corpus c4 streams allenai/c4 from the hub, but HF_DATASETS_OFFLINE=1; unset it on a "
                         "machine with network access, or point --c4-source at a local mirror")
    try:
        stream = datasets.load_dataset(source, data_files=data_files or C4_FILES, streaming=True)
    except Exception as exc:  # the hub's errors are many; the user needs one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"cannot open C4 at {source}: {reason}") from exc
    docs = []
    for split, limit in (("train", max_train_docs), ("validation", max_validation_docs)):
        for i, row in enumerate(stream[split]):
            if i >= limit:
                break
            docs.append({"doc_id": f"c4/{split}/{i:07d}", "source": "c4", "split": split, "text": row["text"]})
    return docs


def build_c4_corpus_dataset(docs: list[dict]):
    import datasets

    features = datasets.Features({k: datasets.Value("string") for k in ("doc_id", "source", "text")})

    def table(split):
        rows = [d for d in docs if d["split"] == split]
        return datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)

    return datasets.DatasetDict({"train": table("train"), "validation": table("validation")})


# --- tokenizers -----------------------------------------------------------------------------------------

def tokenizer_name(model: str, vocab_size: int) -> str:
    return f"{'wordpiece' if model == 'bert' else 'unigram'}-{vocab_size}"


def train_wordpiece(texts: Iterable[str], vocab_size: int):
    """BERT's tokenizer: lower-cased, accents stripped, WordPiece; [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0-4."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(vocab.BERT_SPECIALS),
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # The trainer's id order varies from run to run (hash-map order on ties) even when the learned vocabulary is
    # the same; WordPiece segmentation depends only on the set, so a canonical order makes the ids reproducible.
    learned = tok.get_vocab()
    ordered = list(vocab.BERT_SPECIALS) + sorted(t for t in learned if t not in vocab.BERT_SPECIALS)
    tok.model = models.WordPiece({t: i for i, t in enumerate(ordered)}, unk_token="[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab.BERT_CLS), ("[SEP]", vocab.BERT_SEP)])
    return tok


def train_unigram(texts: Iterable[str], vocab_size: int):
    """T5's tokenizer: cased Unigram with SentencePiece-style spaces; <pad> </s> <unk> are ids 0-2 and the 100
    sentinels fill the top of the vocabulary, <extra_id_0> last (the T5 convention)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - vocab.N_SENTINELS,
                                      special_tokens=list(vocab.T5_SPECIALS), unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    learned = tok.get_vocab_size()
    if learned != vocab_size - vocab.N_SENTINELS:
        raise RunError(f"Unigram learned {learned} pieces, expected {vocab_size - vocab.N_SENTINELS}: "
                       "the corpus is too small for this vocabulary size")
    tok.add_special_tokens([vocab.sentinel_token(k) for k in reversed(range(vocab.N_SENTINELS))])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab.T5_EOS)])
    return tok


def check_tokenizer(tok, model: str, vocab_size: int) -> None:
    """The id conventions of ntng.data.vocab hold for this tokenizer (collators and models rely on them)."""
    if model == "bert":
        expected = {t: i for i, t in enumerate(vocab.BERT_SPECIALS)}
    else:
        expected = {t: i for i, t in enumerate(vocab.T5_SPECIALS)}
        expected.update({vocab.sentinel_token(k): vocab.sentinel_id(k, vocab_size) for k in (0, 1, 99)})
    for token, token_id in expected.items():
        if tok.token_to_id(token) != token_id:
            raise RunError(f"tokenizer breaks the id convention: {token} is {tok.token_to_id(token)}, not {token_id}")
    if model == "bert" and tok.get_vocab_size() > vocab_size:
        raise RunError(f"WordPiece vocabulary {tok.get_vocab_size()} exceeds {vocab_size}")
    if model == "t5" and tok.get_vocab_size() != vocab_size:
        raise RunError(f"Unigram vocabulary {tok.get_vocab_size()} is not {vocab_size}")


def load_tokenizer(model: str, vocab_size: int, data_dir: Path | None = None, corpus: str = "offline"):
    from tokenizers import Tokenizer

    path = Path(data_dir or default_data_dir()) / corpus / "tokenizers" / f"{tokenizer_name(model, vocab_size)}.json"
    if not path.exists():
        raise UsageError(f"no tokenizer at {path}: run `ntng data` first")
    return Tokenizer.from_file(str(path))


# --- packing --------------------------------------------------------------------------------------------

def packing_width(model: str, preset: Preset) -> int:
    """Tokens per packed window: BERT's sequence length, or T5's raw span-corruption window, which is longer than
    the encoder input so that, once spans collapse into sentinels, the input is exactly `input_len` with no pad."""
    if model == "bert":
        return preset.bert.seq_len
    from ntng.data.collate import compute_t5_lengths

    raw_len, _ = compute_t5_lengths(preset.t5.input_len, preset.t5.noise_density, preset.t5.mean_span)
    return raw_len


def packing_name(model: str, preset: Preset) -> str:
    return f"{tokenizer_name(model, preset.vocab_size)}-w{packing_width(model, preset)}"


def pack_token_stream(token_lists: Iterable[list[int]], width: int, separator: int) -> np.ndarray:
    """Documents concatenated in order, each followed by `separator`, cut into windows of `width` tokens.

    The tail that does not fill a window is dropped (no padding is ever trained on). The result depends only on
    the documents and their order, so window k is the same example on every machine and in every run.
    """
    stream = np.fromiter((t for tokens in token_lists for t in (*tokens, separator)), dtype=np.int32)
    n = len(stream) // width
    return stream[: n * width].reshape(n, width)


def pack_split(texts: list[str], tok, model: str, width: int, first_id: int = 0):
    """Packed windows of one split as a Dataset(example_id, input_ids), and the split's token count (documents'
    own tokens, before packing). BERT windows are [CLS] w-2 tokens [SEP]; T5 windows are raw tokens (the span
    collator appends </s>). Documents are separated by [SEP] / </s>."""
    import datasets

    encodings = tok.encode_batch(texts, add_special_tokens=False)
    num_tokens = sum(len(e.ids) for e in encodings)
    token_lists = (e.ids for e in encodings)
    if model == "bert":
        body = pack_token_stream(token_lists, width - 2, vocab.BERT_SEP)
        n = len(body)
        windows = np.concatenate([np.full((n, 1), vocab.BERT_CLS, np.int32), body,
                                  np.full((n, 1), vocab.BERT_SEP, np.int32)], axis=1)
    else:
        windows = pack_token_stream(token_lists, width, vocab.T5_EOS)
    features = datasets.Features({"example_id": datasets.Value("int64"),
                                  "input_ids": datasets.List(datasets.Value("int32"), length=width)})
    ids = np.arange(first_id, first_id + len(windows), dtype=np.int64)
    return datasets.Dataset.from_dict({"example_id": ids, "input_ids": windows}, features=features), num_tokens


VALIDATION_ID_OFFSET = 1 << 40  # validation windows get ids of their own range: no id names two examples


def build_packed(corpus, tok, model: str, width: int):
    """(DatasetDict of packed train/validation windows, {split: token count of its documents})."""
    import datasets

    splits = {split: pack_split(corpus[split]["text"], tok, model, width, first_id)
              for split, first_id in (("train", 0), ("validation", VALIDATION_ID_OFFSET))}
    return datasets.DatasetDict({k: v[0] for k, v in splits.items()}), {k: v[1] for k, v in splits.items()}


def windows_array(split) -> tuple[np.ndarray, np.ndarray]:
    """(example_ids [N], input_ids [N, width]) of one packed split, as numpy arrays."""
    rows = split.with_format("numpy")[:]
    return rows["example_id"], rows["input_ids"]


def fingerprint_windows(dataset) -> str:
    """A hash of the token windows and their ids: a cached per-example table can check it still lines up."""
    digest = hashlib.sha256()
    table = dataset.with_format("numpy")
    for start in range(0, len(table), 8192):
        rows = table[start:start + 8192]
        digest.update(np.ascontiguousarray(rows["example_id"]).tobytes())
        digest.update(np.ascontiguousarray(rows["input_ids"]).tobytes())
    return digest.hexdigest()[:16]


def load_packed(model: str, preset: Preset | str, data_dir: Path | None = None, corpus: str = "offline"):
    """The packed DatasetDict for a model at a preset's scale (built by `ntng data`)."""
    import datasets

    preset = get_preset(preset) if isinstance(preset, str) else preset
    path = Path(data_dir or default_data_dir()) / corpus / "packed" / packing_name(model, preset)
    if not path.exists():
        raise UsageError(f"no packed data at {path}: run `ntng data --preset {preset.name}` first")
    return datasets.load_from_disk(str(path))


def load_task(task: str, data_dir: Path | None = None):
    import datasets

    if task not in TASKS:
        raise UsageError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    path = Path(data_dir or default_data_dir()) / "tasks" / task
    if not path.exists():
        raise UsageError(f"no task data at {path}: run `ntng data` first")
    return datasets.load_from_disk(str(path))


# --- the build ------------------------------------------------------------------------------------------

def _build_key(corpus: str) -> str:
    pins = [(s.spec, s.integrity) for s in src.SOURCES]
    return hashlib.sha256(json.dumps([DATA_FORMAT, SPLIT_SEED, VALIDATION_FRACTION, TASK_DEV_FRACTION,
                                      PASSAGE_WORDS, corpus, pins]).encode()).hexdigest()[:16]


def _read_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a damaged manifest only costs a rebuild


def packing_floor(model: str, preset: Preset, data_dir: Path | None = None, corpus: str = "offline") -> float | None:
    """The context-free loss floor `ntng data` stored for this packing (ntng.data.floors), or None (older data)."""
    manifest = _read_manifest(Path(data_dir or default_data_dir()))
    packed = manifest.get("corpora", {}).get(corpus, {}).get("packed", {}).get(packing_name(model, preset), {})
    floor = packed.get("floor", {}).get("loss")
    return float(floor) if isinstance(floor, (int, float)) else None


def build_data(data_dir: Path | str | None = None, presets: Iterable[str] = ("smoke", "mini"),
               corpus: str = "offline", c4_source: str = C4_SOURCE, c4_docs: int = 200_000,
               log: Log = print) -> dict:
    """Fetch, verify, build and pack everything the given presets need. Idempotent: what is in place and built
    from the same pins and rules is kept; returns the manifest (with `"changed": False` when nothing was done)."""
    data_dir = Path(data_dir or default_data_dir())
    if corpus not in CORPORA:
        raise UsageError(f"unknown corpus {corpus!r} (choose from {', '.join(CORPORA)})")
    wanted = [get_preset(p) for p in presets]
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError(f"data directory {data_dir} is not a directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(data_dir, os.W_OK):
        raise UsageError(f"data directory {data_dir} is not writable")
    remove_temporaries(data_dir, recursive=True)
    import datasets

    datasets.disable_progress_bars()  # one line per step is what a log of `ntng data` needs

    manifest = _read_manifest(data_dir)
    key = _build_key(corpus)
    if manifest.get("build_keys", {}).get(corpus) != key:
        manifest.setdefault("corpora", {}).pop(corpus, None)
    corpora = manifest.setdefault("corpora", {})
    entry = corpora.setdefault(corpus, {"tokenizers": {}, "packed": {}})
    changed = False
    started = time.perf_counter()

    corpus_dir = data_dir / corpus / "corpus"
    tasks_ready = all((data_dir / "tasks" / t).exists() for t in TASKS) and "tasks" in manifest
    documents = None
    if not tasks_ready or (corpus == "offline" and (not corpus_dir.exists() or "corpus" not in entry)):
        documents = read_offline_sources(data_dir / "raw", log)
        manifest["sources"] = [{"package": s.package, "version": s.version, "integrity": s.integrity,
                                "license": s.license, "contents": s.contents} for s in src.SOURCES]
    if not tasks_ready:
        log("building the labelled tasks (spam_ham, brown_genre, sotu_party)")
        manifest["tasks"] = {}
        for name, dataset in build_task_datasets(documents).items():
            _save_dataset_atomic(dataset, data_dir / "tasks" / name)
            manifest["tasks"][name] = {
                "description": TASKS[name], "labels": dataset["train"].features["label"].names,
                "train": len(dataset["train"]), "dev": len(dataset["dev"]),
                "stand_in_for": "GLUE (offline stand-in: not a GLUE task)"}
        changed = True

    if not corpus_dir.exists() or "corpus" not in entry:
        if corpus == "offline":
            dataset = build_corpus_dataset(documents.pretrain)
        else:
            log(f"streaming C4 from {c4_source}")
            dataset = build_c4_corpus_dataset(read_c4(c4_source, max_train_docs=c4_docs))
        _save_dataset_atomic(dataset, corpus_dir)
        entry["corpus"] = _describe_corpus(dataset)
        entry["tokenizers"], entry["packed"] = {}, {}
        for stale in ("tokenizers", "packed"):  # tokenizers and packings of an older corpus are void
            shutil.rmtree(data_dir / corpus / stale, ignore_errors=True)
        changed = True

    corpus_data = None
    for preset in wanted:
        for model in ("bert", "t5"):
            name = tokenizer_name(model, preset.vocab_size)
            tok_path = data_dir / corpus / "tokenizers" / f"{name}.json"
            if not tok_path.exists() or name not in entry["tokenizers"]:
                corpus_data = corpus_data or datasets.load_from_disk(str(corpus_dir))
                log(f"training the {name} tokenizer")
                t0 = time.perf_counter()
                texts = corpus_data["train"]["text"]
                tok = (train_wordpiece if model == "bert" else train_unigram)(texts, preset.vocab_size)
                check_tokenizer(tok, model, preset.vocab_size)
                with atomic_path(tok_path, make_parent=True) as tmp:
                    tok.save(str(tmp))
                entry["tokenizers"][name] = {"model": model, "vocab_size": tok.get_vocab_size(),
                                             "sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest()[:16],
                                             "seconds": round(time.perf_counter() - t0, 1)}
                entry["packed"] = {k: v for k, v in entry["packed"].items() if not k.startswith(name + "-")}
                changed = True
            pname = packing_name(model, preset)
            packed_dir = data_dir / corpus / "packed" / pname
            if not packed_dir.exists() or pname not in entry["packed"]:
                corpus_data = corpus_data or datasets.load_from_disk(str(corpus_dir))
                log(f"packing {pname}")
                tok = load_tokenizer(model, preset.vocab_size, data_dir, corpus)
                packed, token_counts = build_packed(corpus_data, tok, model, packing_width(model, preset))
                _save_dataset_atomic(packed, packed_dir)
                entry["packed"][pname] = {
                    "model": model, "width": packing_width(model, preset), "tokenizer": name,
                    "train_windows": len(packed["train"]), "validation_windows": len(packed["validation"]),
                    "train_tokens": len(packed["train"]) * packing_width(model, preset),
                    "fingerprint": {s: fingerprint_windows(packed[s]) for s in packed}}
                if model == "bert":
                    entry["corpus"]["tokens_" + name] = token_counts
                changed = True
            if "floor" not in entry["packed"][pname]:  # the context-free loss floor (ntng.data.floors)
                from ntng.data.floors import context_free_floor

                packed = datasets.load_from_disk(str(packed_dir))
                vocab = load_tokenizer(model, preset.vocab_size, data_dir, corpus).get_vocab_size()
                entry["packed"][pname]["floor"] = context_free_floor(
                    model, preset, vocab, windows_array(packed["train"])[1], windows_array(packed["validation"])[1])
                log(f"context-free floor of {pname}: {entry['packed'][pname]['floor']['loss']:.3f} nats")
                changed = True

    manifest["format"] = DATA_FORMAT
    manifest.setdefault("build_keys", {})[corpus] = key
    manifest["changed"] = changed
    if changed:
        manifest["built_seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(data_dir / "manifest.json", {k: v for k, v in manifest.items() if k != "changed"})
        write_text_atomic(data_dir / "README.md", render_manifest(manifest), make_parent=True)
    return manifest


def _describe_corpus(dataset) -> dict:
    out = {}
    for split in dataset:
        sources: dict[str, dict] = {}
        for source, text in zip(dataset[split]["source"], dataset[split]["text"], strict=True):
            s = sources.setdefault(source, {"documents": 0, "characters": 0})
            s["documents"] += 1
            s["characters"] += len(text)
        out[split] = {"documents": len(dataset[split]), "characters": sum(s["characters"] for s in sources.values()),
                      "by_source": sources}
    return out



def render_manifest(manifest: dict) -> str:
    lines = ["# ntng data", "", "Written by `ntng data`; `manifest.json` holds the same facts for programs.", "",
             "## Sources", "", "| package | version | sha512 integrity | license | contents |", "|---|---|---|---|---|"]
    for s in manifest.get("sources", []):
        lines.append(f"| {s['package']} | {s['version']} | `{s['integrity'][:23]}...` | {s['license']} | "
                     f"{s['contents']} |")
    for corpus, entry in manifest.get("corpora", {}).items():
        info = entry.get("corpus", {})
        lines += ["", f"## Pre-training corpus `{corpus}`", "", "| split | source | documents | characters |",
                  "|---|---|---|---|"]
        for split, stats in info.items():
            if not isinstance(stats, dict) or "by_source" not in stats:
                continue
            for source, s in sorted(stats["by_source"].items()):
                lines.append(f"| {split} | {source} | {s['documents']} | {s['characters']:,} |")
            lines.append(f"| {split} | **all** | {stats['documents']} | {stats['characters']:,} |")
        for key, counts in info.items():
            if key.startswith("tokens_"):
                lines.append("")
                lines.append(f"Tokens with `{key[7:]}`: " + ", ".join(f"{s} {n:,}" for s, n in counts.items()))
        if entry.get("packed"):
            lines += ["", "| packing | width | train windows | validation windows | fingerprint (train) |",
                      "|---|---|---|---|---|"]
            for name, p in sorted(entry["packed"].items()):
                lines.append(f"| {name} | {p['width']} | {p['train_windows']:,} | {p['validation_windows']:,} | "
                             f"`{p['fingerprint']['train']}` |")
    if manifest.get("tasks"):
        lines += ["", "## Labelled tasks (offline stand-ins for GLUE, not GLUE)", "",
                  "| task | what | labels | train | dev |", "|---|---|---|---|---|"]
        for name, t in manifest["tasks"].items():
            lines.append(f"| {name} | {t['description']} | {len(t['labels'])} | {t['train']:,} | {t['dev']:,} |")
    lines += ["", "Splits are by document with a fixed seed; see ntng/data/corpus.py for the rules.", ""]
    return "\n".join(lines)


def presets_for_cli(name: str | None) -> list[str]:
    """`ntng data` builds for the CPU presets unless one is named (paper needs its own 32k vocabulary)."""
    if name is None:
        return [p for p in PRESETS if p != "paper"]  # shipped CPU presets; a custom one is built when named
    get_preset(name)
    return [name]
