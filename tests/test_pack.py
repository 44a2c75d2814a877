"""Tokenizers and packed shards: exact tokens, parallel = serial, no-op re-runs, damage detected, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from l2m_train.data import DataError
from l2m_train.data.shards import PackedShards
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.pack import pack
from l2m_train.io import OutputError

L2M = str(Path(sys.executable).parent / "l2m")
BOOKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
DOCS = ["The first document. It has two sentences.", "Zweites Dokument: ünïcödé, emoji 🙂 and\nnew lines.",
        "", "A third one, " * 40]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, doc in enumerate(DOCS):
        (root / f"{i}.txt").write_text(doc)
    (root / "records.jsonl").write_text("\n".join(json.dumps({"text": f"record {i}"}) for i in range(3)))
    return root


def test_byte_tokenizer_ids_are_bytes_and_text_round_trips():
    tok = TextTokenizer.byte()
    text = "héllo 🙂\n\ttabs  and  spaces"
    assert tok.encode(text) == list(text.encode()) and tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 257 and tok.eos_id == 256
    assert TextTokenizer.byte().fingerprint == tok.fingerprint == TextTokenizer.load("byte").fingerprint


def test_bpe_trains_saves_loads_and_loads_from_gpt2_files(tmp_path):
    texts = ["the cat sat on the mat. " * 20, "a dog and a cat. " * 20]
    bpe = TextTokenizer.train_bpe(texts, 300)
    assert 257 < bpe.vocab_size <= 300 and len(bpe.encode("the cat sat")) < len("the cat sat")  # merges learned
    assert TextTokenizer.load(bpe.save(tmp_path / "bpe")).fingerprint == bpe.fingerprint
    bpe.tokenizer.model.save(str(tmp_path))  # GPT-2's format: vocab.json + merges.txt
    gpt2 = TextTokenizer.load(tmp_path)
    for text in ("the cat sat on the mat", "unseen wörds 🙂"):
        assert gpt2.encode(text) == bpe.encode(text) and gpt2.decode(gpt2.encode(text)) == text


def test_unreadable_tokenizers_are_one_line_errors(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable tokenizer"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(DataError, match="tokenizer not found"):
        TextTokenizer.load(tmp_path / "nowhere")


def test_shards_hold_every_document_then_end_of_text(corpus, tmp_path):
    tok = TextTokenizer.byte()
    manifest, built = pack([str(corpus)], tok, tmp_path / "out", shard_tokens=100)
    shards = PackedShards(tmp_path / "out")
    texts = [(corpus / f"{i}.txt").read_text() for i in range(len(DOCS))] + [f"record {i}" for i in range(3)]
    stream = shards.read(0, shards.tokens).tolist()
    eos = [i for i, t in enumerate(stream) if t == tok.eos_id]
    docs = [tok.decode(stream[a + 1:b]) for a, b in zip([-1] + eos, eos)]
    assert sorted(docs) == sorted(texts)  # every document, whole, each followed by end-of-text
    assert built and len(manifest["shards"]) > 1 and manifest["documents"] == len(texts)
    assert manifest["tokens"] == sum(len(tok.encode(t)) + 1 for t in texts) == shards.tokens
    assert shards.read(95, 10).tolist() == stream[95:105]  # across the first shard boundary
    assert shards.tokenizer().fingerprint == tok.fingerprint


def test_two_processes_and_streaming_write_the_same_bytes_as_one(corpus, tmp_path):
    pack([str(corpus)], TextTokenizer.byte(), tmp_path / "one", shard_tokens=100, num_proc=1)
    pack([str(corpus)], TextTokenizer.byte(), tmp_path / "two", shard_tokens=100, num_proc=2)
    pack([str(corpus)], TextTokenizer.byte(), tmp_path / "stream", shard_tokens=100, streaming=True)
    one, two, stream = (sorted((tmp_path / d).glob("*.bin")) for d in ("one", "two", "stream"))
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two] == [p.read_bytes() for p in stream]


def test_a_rerun_on_the_same_input_is_a_no_op_and_new_input_rebuilds(corpus, tmp_path):
    first, _ = pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again, built = pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out")
    assert not built and again == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps
    (corpus / "0.txt").write_text("changed")
    changed, built = pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out")
    assert built and changed["fingerprint"] != first["fingerprint"]


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-2]), "bytes, manifest says"),
    (lambda p: p.write_bytes(b"\0\0" + p.read_bytes()[2:]), "do not match the manifest's sha256"),
    (lambda p: p.unlink(), "shard missing"),
])
def test_a_damaged_shard_is_named(corpus, tmp_path, damage, message):
    pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out", shard_tokens=100)
    damage(tmp_path / "out" / "shard-00001.bin")
    with pytest.raises(DataError, match=f"shard-00001.bin: .*{message}"):
        PackedShards(tmp_path / "out")


def test_bad_input_fails_cleanly_and_leaves_existing_output_untouched(corpus, tmp_path):
    with pytest.raises(DataError, match="input path not found"):
        pack([str(tmp_path / "missing")], TextTokenizer.byte(), tmp_path / "new")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(DataError, match="holds no text"):
        pack([str(empty)], TextTokenizer.byte(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(DataError, match="holds no text"):
        pack([str(empty)], TextTokenizer.byte(), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def contents(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def test_out_replaces_only_an_earlier_pack_output_and_never_an_input(corpus, tmp_path):
    (corpus / "notes.txt").write_text("the user's own notes")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (tmp_path / "file").write_text("a file")
    before = {p: contents(p) for p in (corpus, mine)} | {"file": (tmp_path / "file").read_bytes()}
    for out, message in [(corpus, "is, holds or lies inside the input"), (corpus / "packed", "inside the input"),
                         (tmp_path, "holds or lies inside the input"), (mine, "is not an earlier output"),
                         (tmp_path / "file", "is not an earlier output")]:
        with pytest.raises(OutputError, match=message):
            pack([str(corpus)], TextTokenizer.byte(), out)
    assert {p: contents(p) for p in (corpus, mine)} | {"file": (tmp_path / "file").read_bytes()} == before
    assert not [p for p in tmp_path.rglob(".*")]  # not even a temporary directory
    pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out")
    (corpus / "0.txt").write_text("changed")
    _, built = pack([str(corpus)], TextTokenizer.byte(), tmp_path / "out")  # an earlier output: replaced
    assert built and PackedShards(tmp_path / "out").tokens > 0


def test_cli_refuses_to_pack_a_directory_into_itself_in_one_line(tmp_path):
    (tmp_path / "txtin").mkdir()
    (tmp_path / "txtin" / "book.txt").write_text("a book")
    (tmp_path / "txtin" / "notes.txt").write_text("notes")
    for command in (["pack"], ["tokenizer", "--vocab-size", "300"]):
        out = subprocess.run([L2M, "data", *command, "--input", "txtin", "--out", "txtin"], capture_output=True,
                             text=True, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "inside the input" in out.stderr, out.stderr
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["book.txt", "notes.txt", "txtin"]


@pytest.mark.skipif(not BOOKS.is_dir(), reason=f"../shared/data/text not found at {BOOKS}: real-book test skipped")
def test_books_pack_with_a_trained_bpe_from_the_command_line(tmp_path):
    books = [str(BOOKS / "austen" / "persuasion.txt"), str(BOOKS / "austen" / "northangerabbey.txt")]
    out = subprocess.run([L2M, "data", "tokenizer", "--input", *books, "--vocab-size", "2000", "--out",
                          str(tmp_path / "bpe")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([L2M, "data", "pack", "--input", *books, "--tokenizer", str(tmp_path / "bpe"), "--out",
                          str(tmp_path / "shards"), "--num-proc", "2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 documents" in out.stdout and "tokens/s" in out.stdout
    shards = PackedShards(tmp_path / "shards")
    size = sum(Path(b).stat().st_size for b in books)
    assert size / 6 < shards.tokens < size / 2  # a real BPE: a few bytes per token
    text = TextTokenizer.load(tmp_path / "bpe").decode(shards.read(0, 200).tolist())
    assert text in Path(books[0]).read_text() or text in Path(books[1]).read_text()
    again = subprocess.run([L2M, "data", "pack", "--input", *books, "--tokenizer", str(tmp_path / "bpe"), "--out",
                            str(tmp_path / "shards")], capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([L2M, "data", "pack", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "input path not found" in out.stderr
    assert not (tmp_path / "o").exists()
