"""Fixtures for ggml's block formats (core/src/quant.rs): values, their blocks as the `gguf`
package quantizes them and the values it dequantizes, per format, in one safetensors file.

    pip install gguf==0.19.0 numpy safetensors
    python tests/reference/make_gguf_fixtures.py    # writes tests/fixtures/gguf/quants.safetensors

Made with gguf 0.19.0, numpy 2.4.6, safetensors (see the file's metadata).
"""
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gguf", "quants.safetensors")
TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q5_0": T.Q5_0, "q5_1": T.Q5_1}

rng = np.random.default_rng(0)
blocks = []
# Gaussian blocks over nine orders of magnitude (weights, activations, tiny residues).
for scale in [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1e4]:
    blocks += [rng.standard_normal(32).astype(np.float32) * np.float32(scale) for _ in range(16)]
# Edge cases: all zero, constant, one spike, negative extreme, exact halves of Q8_0's step,
# uniform, ties for the largest magnitude of either sign.
blocks.append(np.zeros(32, np.float32))
blocks.append(np.full(32, 0.75, np.float32))
spike = np.zeros(32, np.float32); spike[7] = -3.0; blocks.append(spike)
neg = rng.uniform(-1, 0.2, 32).astype(np.float32); neg[31] = -5.0; blocks.append(neg)
halves = (np.arange(32, dtype=np.float32) - 16.0 + 0.5) * np.float32(2.0 / 127.0); halves[0] = 2.0
blocks.append(halves.astype(np.float32))
blocks.append(np.linspace(-1, 1, 32, dtype=np.float32))
ties = rng.uniform(-1, 1, 32).astype(np.float32); ties[3] = 2.0; ties[20] = -2.0; blocks.append(ties)
values = np.concatenate(blocks).astype(np.float32)

tensors = {"values": values}
for name, kind in TYPES.items():
    q = gguf.quants.quantize(values.reshape(-1, 32), kind)
    tensors[name] = np.ascontiguousarray(q).reshape(-1).astype(np.uint8)
    tensors[f"{name}.dequantized"] = gguf.quants.dequantize(q, kind).reshape(-1).astype(np.float32)

os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file(tensors, OUT, metadata={"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
                                  "numpy": np.__version__})
print(f"{OUT}: {values.size} values, {len(blocks)} blocks")

# A small GGUF file written by gguf's GGUFWriter: metadata of several types and tensors in
# f32, f16, Q8_0 and Q4_0 (tests/quant_parity.rs reads it and writes the same bytes).
GGUF_OUT = os.path.join(os.path.dirname(OUT), "tiny.gguf")
writer = gguf.GGUFWriter(GGUF_OUT, "tastebud-test")
writer.add_string("general.name", "tiny")
writer.add_uint32("test.count", 7)
writer.add_float32("test.scale", 0.5)
writer.add_bool("test.flag", True)
writer.add_array("test.names", ["a", "bc"])
writer.add_tensor("w.f32", np.arange(6, dtype=np.float32).reshape(2, 3) / 4)
writer.add_tensor("w.f16", np.array([1.5, -2.0, 0.25, 1e-3], dtype=np.float16))
q8 = gguf.quants.quantize(values[:128].reshape(2, 64), T.Q8_0)
writer.add_tensor("w.q8_0", q8, raw_dtype=T.Q8_0)
q4 = gguf.quants.quantize(values[128:160], T.Q4_0)
writer.add_tensor("w.q4_0", q4, raw_dtype=T.Q4_0)
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
reader = gguf.GGUFReader(GGUF_OUT)
print(f"{GGUF_OUT}: " + ", ".join(f"{t.name} {t.tensor_type.name} {list(t.shape)}" for t in reader.tensors))
