"""The fast lane: the engine's decode passes as one compiled call each (`fastdecode.c`).

A decode step of an int4 model through torch spends most of its time outside the weight kernels:
a few hundred small operations per token (norms, rotary embeddings, cache updates, dtype
conversions) and the Python that issues them. The fast lane runs the whole pass in C over the
quantized model's own tensors, for up to MAX_ROWS rows (tokens of several sequences, or a draft),
and holds each sequence's KV cache.

It takes Llama-family decoders (llama, mistral without a sliding window, qwen2) whose decoder
layers are all `Int4Linear` and whose head is `Int8GroupLinear`, i.e. `--weights int4`, with any LoRA
adapters the engine serves; each row of a pass may use its own. The C file is compiled once per
machine with the system's C compiler into `TUNERY_HOME/cache/kernels/`; without one the engine
keeps its torch path and says why. Knows the quantized layers and the C structures; nothing about
requests or batching.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tunery import host
from tunery.errors import TuneryError
from tunery.inference.quant import Int4Linear, Int8GroupLinear
from tunery.paths import cache_dir

SOURCE = Path(__file__).with_name("fastdecode.c")
MAX_ROWS = 16  # FD_MAX_ROWS: rows per pass (sequences' tokens, or a draft plus the last token)
# -fopenmp-simd: the `omp simd` reductions vectorize (no OpenMP runtime is linked).
# -ffp-contract=off: a row computes the same whatever rows run beside it. GCC's Zen tuning (-mtune=znver3,
# which -march=native picks there) fuses a*b+c into FMAs in some loops and not in others depending on their
# shape, so a batch of rows and a single row rounded differently (1e-6 apart); the FMAs written as
# intrinsics are kept.
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp-simd", "-ffp-contract=off")
MODEL_TYPES = ("llama", "mistral", "qwen2")
PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # cos/sin depend on the position only
# Keys and values are kept in fp16: half the bytes a long context's attention reads (it is bound
# by reading them), for a rounding error far below the int4 weights'.
CACHE_DTYPE = torch.float16
# A transformers causal LM of the Llama family, read by attribute (model.model.layers[i].self_attn,
# config.num_key_value_heads): _check_model checks that layout at run time, where nn.Module's
# __getattr__ would give every step the static type Tensor | Module.
DecoderModel = Any


log = logging.getLogger("tunery.inference")


class FastLaneUnavailable(Exception):
    """Why this model or machine cannot use the fast lane (the engine then keeps its torch path)."""


class _Q4(ctypes.Structure):
    _fields_ = [("codes", ctypes.c_void_p), ("scales", ctypes.c_void_p), ("mins", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n", ctypes.c_int32), ("k", ctypes.c_int32)]


class _Lora(ctypes.Structure):
    _fields_ = [("a", ctypes.c_void_p), ("b", ctypes.c_void_p), ("scale", ctypes.c_float), ("r", ctypes.c_int32)]


class _Layer(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p), ("proj", _Q4 * len(PROJECTIONS))]


class _Model(ctypes.Structure):
    # ctypes' stubs cannot type a list joined from two kinds of field: the ignore is for that join only.
    _fields_ = [(name, ctypes.c_int32) for name in  # type: ignore[assignment]
                ("n_layers", "hidden", "n_heads", "n_kv_heads", "head_dim", "intermediate", "vocab", "max_pos")] + [
        ("eps", ctypes.c_float), ("embed", ctypes.c_void_p), ("final_norm", ctypes.c_void_p),
        ("head", ctypes.c_void_p), ("head_scales", ctypes.c_void_p), ("rope_cos", ctypes.c_void_p),
        ("rope_sin", ctypes.c_void_p), ("layers", ctypes.POINTER(_Layer))]


# fd_forward's error codes (FD_E_* in fastdecode.c), each naming the argument that did not fit.
C_ERRORS = {1: "rows", 2: "token", 3: "position", 4: "cache", 5: "lora", 6: "workspace", 7: "logits", 8: "model"}
ABI = 3  # FD_ABI: the library must be built from this source's structures
SANITIZE_FLAGS = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
_SIZE, _I32, _I64, _PTR = ctypes.c_size_t, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p


def lane_error(code: int, what: str) -> TuneryError:
    name = C_ERRORS.get(code, f"code {code}")
    return TuneryError(f"the fast lane refused {what}: its {name} arguments do not fit", code=f"lane_bad_{name}")


def build_flags() -> tuple[str, ...]:
    """FLAGS, or with TUNERY_LANE_SANITIZE=1 a sanitizer build (AddressSanitizer, UBSan) for tests;
    a process loading it needs libasan preloaded (see `make sanitize`)."""
    return FLAGS + SANITIZE_FLAGS if os.environ.get("TUNERY_LANE_SANITIZE") == "1" else FLAGS


def _compiler() -> tuple[list[str], str]:
    """The compiler command ($CC, else cc or gcc on PATH) and its identity: resolved path and version."""
    compiler = shlex.split(os.environ.get("CC", "")) or [found for found in (shutil.which("cc"), shutil.which("gcc"))
                                                           if found][:1]
    if not compiler:
        raise FastLaneUnavailable("no C compiler (cc or gcc) on PATH; install one (e.g. apt install gcc)")
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FastLaneUnavailable(f"the C compiler did not run ({exc})") from None
    resolved = shutil.which(compiler[0]) or compiler[0]
    return compiler, f"{os.path.realpath(resolved)} {' '.join(compiler[1:])}\n{version.strip()}"


def compile_library(flags: tuple[str, ...] | None = None) -> Path:
    """Compile fastdecode.c once per source, compiler (path and version), flags and CPU, and return the
    shared library; a cached build whose sha256 does not match the one recorded at build time is
    rebuilt. Raises FastLaneUnavailable with the reason when it cannot compile or write the cache."""
    flags = build_flags() if flags is None else flags
    compiler, identity = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, identity.encode(), " ".join(flags).encode(),
                                      host.cpu_signature().encode()])).hexdigest()[:16]
    folder = cache_dir() / "kernels"
    target, digest_file = folder / f"fastdecode-{key}.so", folder / f"fastdecode-{key}.sha256"
    try:
        if target.is_file() and digest_file.is_file():
            if _sha256(target) == digest_file.read_text().strip():
                return target
            log.warning("the cached fast-lane library %s does not match its recorded sha256; rebuilding", target.name)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:  # same filesystem: the renames are atomic
            built = Path(scratch) / target.name
            try:
                result = subprocess.run([*compiler, *flags, "-o", str(built), str(SOURCE), "-lm"], capture_output=True,
                                        text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise FastLaneUnavailable(f"the C compiler did not run ({exc})") from None
            if result.returncode != 0:
                raise FastLaneUnavailable(f"compiling fastdecode.c failed: {result.stderr.strip()[-500:]}")
            (Path(scratch) / "digest").write_text(_sha256(built))
            os.replace(built, target)
            os.replace(Path(scratch) / "digest", digest_file)
    except OSError as exc:  # an unwritable or full cache folder
        raise FastLaneUnavailable(f"the kernel cache {folder} is not writable ({exc.strerror or exc})") from None
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_library(path: Path) -> ctypes.CDLL:
    """Load the library and check it against this module: its ABI number, and the size and every
    field offset of each structure against the ctypes mirrors below."""
    try:
        lib = ctypes.CDLL(str(path))
        for name, restype, argtypes in (
                ("fd_abi", _I32, []), ("fd_layout", _I32, [_PTR, _I32]),
                ("fd_check_model", _I32, [ctypes.POINTER(_Model), _PTR, _I32]),
                ("fd_check_lora", _I32, [ctypes.POINTER(_Model), _PTR, _I32, _PTR, _PTR]),
                ("fd_workspace_floats", _SIZE, [ctypes.POINTER(_Model), _I32, _I32, _I32]),
                ("fd_forward", _I32, [ctypes.POINTER(_Model), _I32] + [_PTR] * 6 + [_PTR, _I32, _PTR, _I64, _PTR, _I64]
                 + [_I32] * 3)):
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        raise FastLaneUnavailable(f"the compiled fast lane did not load ({exc})") from None
    if lib.fd_abi() != ABI:
        raise FastLaneUnavailable(f"the compiled fast lane has ABI {lib.fd_abi()}, this tunery needs {ABI}")
    mirror = _layout()
    reported = (ctypes.c_int64 * 64)()
    count = lib.fd_layout(reported, 64)
    if list(reported[:count]) != mirror:
        raise FastLaneUnavailable(f"the compiled fast lane's structures differ from tunery's mirror of them "
                                  f"(sizes and offsets {list(reported[:count])}, expected {mirror})")
    return lib


def _layout() -> list[int]:
    """What fd_layout must report: per structure its size, then each field's offset."""
    numbers = []
    for struct in (_Q4, _Lora, _Layer, _Model):
        numbers += [ctypes.sizeof(struct)] + [getattr(struct, name).offset for name, *_ in struct._fields_]
    return numbers


def _base(module: Any) -> Any:
    """The quantized layer inside an adapter wrapper (MultiLoraLinear keeps it as `.base`)."""
    return getattr(module, "base", module)


class FastLane:
    """Decode passes through the compiled model; holds the KV cache of every sequence loaded into it."""

    def __init__(self, model: DecoderModel, max_context: int, library: Path | None = None):
        self.model = model
        self._keep: list[torch.Tensor] = []  # tensors the C structures point into
        _check_model(model)
        self.lib = _load_library(library or compile_library())
        config, decoder = model.config, model.model
        self.n_layers = len(decoder.layers)
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.vocab = model.get_output_embeddings().out_features
        self.max_pos = max_context
        self._struct = self._describe(max_context)
        self._lora_tables: dict[int, tuple | None] = {0: None}  # slot -> (C table, its tensors, largest rank)
        self._caches: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # sequence -> keys, values
        self._workspace, self._workspace_size = torch.empty(0), (0, -1)  # sized for (cache length, LoRA rank)
        self._logits = torch.empty(MAX_ROWS, self.vocab)

    def _ptr(self, tensor: torch.Tensor | None, keep: list | None = None) -> int | None:
        """Address of `tensor` as fp32 contiguous (a copy only when it is not already), kept alive."""
        if tensor is None:
            return None
        tensor = tensor.detach().float().contiguous()
        (self._keep if keep is None else keep).append(tensor)
        return tensor.data_ptr()

    def _describe(self, max_context: int) -> _Model:
        """The C structures over the model's tensors, checked by the library: shapes and the length of
        every buffer (a model the C pass would misread falls back to torch)."""
        model, config = self.model, self.model.config
        decoder = model.model
        layers, lengths = (_Layer * self.n_layers)(), []
        for i, block in enumerate(decoder.layers):
            layers[i].input_norm = self._ptr(block.input_layernorm.weight)
            layers[i].post_norm = self._ptr(block.post_attention_layernorm.weight)
            lengths += [block.input_layernorm.weight.numel(), block.post_attention_layernorm.weight.numel()]
            for j, (part, name) in enumerate(PROJECTIONS):
                layer = cast(Int4Linear, _base(getattr(getattr(block, part), name)))  # as _check_model found
                scales, mins = layer.scales.contiguous(), layer.mins.contiguous()  # fp16 [n, groups], as fitted
                codes = layer.codes.contiguous()
                self._keep += [codes, scales, mins]
                layers[i].proj[j] = _Q4(codes.data_ptr(), scales.data_ptr(), mins.data_ptr(),
                                        self._ptr(layer.bias), layer.out_features, layer.in_features)
                lengths += [codes.numel() * codes.element_size(), scales.numel(), mins.numel(),
                            0 if layer.bias is None else layer.bias.numel()]
        cos, sin = _rope_tables(decoder.rotary_emb, max_context)
        head: Int8GroupLinear = model.get_output_embeddings()
        head_codes = head.weight_int8.contiguous()
        self._keep.append(head_codes)
        self._layers = layers
        struct = _Model(self.n_layers, config.hidden_size, config.num_attention_heads, self.n_kv_heads, self.head_dim,
                        _base(decoder.layers[0].mlp.gate_proj).out_features, self.vocab, max_context,
                        float(decoder.norm.variance_epsilon), self._ptr(decoder.embed_tokens.weight),
                        self._ptr(decoder.norm.weight), head_codes.data_ptr(), self._ptr(head.scales),
                        self._ptr(cos), self._ptr(sin), layers)
        lengths = [t.numel() for t in (decoder.embed_tokens.weight, decoder.norm.weight, head.weight_int8, head.scales,
                                       cos, sin)] + lengths
        status = self.lib.fd_check_model(ctypes.byref(struct), (ctypes.c_int64 * len(lengths))(*lengths), len(lengths))
        if status:
            raise FastLaneUnavailable(f"the compiled pass does not take this model's shapes ({lane_error(status, 'it')})")
        return struct

    # ---- adapters --------------------------------------------------------------------------
    def add_adapter(self, slot: int, deltas: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        """Rows with `slot` add `scale * B(A(x))` at (layer, projection) for each entry of `deltas`;
        the library checks every A and B against the projection it adapts."""
        entries = self.n_layers * len(PROJECTIONS)
        table, tensors, rank = (_Lora * entries)(), list[torch.Tensor](), 0
        a_lengths, b_lengths = (ctypes.c_int64 * entries)(), (ctypes.c_int64 * entries)()
        for (i, j), (lora_a, lora_b, scale) in deltas.items():
            rank, at = max(rank, lora_a.shape[0]), i * len(PROJECTIONS) + j
            table[at] = _Lora(self._ptr(lora_a, tensors), self._ptr(lora_b, tensors), scale, lora_a.shape[0])
            a_lengths[at], b_lengths[at] = lora_a.numel(), lora_b.numel()
        status = self.lib.fd_check_lora(ctypes.byref(self._struct), table, entries, a_lengths, b_lengths)
        if status:
            raise lane_error(status, "the adapter")
        self._lora_tables[slot] = (table, tensors, rank)

    def remove_adapter(self, slot: int) -> None:
        self._lora_tables.pop(slot, None)

    # ---- caches ----------------------------------------------------------------------------
    def open(self, key: int, capacity: int) -> None:
        """An empty cache for sequence `key` with room for `capacity` positions (its prompt will run
        through the lane)."""
        capacity = min(capacity, self.max_pos)
        shape = (self.n_layers, self.n_kv_heads, capacity, self.head_dim)
        self._caches[key] = (torch.empty(shape, dtype=CACHE_DTYPE), torch.empty(shape, dtype=CACHE_DTYPE))

    def load(self, key: int, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int, capacity: int) -> None:
        """Take a sequence's cache (its last `length` positions of [1, kv_heads, T, head_dim] per
        layer, stored as fp16) under `key`, with room for `capacity` positions."""
        self.open(key, max(capacity, length))
        k_cache, v_cache = self._caches[key]
        for i, (keys, values) in enumerate(layers):
            k_cache[i, :, :length] = keys[0, :, keys.shape[2] - length:]
            v_cache[i, :, :length] = values[0, :, values.shape[2] - length:]

    def holds(self, key: int) -> bool:
        return key in self._caches

    def drop(self, key: int) -> None:
        self._caches.pop(key, None)

    def clear(self) -> None:
        self._caches.clear()

    def _grow(self, key: int, needed: int) -> None:
        k_cache, v_cache = self._caches[key]
        old = k_cache.shape[2]
        if needed <= old or needed > self.max_pos:
            return  # too far is refused by the pass itself
        capacity = min(self.max_pos, max(needed, 2 * old))
        shape = (self.n_layers, self.n_kv_heads, capacity, self.head_dim)
        grown_k, grown_v = torch.empty(shape, dtype=CACHE_DTYPE), torch.empty(shape, dtype=CACHE_DTYPE)
        grown_k[:, :, :old], grown_v[:, :, :old] = k_cache, v_cache
        self._caches[key] = (grown_k, grown_v)

    # ---- a pass ----------------------------------------------------------------------------
    def forward(self, keys: list[int], tokens: list[int], positions: list[int], slots: list[int],
                threads: int = 1, logits_from: int = 0) -> torch.Tensor:
        """Logits [rows - logits_from, vocab]: row i is `tokens[i]` at `positions[i]` of sequence
        `keys[i]`, with the adapter in `slots[i]` (0: none). A sequence may have several rows (a
        draft or a prompt: consecutive positions). The sequences' caches keep the rows' keys and
        values; only rows from `logits_from` on get logits (a prompt needs its last one)."""
        rows = len(tokens)
        if not len(keys) == len(positions) == len(slots) == rows:
            raise TuneryError(f"a fast-lane pass needs as many sequences, positions and slots as tokens ({rows})",
                              code="lane_bad_rows")
        for key, position in zip(keys, positions, strict=True):
            if key not in self._caches:
                raise TuneryError(f"the fast lane holds no sequence {key}", code="lane_no_sequence")
            self._grow(key, position + 1)
        if any(slot not in self._lora_tables for slot in slots):
            raise TuneryError(f"the fast lane holds no adapter in slots {sorted(set(slots) - set(self._lora_tables))}",
                              code="lane_no_adapter")
        tables = [self._lora_tables[slot] for slot in slots]
        max_rank = max([t[2] for t in tables if t is not None], default=0)
        caches = [self._caches[key] for key in keys]
        longest = max((k.shape[2] for k, _ in caches), default=0)
        if longest > self._workspace_size[0] or max_rank > self._workspace_size[1]:
            size = (max(longest, self._workspace_size[0]), max(max_rank, self._workspace_size[1]))
            self._workspace = torch.empty(self.lib.fd_workspace_floats(ctypes.byref(self._struct), MAX_ROWS, *size))
            self._workspace_size = size
        ids = (ctypes.c_int64 * rows)(*tokens)
        c_positions = (ctypes.c_int32 * rows)(*positions)
        k_ptrs = (ctypes.c_void_p * rows)(*[k.data_ptr() for k, _ in caches])
        v_ptrs = (ctypes.c_void_p * rows)(*[v.data_ptr() for _, v in caches])
        caps = (ctypes.c_int32 * rows)(*[k.shape[2] for k, _ in caches])
        cache_lengths = (ctypes.c_int64 * rows)(*[min(k.numel(), v.numel()) for k, v in caches])
        loras = None
        if max_rank:
            loras = (ctypes.c_void_p * rows)(*[None if t is None else ctypes.addressof(t[0]) for t in tables])
        status = self.lib.fd_forward(ctypes.byref(self._struct), rows, ids, c_positions, k_ptrs, v_ptrs, caps,
                                     cache_lengths, loras, self.n_layers * len(PROJECTIONS), self._logits.data_ptr(),
                                     self._logits.numel(), self._workspace.data_ptr(), self._workspace.numel(),
                                     max_rank, logits_from, threads)
        if status:
            raise lane_error(status, f"a pass of {rows} rows at positions {positions} (caches of "
                                     f"{[k.shape[2] for k, _ in caches]}, context {self.max_pos}, vocabulary {self.vocab})")
        return self._logits[:rows - logits_from]


def _rope_tables(rotary: nn.Module, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    rope_type = getattr(rotary, "rope_type", "default")
    if rope_type not in STATIC_ROPE:
        raise FastLaneUnavailable(f"rotary embedding type {rope_type!r} changes with the sequence length")
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, torch.arange(positions).unsqueeze(0))
    return cos[0].float(), sin[0].float()


def _check_model(model: DecoderModel) -> None:
    """Raise FastLaneUnavailable unless the model is a decoder the C pass computes exactly."""
    config = model.config
    if config.model_type not in MODEL_TYPES:
        raise FastLaneUnavailable(f"model type {config.model_type!r} (the fast lane knows {', '.join(MODEL_TYPES)})")
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        raise FastLaneUnavailable("the MLP is not a plain SiLU-gated one")
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
        raise FastLaneUnavailable("sliding-window attention")
    decoder = getattr(model, "model", None)
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(decoder, "rotary_emb"):
        raise FastLaneUnavailable("the decoder is not laid out as model.model.layers")
    head = model.get_output_embeddings()
    if not isinstance(head, Int8GroupLinear) or head.bias is not None or head.group_size != 32:
        raise FastLaneUnavailable("the output head is not int8 per group of 32 (serve with --weights int4)")
    if not isinstance(decoder.embed_tokens, nn.Embedding):
        raise FastLaneUnavailable("the input embedding is not a plain table")
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    for block in decoder.layers:
        attention: Any = getattr(block, "self_attn", None)
        if not all(hasattr(block, name) for name in ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")):
            raise FastLaneUnavailable("a decoder layer is not laid out as attention, MLP and two RMSNorms")
        if abs(getattr(attention, "scaling", head_dim ** -0.5) - head_dim ** -0.5) > 1e-9 or n_heads % n_kv:
            raise FastLaneUnavailable("attention is not plain scaled dot-product with grouped heads")
        if any(hasattr(attention, name) for name in ("q_norm", "k_norm")):
            raise FastLaneUnavailable("attention normalizes queries and keys")
        for part, name in PROJECTIONS:
            layer = _base(getattr(getattr(block, part, None), name, None))
            if not isinstance(layer, Int4Linear) or layer.group_size != 32:
                raise FastLaneUnavailable(f"{part}.{name} is not an int4 layer (serve with --weights int4)")
            if layer.in_features % 64:
                raise FastLaneUnavailable(f"{part}.{name} has {layer.in_features} in features (a multiple of 64 "
                                          "is needed)")
        if _base(attention.q_proj).out_features != n_heads * head_dim or head_dim % 2:
            raise FastLaneUnavailable("the attention projections do not match the head layout")
