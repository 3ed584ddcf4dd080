"""The lowered-graph cache (converters/lowering/cache.py): the suite's own, keyed by what defines a
graph, and never trusting an entry that is not intact."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from converters.lowering import cache  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_the_suite_uses_its_own_cache_in_build():
    # conftest points the tool's cache into the checkout's ignored build/, never ~/.cache.
    assert cache.cache_dir().is_relative_to(REPO / "build"), cache.cache_dir()
    assert not cache.cache_dir().is_relative_to(Path.home() / ".cache")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    from edge.fileio import cache_root

    monkeypatch.delenv("GEMMA3N_EDGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "gemma3n-edge"
    monkeypatch.setenv("GEMMA3N_EDGE_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine" / "graphs"


def _maker(calls: list, payload: bytes = b"TFL3 graph bytes"):
    def make(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_bytes(payload)
    return make


def test_a_graph_is_made_once_then_reused(tmp_path):
    calls = []
    first = cache.cached_graph(tmp_path, "decoder", "k1", _maker(calls))
    again = cache.cached_graph(tmp_path, "decoder", "k1", _maker(calls))
    assert first == again and first.read_bytes() == b"TFL3 graph bytes" and len(calls) == 1
    other = cache.cached_graph(tmp_path, "decoder", "k2", _maker(calls))
    assert other != first and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [first.name, first.name + ".sha256", other.name, other.name + ".sha256"])  # no temporary left


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-digest", "bad-digest"])
def test_a_damaged_entry_is_rebuilt_never_used(tmp_path, damage):
    calls = []
    path = cache.cached_graph(tmp_path, "audio_encoder", "k", _maker(calls))
    digest = path.with_name(path.name + ".sha256")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "no-digest":  # an interrupted publish: the graph landed, its digest did not
        digest.unlink()
    else:
        digest.write_text("0" * 64 + "\n")
    again = cache.cached_graph(tmp_path, "audio_encoder", "k", _maker(calls))
    assert len(calls) == 2, "a damaged entry was used"
    assert again.read_bytes() == b"TFL3 graph bytes"
    assert cache.cached_graph(tmp_path, "audio_encoder", "k", _maker(calls)) == again and len(calls) == 2


def test_a_failed_lowering_publishes_nothing(tmp_path):
    def make(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("lowering failed")

    with pytest.raises(RuntimeError, match="lowering failed"):
        cache.cached_graph(tmp_path, "vision_encoder", "k", make)
    assert list(tmp_path.iterdir()) == []


def test_the_key_covers_the_components_code_not_every_file():
    files = {p.relative_to(REPO / "converters").as_posix()
             for p in cache.source_closure(["converters.gemma3n.decoder", "converters.lowering.export"])}
    assert {"gemma3n/decoder.py", "gemma3n/layers.py", "lowering/export.py", "lowering/flatbuf.py"} <= files
    # Code that does not define the decoder's graph: an edit there keeps the cache.
    assert not files & {"gemma3n/vision.py", "gemma3n/audio.py", "bundle.py", "build.py", "lowering/splice.py"}
    vision = {p.name for p in cache.source_closure(["converters.gemma3n.vision"])}
    assert "vision.py" in vision and "decoder.py" not in vision


def test_the_key_changes_with_what_defines_the_graph():
    code = ["converters.gemma3n.embedder"]
    base = cache.graph_key("embedder", [{"hidden_size": 64}, {"decode": [1, 1]}], code)
    assert base == cache.graph_key("embedder", [{"hidden_size": 64}, {"decode": [1, 1]}], code)
    assert base != cache.graph_key("embedder", [{"hidden_size": 65}, {"decode": [1, 1]}], code)
    assert base != cache.graph_key("embedder", [{"hidden_size": 64}, {"decode": [1, 2]}], code)
    assert base != cache.graph_key("per_layer_embedder", [{"hidden_size": 64}, {"decode": [1, 1]}], code)
    assert base != cache.graph_key("embedder", [{"hidden_size": 64}, {"decode": [1, 1]}], code, [b"baked"])
    assert base != cache.graph_key("embedder", [{"hidden_size": 64}, {"decode": [1, 1]}], ["converters.gemma3n.decoder"])
    names = dict(cache.toolchain_versions())
    assert names["torch"] != "absent" and names["litert-torch"] != "absent"
