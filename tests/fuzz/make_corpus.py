#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (small valid and near-valid inputs).
Run from the repository root: python3 tests/fuzz/make_corpus.py"""
import json, math, os, struct

root = "tests/fuzz/corpus"

def st(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data

def put(target, name, blob):
    os.makedirs(f"{root}/{target}", exist_ok=True)
    with open(f"{root}/{target}/{name}", "wb") as f:
        f.write(blob if isinstance(blob, bytes) else blob.encode())

put("fuzz_safetensors", "valid", st({"__metadata__": {"format": "pt"},
    "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(22)))
put("fuzz_safetensors", "empty-tensor", st({"e": {"dtype": "I8", "shape": [0], "data_offsets": [0, 0]}}, b""))
put("fuzz_safetensors", "overlap", st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
    "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6)))

put("fuzz_hf_index", "index", json.dumps({"metadata": {"total_size": 8},
    "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors",
                   "lm_head.weight": "model-00002-of-00002.safetensors"}}))
put("fuzz_hf_index", "config-llama3", json.dumps({"model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 100, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}, "eos_token_id": [2, 3]}))
put("fuzz_hf_index", "config-qwen2", json.dumps({"model_type": "qwen2", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 100, "tie_word_embeddings": True, "sliding_window": 4096, "use_sliding_window": False}))

# llama2.c: dim 4, hidden 6, 1 layer, 2 heads, 1 kv head, vocab 3 (tied), seq_len 2.
d, f, L, nh, nkv, V, seq = 4, 6, 1, 2, 1, 3, 2
hd = d // nh
n = V * d + L * (d + d * d + 2 * nkv * hd * d + d * d + d + 3 * f * d) + d + seq * hd
put("fuzz_llama2c", "tiny-tied", struct.pack("<7i", d, f, L, nh, nkv, V, seq) + struct.pack(f"<{n}f", *[0.5] * n))
put("fuzz_llama2c", "tiny-untied", struct.pack("<7i", d, f, L, nh, nkv, -V, seq) + struct.pack(f"<{n + V * d}f", *[0.5] * (n + V * d)))
tok = struct.pack("<i", 3) + b"".join(struct.pack("<fi", -float(i), len(p)) + p for i, p in enumerate([b"<s>", b"a", b"bc"]))
put("fuzz_llama2c", "tokenizer", tok)

# fuzz_tasks: a HellaSwag file (llama.cpp layout, 2 tasks), and PIQA jsonl + NUL + labels.
put("fuzz_tasks", "hellaswag", "Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap.\n"
    "is ripping level tiles off.\nis holding a rubik's cube.\nstarts pulling up roofing on a roof.\n"
    "Clean and jerk: A lady walks to a barbell. the lady\r\n0\r\nswings.\r\npulls.\r\npulls a rope.\r\nstands.\r\n")
put("fuzz_tasks", "piqa", '{"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain"}\n'
    '{"goal": "How to \\u00e9?", "sol1": "a", "sol2": "b"}\n\x001\n0\n')

# llama2.c tokenizer.bin for the BPE: <unk> <s> </s>, the 256 byte pieces, then a few merges.
def tokbin(pieces):
    return struct.pack("<i", max(len(p) for p, _ in pieces)) + b"".join(
        struct.pack("<fi", s, len(p)) + p for p, s in pieces)
base = [(b"<unk>", 0.0), (b"<s>", 0.0), (b"</s>", 0.0)] + [(b"<0x%02X>" % b, 0.0) for b in range(256)]
merges = [(b" ", -1.0), (b"a", -2.0), (b"b", -3.0), (b"n", -4.0), (b"e", -5.0), (b"c", -6.0),
          (b"aa", -7.0), (b" a", -7.0), (b"aaaa", -8.0), (b"\xc3\xa9", -9.0), (b"ca", -10.0), (b"caf", -11.0)]
put("fuzz_tokenizer_bin", "bytes-and-merges", tokbin(base + merges))
put("fuzz_tokenizer_bin", "too-few-pieces", tokbin([(b"<unk>", 0.0), (b"a", -1.0)]))

put("fuzz_ids", "lines", "1 2 3\n\n4,5\t6\r\n")
put("fuzz_ids", "bad", "1 2 x\n-3 99999999999\n")

put("fuzz_config", "config.json", json.dumps({"model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
    "bos_token_id": 1, "eos_token_id": [2, 3]}))
put("fuzz_config", "config-qwen3.json", json.dumps({"model_type": "qwen3", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 32, "vocab_size": 100, "attention_bias": False, "tie_word_embeddings": True,
    "sliding_window": None, "use_sliding_window": False, "rope_scaling": None}))
put("fuzz_config", "quantize.toml", 'preset = "w4a4kv4"\nw-bits = 4\n[gptq]\ndamp = 0.01\n')
put("fuzz_config", "quantize.json", json.dumps({"preset": "w4a16", "group": 128, "seed": 7}))
put("fuzz_config", "plan.toml", '[[models]]\nname = "m"\npath = "${QUAROT_DATA:-data}/m.bin"\n'
    '[[runs]]\nname = "w4"\npreset = "w4a4kv4"\noverrides = { w_bits = 4, a_clip = 0.9 }\n'
    '[gates]\nmax_ppl_ratio = 1.5\n')

# A minimal SentencePiece ModelProto (protobuf by hand): pieces <unk> (UNKNOWN), <s>, </s>
# (CONTROL), then normal pieces; trainer_spec.model_type = BPE; identity normalizer.
def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out
def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload
def sp_piece(p, score, typ):
    return field(1, 2, field(1, 2, p) + field(2, 5, struct.pack("<f", score)) + field(3, 0, varint(typ)))
pieces = [(b"<unk>", 0.0, 2), (b"<s>", 0.0, 3), (b"</s>", 0.0, 3)] + [
    (p, -float(i), 1) for i, p in enumerate([b"\xe2\x96\x81", b"a", b"b", b"c", b"e", b"n", b"\xe2\x96\x81a", b"aa", b"ca"])]
model = b"".join(sp_piece(*p) for p in pieces)
model += field(2, 2, field(3, 0, varint(2)))                                   # trainer_spec: BPE
model += field(3, 2, field(1, 2, b"identity") + field(3, 0, varint(1)) + field(5, 0, varint(1)))
put("fuzz_sentencepiece", "tiny-bpe.model", model)

# A tiny valid packed INT4 file (docs/format.md): hidden 8, 2 heads of 4, 1 KV head, FFN 16, one
# layer, vocab 8, per-channel symmetric 4-bit, rotated (online transforms of sizes 4, 2, 16), CRCs
# and the canonical header CRC computed as the reader does; a second one with a 4-bit QDEC section;
# a third of format version 2 with INT8 embedding/classifier tables (after the other float tensors).
import zlib
def packed_file(with_qdec, int8_tables=False):
    d, f, L, nh, nkv, V = 8, 16, 1, 2, 1, 8
    hd = d // nh
    f32 = lambda vals: struct.pack(f"<{len(vals)}f", *vals)
    tensors = []  # (name, dtype, shape, bytes), in file order: float tensors first (4-byte aligned)
    if not int8_tables:
        tensors.append(("model.embed_tokens.weight", "F32", [V, d], f32([0.01 * (i % 13 - 6) for i in range(V * d)])))
    tensors.append(("model.layers.0.input_layernorm.weight", "F32", [d], f32([1.0] * d)))
    tensors.append(("model.layers.0.post_attention_layernorm.weight", "F32", [d], f32([1.0] * d)))
    tensors.append(("model.norm.weight", "F32", [d], f32([1.0] * d)))
    if int8_tables:
        for t, k in (("model.embed_tokens", 13), ("lm_head", 7)):
            tensors.append((t + ".qweight", "I8", [V, d], bytes((i * k) % 255 for i in range(V * d))))
            tensors.append((t + ".scales", "F32", [V], f32([0.0078125] * V)))
    else:
        tensors.append(("lm_head.weight", "F32", [V, d], f32([0.02 * (i % 7 - 3) for i in range(V * d)])))
    linears = [("self_attn.q_proj", nh * hd, d), ("self_attn.k_proj", nkv * hd, d), ("self_attn.v_proj", nkv * hd, d),
               ("self_attn.o_proj", d, nh * hd), ("mlp.gate_proj", f, d), ("mlp.up_proj", f, d), ("mlp.down_proj", d, f)]
    for name, rows, cols in linears:
        p = "model.layers.0." + name
        padded = (cols + 63) // 64 * 64
        codes = bytes(((i * 5 + 3) % 16) | (((i * 7 + 1) % 16) << 4) if (i % (padded // 2)) < cols else 0x88
                      for i in range(rows * padded // 2))
        tensors.append((p + ".qweight", "U8", [rows, padded // 2], codes))
        tensors.append((p + ".scales", "F32", [rows, 1], f32([0.05] * rows)))
    if with_qdec:
        for name, rows, cols in linears:
            p = "model.layers.0." + name
            tensors.append((p + ".qdec_residual", "U8", [cols, (rows + 1) // 2], bytes([0x79] * (cols * ((rows + 1) // 2)))))
            tensors.append((p + ".qdec_scales", "F32", [rows], f32([0.001] * rows)))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d, "intermediate_size": f,
              "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nkv, "vocab_size": V,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    recipe = {"preset": "w4a4kv4", "method": "rtn", "w_bits": 4, "w_symmetric": True, "w_group": 0, "clip_search": True,
              "a_bits": 4, "a_clip": 0.9, "a_group": 0, "k_bits": 4, "v_bits": 4, "kv_clip": 0.95,
              "kv_asymmetric": True, "classifier_bits": 8 if int8_tables else 16}
    rotation = {"version": 1, "seed": 0, "fused_norms": True, "r1": "randomized-hadamard", "r2": True,
                "centered_embeddings": False,
                "online": {"r3_head_dim": hd, "cross_head_n_heads": nh, "r4_intermediate": f}}
    compact = lambda o: json.dumps(o, separators=(",", ":"), sort_keys=True)
    meta = {"format": "quarot-int4", "format_version": "2" if int8_tables else "1", "config": compact(config), "recipe": compact(recipe),
            "quarot.rotation": compact(rotation), "tool": "quarot corpus", "quarot.source": "make_corpus.py",
            "quarot.crc32": compact({n: "%08x" % zlib.crc32(b) for n, _, _, b in tensors})}
    if with_qdec:
        meta["qdec"] = compact({"bits": 4, "k_chunk": {"qkv": 64, "o": 64, "gate_up": 64, "down": 64}, "info": {}})
    header, infos, offset = {"__metadata__": meta}, [], 0
    for n, dt, shape, b in tensors:
        header[n] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + len(b)]}
        infos.append([n, dt, shape, offset, offset + len(b)])
        offset += len(b)
    canon = compact({"metadata": meta, "tensors": infos})
    meta["quarot.header_crc32"] = "%08x" % zlib.crc32(canon.encode())
    h = compact(header).encode()
    h += b" " * ((64 - (8 + len(h)) % 64) % 64)
    return struct.pack("<Q", len(h)) + h + b"".join(b for _, _, _, b in tensors)
put("fuzz_packed", "tiny.q4.safetensors", packed_file(False))
put("fuzz_packed", "tiny-qdec.q4.safetensors", packed_file(True))
put("fuzz_packed", "tiny-int8.q4.safetensors", packed_file(False, True))

# fuzz_gguf: tiny GGUF v3 models (hidden 32 so the 32-blocks fit), one per architecture/type mix.
def gguf(arch, kv, tensors, version=3):
    def s(x):
        x = x.encode()
        return struct.pack("<Q", len(x)) + x
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for k, (t, v) in kv.items():
        out += s(k) + struct.pack("<I", t)
        if t == 8: out += s(v)
        elif t == 4: out += struct.pack("<I", v)
        elif t == 6: out += struct.pack("<f", v)
        elif t == 9:
            et, items = v
            out += struct.pack("<IQ", et, len(items))
            for it in items: out += s(it) if et == 8 else struct.pack("<f", it)
    off, datas = 0, []
    for name, ne, typ, data in tensors:
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, off)
        datas.append(data)
        off += (len(data) + 31) // 32 * 32
    out += bytes((-len(out)) % 32)
    for d in datas: out += d + bytes((-len(d)) % 32)
    return out

def tdata(n, typ):
    if typ == 0: return b"".join(struct.pack("<f", ((i * 37) % 17 - 8) / 16) for i in range(n))
    if typ == 1: return b"".join(struct.pack("<e", ((i * 37) % 17 - 8) / 16) for i in range(n))
    if typ == 8: return b"".join(struct.pack("<e", 0.01) + bytes((j * 5) % 256 for j in range(32)) for _ in range(n // 32))
    if typ == 2: return b"".join(struct.pack("<e", 0.02) + bytes((j * 7) % 256 for j in range(16)) for _ in range(n // 32))

def llama3_rope_factors(head_dim, theta=10000.0, factor=8.0, low=1.0, high=4.0, orig=64):
    # convert_hf_to_gguf.py's rope_freqs.weight for rope_type llama3
    out = []
    for i in range(head_dim // 2):
        wavelen = 2 * math.pi * theta ** (2 * i / head_dim)
        if wavelen < orig / high: out.append(1.0)
        elif wavelen > orig / low: out.append(factor)
        else:
            sm = (orig / wavelen - low) / (high - low)
            out.append(1 / ((1 - sm) / factor + sm))
    return b"".join(struct.pack("<f", x) for x in out)

def model(arch, mat_type, biases=False, tied=True, rope_freqs=False):
    d, f, v = 32, 32, 8
    kv = {"general.architecture": (8, arch), f"{arch}.context_length": (4, 64), f"{arch}.embedding_length": (4, d),
          f"{arch}.block_count": (4, 1), f"{arch}.feed_forward_length": (4, f), f"{arch}.attention.head_count": (4, 2),
          f"{arch}.attention.head_count_kv": (4, 1), f"{arch}.attention.layer_norm_rms_epsilon": (6, 1e-5),
          "tokenizer.ggml.tokens": (9, (8, ["<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"]))}
    ts = [("token_embd.weight", [d, v], mat_type, tdata(d * v, mat_type))]
    for name, rows, cols in [("attn_q", d, d), ("attn_k", 16, d), ("attn_v", 16, d), ("attn_output", d, d),
                             ("ffn_gate", f, d), ("ffn_up", f, d), ("ffn_down", d, f)]:
        ts.append((f"blk.0.{name}.weight", [cols, rows], mat_type, tdata(rows * cols, mat_type)))
    if biases:
        for name, n in [("attn_q", d), ("attn_k", 16), ("attn_v", 16)]:
            ts.append((f"blk.0.{name}.bias", [n], 0, tdata(n, 0)))
    for name in ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"]:
        ts.append((name, [d], 0, tdata(d, 0)))
    if not tied: ts.append(("output.weight", [d, v], 0, tdata(d * v, 0)))
    if rope_freqs: ts.append(("rope_freqs.weight", [d // 4], 0, llama3_rope_factors(d // 2)))
    return gguf(arch, kv, ts)

put("fuzz_gguf", "llama-f32", model("llama", 0, tied=False))
put("fuzz_gguf", "llama-q4_0", model("llama", 2))
put("fuzz_gguf", "llama-q8_0", model("llama", 8))
put("fuzz_gguf", "qwen2-f16-bias", model("qwen2", 1, biases=True))
put("fuzz_gguf", "llama-rope-freqs", model("llama", 0, rope_freqs=True))
put("fuzz_gguf", "vocab-only", gguf("llama", {"general.architecture": (8, "llama"),
    "tokenizer.ggml.tokens": (9, (8, ["<unk>", "<s>", "</s>"]))}, []))
