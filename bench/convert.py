"""Benchmark `irforge convert` against `cp` and `iree-convert-parameters` in the same run.

Generates a Llama-shaped f16 model (~1.3 GB by default) as a safetensors file and as a GGUF
file (plus a Q8_0 GGUF for the dequantizing path), then times each tool on each file with a
warm page cache, and prints wall time and peak RSS with ratios against the peers.

    python bench/convert.py [--layers 12] [--repeat 3] [--data bench/data]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
HIDDEN, FFN, VOCAB, HEADS, KV_HEADS = 2048, 5632, 32000, 32, 8  # kv 8: TP up to 8
HEAD_DIM = HIDDEN // HEADS


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """HF-named tensors of a TinyLlama-like model (GQA, untied), from irforge's tensor table."""
    from irforge.facts.presets import get_preset
    from irforge.facts.tensor_kinds import hf_shapes

    config = get_preset("llama-3.1-8b").replace(
        vocab_size=VOCAB,
        embedding_length=HIDDEN,
        feed_forward_length=FFN,
        attention_head_count=HEADS,
        attention_head_count_kv=KV_HEADS,
        head_dim=HEAD_DIM,
        block_count=layers,
        tie_word_embeddings=False,
    )
    return hf_shapes(config)


def random_f16(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)


def write_safetensors(folder: Path, layers: int) -> Path:
    """Written tensor by tensor (the safetensors library would hold the whole model)."""
    shapes, rng = llama_shapes(layers), np.random.default_rng(0)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            f.write(random_f16(shape, rng).tobytes())
    config = {
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "float16",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return path


def write_gguf(path: Path, layers: int, quant: bool) -> Path:
    import gguf

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    import tiny

    w = gguf.GGUFWriter(str(path), "llama", use_temp_file=True)
    hparams = {
        "context_length": 2048,
        "embedding_length": HIDDEN,
        "block_count": layers,
        "feed_forward_length": FFN,
        "attention.head_count": HEADS,
        "attention.head_count_kv": KV_HEADS,
    }
    for key, value in hparams.items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    rng = np.random.default_rng(0)
    for hf_name, shape in llama_shapes(layers).items():
        arr = random_f16(shape, rng)
        name = tiny.gguf_name(hf_name)
        if len(shape) == 1:
            w.add_tensor(name, arr.astype(np.float32))
        elif quant:
            qt = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), qt), raw_dtype=qt)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def measure(cmd: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one command, its output removed afterwards.

    GNU time reports the RSS: a child forked from this (large) process would inherit its
    high-water mark in ru_maxrss even after exec.
    """
    done = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}: {done.stderr[-2000:]}")
    wall, rss_kb = done.stderr.strip().splitlines()[-1].split()
    for p in out.parent.glob(out.name + "*"):
        p.unlink()
    return float(wall), int(rss_kb) / 1024


def best_of(cmd: list[str], out: Path, repeat: int) -> tuple[float, float]:
    runs = [measure(cmd, out) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12, help="12 layers is about 1.3 GB f16")
    parser.add_argument("--repeat", type=int, default=3, help="runs per command (best wall time)")
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    st_dir = args.data / f"llama-{args.layers}l"
    st_dir.mkdir(exist_ok=True)
    st = st_dir / "model.safetensors"
    if not st.exists():
        write_safetensors(st_dir, args.layers)
    gg = args.data / f"llama-{args.layers}l-f16.gguf"
    if not gg.exists():
        write_gguf(gg, args.layers, quant=False)
    q8 = args.data / f"llama-{args.layers}l-q8_0.gguf"
    if not q8.exists():
        write_gguf(q8, args.layers, quant=True)
    out = args.data / "out.irpa"
    irforge, iree_convert = str(BIN / "irforge"), str(BIN / "iree-convert-parameters")
    rows = []
    for label, src in (("safetensors f16", st), ("gguf f16", gg)):
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        cp = best_of(["cp", str(src), str(out)], out, args.repeat)
        # The same durability irforge gives its outputs (fsync before the rename).
        cp_sync = best_of(["sh", "-c", f"cp {src} {out} && sync {out}"], out, args.repeat)
        peer = best_of([iree_convert, f"--parameters={src}", f"--output={out}"], out, args.repeat)
        ours = best_of([irforge, "convert", str(src), "-o", str(out), "-q"], out, args.repeat)
        rows.append((label, src.stat().st_size, cp, cp_sync, peer, ours))
    dq = best_of([irforge, "convert", str(q8), "-o", str(out), "-q"], out, 1)
    print(f"best of {args.repeat} runs, warm page cache; RSS = peak resident set")
    print(
        f"{'source':<16} {'GB':>5} {'cp':>6} {'cp+sync':>7} {'iree':>6} {'irforge':>7}  "
        f"{'/cp':>5} {'/cp+sync':>8} {'/iree':>5}  {'RSS cp':>6} {'iree':>6} {'irforge':>7}"
    )
    for label, size, cp, cp_sync, peer, ours in rows:
        print(
            f"{label:<16} {size / 1e9:5.2f} {cp[0]:5.2f}s {cp_sync[0]:6.2f}s {peer[0]:5.2f}s "
            f"{ours[0]:6.2f}s  {ours[0] / cp[0]:5.2f} {ours[0] / cp_sync[0]:8.2f} "
            f"{ours[0] / peer[0]:5.2f}  {cp[1]:5.0f}M {peer[1]:5.0f}M {ours[1]:6.0f}M"
        )
    print(
        f"{'gguf q8_0->f16':<16} {q8.stat().st_size / 1e9:5.2f} {'':>6} {'':>7} {'':>6} "
        f"{dq[0]:6.2f}s  (dequantize; no peer does this)  RSS {dq[1]:.0f}M"
    )
    shutil.rmtree(args.data / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
