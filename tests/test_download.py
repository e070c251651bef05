"""`irforge download` against a local fake Hub, and the model registry (`irforge models`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeHubServer, FakeRepo, commit_sha
from typer.testing import CliRunner

from irforge.cli.main import app
from irforge.errors import DownloadError, ShardingError
from irforge.facts.presets import PRESETS
from irforge.stages.hub import REGISTRY, plan, resolve_model, select_files
from irforge.stages.hub.download import MANIFEST_NAME

runner = CliRunner()


def _index(shards: dict[str, list[str]]) -> bytes:
    weight_map = {t: shard for shard, tensors in shards.items() for t in tensors}
    return json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}).encode()


LLAMA_FILES = {
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "README.md": b"# tiny\n",
    "config.json": b'{"model_type": "llama"}',
    "generation_config.json": b'{"bos_token_id": 1}',
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer_config.json": b'{"eos_token": "</s>"}',
    "special_tokens_map.json": b"{}",
    "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",  # transformers 5
    "model-00001-of-00002.safetensors": os.urandom(3000),
    "model-00002-of-00002.safetensors": os.urandom(2000),
    "model.safetensors.index.json": _index(
        {
            "model-00001-of-00002.safetensors": ["a.weight"],
            "model-00002-of-00002.safetensors": ["b.weight"],
        }
    ),
    "pytorch_model.bin": b"\x80\x04pickle" * 200,
    "original/consolidated.00.pth": b"\x80\x04pickle" * 300,
}
DEFAULT_SELECTION = sorted(
    n for n in LLAMA_FILES if n.endswith((".json", ".safetensors", ".jinja"))
)

GGUF_FILES = {
    "tokenizer.json": b"{}",
    "README.md": b"# gguf\n",
    "Model-8B-f16.gguf": b"GGUF-f16" * 300,
    "Model-8B-bf16.gguf": b"GGUF-bf16" * 300,
    "Model-8B-Q8_0.gguf": b"GGUF-q8" * 300,
    "Model-8B-Q4_K_M.gguf": b"GGUF-q4km" * 300,
    "Model-8B-Q4_K_S.gguf": b"GGUF-q4ks" * 300,
}

V1 = {"config.json": b'{"v": 1}', "model.safetensors": b"v1-weights" * 200}
V2 = {"config.json": b'{"v": 2}', "model.safetensors": b"v2-weights" * 200}
VERSIONED = FakeRepo(
    {commit_sha("v1"): V1, commit_sha("v2"): V2},
    {"main": commit_sha("v2"), "v1": commit_sha("v1")},
)
BIG = os.urandom(256 * 1024)


def _point_hf_at(endpoint: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads its environment once, at import: patch the constants it uses.
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        # Small reads, so a connection cut mid-file leaves bytes to resume from.
        "DOWNLOAD_CHUNK_SIZE": 16 * 1024,
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHubServer]:
    repos = {
        "org/tiny-llama": FakeRepo.single(LLAMA_FILES),
        "org/tiny-gguf": FakeRepo.single(GGUF_FILES),
        "org/versioned": VERSIONED,
        "org/big": FakeRepo.single({"config.json": b"{}", "model.safetensors": BIG}),
        "org/gated": FakeRepo.single(LLAMA_FILES, gated=True),
    }
    with FakeHubServer(FakeHub(repos, tokens={"hf_good"})) as server:
        _point_hf_at(server.url, tmp_path / "hf", monkeypatch)
        yield server
    from huggingface_hub import close_session

    close_session()  # no pooled connection to a dead port survives the test


def _run(*args: str):
    return runner.invoke(app, ["download", *args], catch_exceptions=False)


def _ok(*args: str) -> Path:
    result = _run("--quiet", *args)
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip())


def _fails(*args: str) -> str:
    result = _run("--quiet", *args)
    assert result.exit_code == 2, result.stdout + result.stderr
    return result.stderr


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def _resolve_requests(server: FakeHubServer) -> list[str]:
    return [p for m, p, _ in server.hub.requests if m == "GET" and "/resolve/" in p]


# -- downloads --------------------------------------------------------------------------------
def test_full_download_into_the_cache(hub: FakeHubServer, tmp_path: Path) -> None:
    folder = _ok("org/tiny-llama")
    repo = hub.hub.repos["org/tiny-llama"]
    assert folder == tmp_path / "hf" / "hub" / "models--org--tiny-llama" / "snapshots" / repo.main
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert got == sorted([*DEFAULT_SELECTION, MANIFEST_NAME])  # no pickles, README, original/
    for name in DEFAULT_SELECTION:
        assert (folder / name).read_bytes() == LLAMA_FILES[name]
    manifest = _manifest(folder)
    assert manifest["repo_id"] == "org/tiny-llama"
    assert manifest["requested_revision"] is None
    assert manifest["revision"] == repo.main
    assert manifest["files"] == [
        {"name": n, "size": len(LLAMA_FILES[n])} for n in DEFAULT_SELECTION
    ]
    # The branch -> commit mapping is cached for offline runs.
    refs = folder.parent.parent / "refs" / "main"
    assert refs.read_text() == repo.main


def test_revision_is_pinned_and_recorded(hub: FakeHubServer, tmp_path: Path) -> None:
    out = tmp_path / "v1"
    folder = _ok("org/versioned", "--revision", "v1", "--local-dir", str(out))
    assert folder == out.resolve()
    assert (folder / "model.safetensors").read_bytes() == V1["model.safetensors"]
    manifest = _manifest(folder)
    assert (manifest["requested_revision"], manifest["revision"]) == ("v1", commit_sha("v1"))
    # Every file request names the commit, not the tag: a moving tag cannot mix versions.
    assert all(f"/resolve/{commit_sha('v1')}/" in p for p in _resolve_requests(hub))


def test_include_and_exclude(hub: FakeHubServer, tmp_path: Path) -> None:
    out = tmp_path / "json"
    folder = _ok(
        "org/tiny-llama", "--include", "*.json", "--exclude", "generation_config.json",
        "--local-dir", str(out),
    )  # fmt: skip
    names = sorted(f["name"] for f in _manifest(folder)["files"])
    assert names == [n for n in DEFAULT_SELECTION if n.endswith(".json") and "generation" not in n]
    assert not list(folder.glob("*.safetensors"))


def test_pickles_only_when_allowed(hub: FakeHubServer, tmp_path: Path) -> None:
    assert _fails("org/tiny-llama", "--include", "*.bin") == (
        "error: only pickle files of org/tiny-llama@" + hub.hub.repos["org/tiny-llama"].main[:12]
        + " match (pytorch_model.bin): loading a pickle can run code; pass --allow-pickle to "
        "download them\n"
    )  # fmt: skip
    folder = _ok("org/tiny-llama", "--include", "*.bin", "--allow-pickle")
    assert (folder / "pytorch_model.bin").read_bytes() == LLAMA_FILES["pytorch_model.bin"]


def test_gguf_by_quantization(hub: FakeHubServer) -> None:
    folder = _ok("org/tiny-gguf", "--format", "gguf", "--quant", "f16")
    assert sorted(f["name"] for f in _manifest(folder)["files"]) == [
        "Model-8B-f16.gguf",  # not bf16
        "tokenizer.json",
    ]
    where = "org/tiny-gguf@" + hub.hub.repos["org/tiny-gguf"].main[:12]
    available = "bf16, f16, Q4_K_M, Q4_K_S, Q8_0"
    assert _fails("org/tiny-gguf", "--format", "gguf") == (
        f"error: {where} has 5 GGUF files: choose one with --quant (available: {available})\n"
    )
    assert _fails("org/tiny-gguf", "--format", "gguf", "--quant", "q5_0") == (
        f"error: no GGUF file in {where} has quantization 'q5_0' (available: {available})\n"
    )
    assert _fails("org/tiny-gguf", "--format", "gguf", "--quant", "q4_k") == (
        f"error: quantization 'q4_k' matches 2 GGUF files in {where} (Model-8B-Q4_K_M.gguf, "
        "Model-8B-Q4_K_S.gguf): pass a more specific --quant\n"
    )


def test_dropped_connection_resumes_to_identical_file(hub: FakeHubServer) -> None:
    hub.hub.drop_once["model.safetensors"] = 1
    folder = _ok("org/big")
    assert (folder / "model.safetensors").read_bytes() == BIG
    ranges = [h.get("Range") for m, p, h in hub.hub.requests if p.endswith("/model.safetensors")]
    resumed = [r for r in ranges if r]
    # The retry asked only for the missing tail, not the whole file again.
    assert len(resumed) == 1 and 0 < int(resumed[0][len("bytes=") : -1]) < len(BIG), ranges


# -- errors -----------------------------------------------------------------------------------
def test_gated_repo(hub: FakeHubServer) -> None:
    assert _fails("org/gated") == (
        f"error: org/gated is gated: request access at {hub.url}/org/gated then pass a token "
        "with --token or HF_TOKEN (or run `hf auth login`)\n"
    )
    assert _fails("org/gated", "--token", "hf_wrong") == (
        f"error: org/gated is gated and the token has no access to it: request access at "
        f"{hub.url}/org/gated (and wait for approval), or use a token of an account that has it\n"
    )
    folder = _ok("org/gated", "--token", "hf_good")
    assert (folder / "config.json").read_bytes() == LLAMA_FILES["config.json"]


def test_missing_repo_and_revision(hub: FakeHubServer) -> None:
    assert _fails("org/versioned", "--revision", "v9") == (
        "error: revision 'v9' not found in org/versioned (use a branch, tag or commit sha)\n"
    )
    assert _fails("org/nope") == (
        f"error: org/nope not found on {hub.url} (check the id, or it is private: pass a token "
        "with --token or HF_TOKEN)\n"
    )


def test_offline_with_warm_cache(hub: FakeHubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    online = _ok("org/tiny-llama")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.hub.requests)
    result = _run("org/tiny-llama")
    assert result.exit_code == 0, result.stderr
    assert Path(result.stdout.strip()) == online
    assert "from the cache" in result.stderr
    assert len(hub.hub.requests) == before  # not one request
    assert _fails("org/versioned") == (
        "error: org/versioned is not in the local cache and HF_HUB_OFFLINE=1 is set "
        "(unset it to download)\n"
    )


def test_offline_local_dir(
    hub: FakeHubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    out = tmp_path / "big"
    _ok("org/big", "--local-dir", str(out))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.hub.requests)
    assert _ok("org/big", "--local-dir", str(out)) == out.resolve()
    assert len(hub.hub.requests) == before
    # The folder holds org/big: it is no cached copy of another repo.
    assert _fails("org/tiny-llama", "--local-dir", str(out)) == (
        f"error: org/tiny-llama is not in {out.resolve()} and HF_HUB_OFFLINE=1 is set "
        "(unset it to download)\n"
    )


def test_hub_outage_falls_back_on_the_cache(hub: FakeHubServer) -> None:
    warm = _ok("org/tiny-llama")
    hub.hub.down = True
    assert _ok("org/tiny-llama") == warm
    assert _fails("org/versioned") == (
        f"error: {hub.url} is failing (HTTP 503): try again later, or set HF_HUB_OFFLINE=1 "
        "to use the cache\n"
    )


def test_no_network(hub: FakeHubServer) -> None:
    warm = _ok("org/tiny-llama")
    hub.stop()  # the port now refuses connections
    assert _fails("org/versioned") == (
        f"error: cannot reach {hub.url}: [Errno 111] Connection refused; set HF_HUB_OFFLINE=1 "
        "to use the cache\n"
    )
    # What is cached still comes back, without waiting for the Hub.
    assert _ok("org/tiny-llama") == warm


def test_tiny_and_unknown_models() -> None:
    assert _fails("tiny") == (
        "error: tiny is built into irforge and needs no download: `irforge build tiny` creates it\n"
    )
    assert _fails("llama-9").startswith("error: unknown model 'llama-9': pass an HF repo id")
    assert resolve_model("Llama-3.1-8B-Instruct", "gguf") == (
        "SanctumAI/Meta-Llama-3.1-8B-Instruct-GGUF"
    )
    assert resolve_model("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert _fails("llama-3.1-70b", "--format", "gguf").startswith(
        "error: no GGUF repo is registered for llama-3.1-70b"
    )
    result = _run("org/m", "--quant", "f16")
    assert result.exit_code == 2 and "needs --format gguf" in result.stderr


def test_select_files_defaults() -> None:
    chosen, notes = select_files(LLAMA_FILES, where="x")
    assert chosen == DEFAULT_SELECTION and notes == []
    with pytest.raises(DownloadError, match=r"x has no safetensors weights \(it has pickle"):
        select_files(["config.json", "pytorch_model.bin"], where="x")
    chosen, _ = select_files(["config.json", "pytorch_model.bin"], where="x", allow_pickle=True)
    assert chosen == ["config.json", "pytorch_model.bin"]
    split = ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf", "m-f16.gguf"]
    assert select_files(split, where="x", format="gguf", quant="Q8_0")[0] == split[:2]


# -- registry ---------------------------------------------------------------------------------
def test_registry_entries() -> None:
    hf_ids = {e.repo_id for e in REGISTRY.values()}
    assert {
        "meta-llama/Llama-3.1-8B",
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.1-70B",
        "meta-llama/Llama-3.1-70B-Instruct",
        "meta-llama/Llama-3.1-405B",
        "meta-llama/Llama-3.1-405B-Instruct",
        "mistralai/Mistral-Nemo-Base-2407",
        "mistralai/Mistral-Nemo-Instruct-2407",
    } <= hf_ids
    for entry in REGISTRY.values():
        if entry.alias != "tiny":  # the tiny preset arrives with `irforge build tiny`
            assert entry.preset in PRESETS, entry
            assert PRESETS[entry.preset].source == f"hf:{entry.repo_id}"
        for tp in entry.tp:
            assert entry.config.attention_head_count_kv % tp == 0
    assert REGISTRY["llama-3.1-405b"].tp == (8,)
    assert REGISTRY["mistral-nemo-instruct-2407"].tp == (1,)


def test_plan_llama_8b() -> None:
    entry = REGISTRY["llama-3.1-8b"]
    tp1, tp8 = plan(entry, 1), plan(entry, 8)
    # embedding + 32 blocks + output + norms of Llama-3.1-8B's published config
    assert tp1.parameters == 8_030_261_248
    assert tp1.weight_bytes == tp1.weight_bytes_per_device == 2 * tp1.parameters
    assert tp8.weight_bytes_per_device < tp1.weight_bytes_per_device
    embedding_and_norms = 128256 * 4096 + 65 * 4096
    assert tp8.weight_bytes_per_device == 2 * (
        embedding_and_norms + (tp1.parameters - embedding_and_norms) // 8
    )
    # 32 layers x K and V x 8 kv heads x 32 tokens x 128 dims x 2 bytes, split over devices
    assert tp1.kv_page_bytes_per_device == 32 * 2 * 8 * 32 * 128 * 2
    assert tp8.kv_page_bytes_per_device == tp1.kv_page_bytes_per_device // 8
    with pytest.raises(ShardingError, match="tensor-parallel size 3 must divide"):
        plan(entry, 3)


def test_models_json() -> None:
    result = runner.invoke(app, ["models", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    rows = {row["alias"]: row for row in json.loads(result.stdout)}
    row = rows["llama-3.1-8b-instruct"]
    assert row["repo_id"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert row["tp"] == [1, 2, 4, 8]
    assert [p["tp"] for p in row["plans"]] == [1, 2, 4, 8]
    assert rows["tiny"]["repo_id"] is None
    table = runner.invoke(app, ["models"], catch_exceptions=False)
    assert table.exit_code == 0 and "llama-3.1-70b" in table.stdout
