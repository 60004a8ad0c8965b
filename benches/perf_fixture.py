"""A perf fixture with gpt-oss-20b's real per-layer shapes but only 4 layers.

hidden 2880, 64 heads, 8 kv heads, head_dim 64, 32 experts top-4, intermediate
2880, vocab 201088; quantized like the hub's MLX-MXFP4 conversion: everything
MXFP4 (group 32, uint32 codes, uint8 E8M0 scales) incl. the embedding and
lm_head, the routers 8-bit affine (group 64, bf16 scales and biases); norms,
linear biases and sinks bf16. Codes and scales are drawn directly with numpy
(mx.quantize runs at ~8 M weights/s on CPU). Written in the hub layout
(config.json, model.safetensors + index, tokenizer files) so mlx-lm and
safeguard both load it.

usage: perf_fixture.py OUT_DIR TOKENIZER_DIR [LAYERS]
"""

import json
import pathlib
import shutil
import struct
import sys

import numpy as np

H, HEADS, KV, HD, E, K, I, V = 2880, 64, 8, 64, 32, 4, 2880, 201088


def bf16(a: np.ndarray) -> bytes:
    """float32 → bfloat16 bytes (round to nearest even)."""
    a = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = a + 0x7FFF + ((a >> 16) & 1)
    return (rounded >> 16).astype(np.uint16).tobytes()


def main(out: pathlib.Path, tokenizer: pathlib.Path, layers: int) -> None:
    rng = np.random.default_rng(0)
    tensors: dict[str, tuple[str, list[int], bytes]] = {}

    def codes(shape):  # random MXFP4 codes, 8 per uint32
        n = int(np.prod(shape))
        tensors_bytes = rng.bytes(4 * n)
        return ("U32", list(shape), tensors_bytes)

    def e8m0(shape):  # scales 2^-9 .. 2^-6: weights of ~0.01-0.1
        return ("U8", list(shape), rng.integers(118, 122, size=shape, dtype=np.uint8).tobytes())

    def mxfp4(name, shape_out_in, bias=True):
        *lead, o, i = shape_out_in
        tensors[f"{name}.weight"] = codes([*lead, o, i // 8])
        tensors[f"{name}.scales"] = e8m0([*lead, o, i // 32])
        if bias:
            tensors[f"{name}.bias"] = ("BF16", [*lead, o], bf16(rng.normal(0, 0.02, [*lead, o])))

    def floats(name, shape, value=None, std=0.02):
        a = np.full(shape, value, np.float32) if value is not None else rng.normal(0, std, shape)
        tensors[name] = ("BF16", list(shape), bf16(a))

    mxfp4("model.embed_tokens", [V, H], bias=False)
    for layer in range(layers):
        p = f"model.layers.{layer}"
        floats(f"{p}.input_layernorm.weight", [H], 1.0)
        floats(f"{p}.post_attention_layernorm.weight", [H], 1.0)
        mxfp4(f"{p}.self_attn.q_proj", [HEADS * HD, H])
        mxfp4(f"{p}.self_attn.k_proj", [KV * HD, H])
        mxfp4(f"{p}.self_attn.v_proj", [KV * HD, H])
        mxfp4(f"{p}.self_attn.o_proj", [H, HEADS * HD])
        floats(f"{p}.self_attn.sinks", [HEADS], 0.0)
        # Router: 8-bit affine, group 64: w = scale * q + bias.
        tensors[f"{p}.mlp.router.weight"] = codes([E, H * 8 // 32])
        floats(f"{p}.mlp.router.scales", [E, H // 64], 1e-3)
        floats(f"{p}.mlp.router.biases", [E, H // 64], -0.128)
        floats(f"{p}.mlp.router.bias", [E])
        for proj, (o, i) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
            mxfp4(f"{p}.mlp.experts.{proj}", [E, o, i])
    floats("model.norm.weight", [H], 1.0)
    mxfp4("lm_head", [V, H], bias=False)

    out.mkdir(parents=True, exist_ok=True)
    header, offset = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header["__metadata__"] = {"format": "mlx"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, data in tensors.values():
            f.write(data)
    index = {"metadata": {"total_size": offset}, "weight_map": {n: "model.safetensors" for n in tensors}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    quant = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    for layer in range(layers):
        quant[f"model.layers.{layer}.mlp.router"] = {"group_size": 64, "bits": 8}
    config = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "attention_bias": True,
        "eos_token_id": [200002, 199999, 200012],
        "pad_token_id": 199999,
        "experts_per_token": K,
        "num_experts_per_tok": K,
        "num_local_experts": E,
        "head_dim": HD,
        "hidden_act": "silu",
        "hidden_size": H,
        "intermediate_size": I,
        "initial_context_length": 4096,
        "max_position_embeddings": 131072,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "num_hidden_layers": layers,
        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        "rms_norm_eps": 1e-05,
        "rope_theta": 150000,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "sliding_window": 128,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "vocab_size": V,
        "quantization": quant,
        "quantization_config": quant,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999})
    )
    for f in tokenizer.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    print(f"{out}: {layers} layers, {offset / 1e9:.2f} GB of tensors")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 4)
