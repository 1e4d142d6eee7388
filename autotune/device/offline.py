"""Offline compilation of a planned Triton launch for a GPU this machine need not have (e.g. GB10, sm_121a).

``triton.compile`` accepts an explicit ``GPUTarget``; the resulting metadata gives the shared memory a config
really uses (``metadata.shared``, bytes), which is how the tuner checks a config against a device it cannot run.
Pointers are typed from the tensors (``meta`` tensors suffice), integers as i32/i64, floats as fp32; constexprs
and ``num_warps``/``num_stages`` come from the launch's keyword arguments. Like the JIT, the compile is told which
arguments are multiples of 16 (every pointer, since allocators align to 256 B, and every integer divisible by 16
that the kernel does not exempt with ``do_not_specialize``): without that, Triton cannot issue 16-byte async copies,
does not pipeline the K loop, and reports far less shared memory than a real launch uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

_DTYPE_CODES = {
    "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.uint8": "u8",
    "torch.int8": "i8", "torch.int32": "i32", "torch.int64": "i64", "torch.int16": "i16",
    "torch.float8_e4m3fn": "fp8e4nv", "torch.float8_e5m2": "fp8e5",  # e.g. an fp8 KV cache
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass(frozen=True)
class CompiledInfo:
    """What an offline compile tells about one kernel.

    Attributes:
        name: kernel name.
        target: e.g. "cuda:121".
        shared_bytes: shared memory per program, bytes.
        num_warps: warps per program.
        asm: the compiler's outputs by stage name (``"ttgir"``, ``"ptx"`` text, ``"cubin"`` bytes, ...).
    """

    name: str
    target: str
    shared_bytes: int
    num_warps: int
    asm: dict = field(default_factory=dict, repr=False, compare=False)


def _arg_type(value) -> str:
    if hasattr(value, "dtype") and hasattr(value, "data_ptr"):
        return "*" + _DTYPE_CODES[str(value.dtype)]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r} for an offline compile")


def compile_launch(kernel, args: tuple, kwargs: dict, *, capability: int, warp_size: int = 32) -> CompiledInfo:
    """Compile ``kernel[grid](*args, **kwargs)`` for CUDA compute capability ``capability`` without a GPU.

    Args:
        kernel: a ``triton.jit`` function.
        args: positional runtime arguments (tensors may be on the ``meta`` device).
        kwargs: constexprs by name plus launch options (num_warps, num_stages, ...).
        capability: e.g. 90 for H100, 121 for GB10.
        warp_size: threads per warp.

    Returns:
        The :class:`CompiledInfo`.

    Raises:
        Whatever Triton raises for a config that does not compile for the target (e.g. an unsupported op).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {key: kwargs[key] for key in _LAUNCH_OPTIONS if key in kwargs}
    constexprs = {key: value for key, value in kwargs.items() if key not in _LAUNCH_OPTIONS}
    names = kernel.arg_names
    runtime_names = [name for name in names if name not in constexprs]
    if len(runtime_names) != len(args):
        raise TypeError(f"{kernel.__name__}: {len(args)} runtime arguments for {len(runtime_names)} parameters")
    types = dict(zip(runtime_names, (_arg_type(value) for value in args)))
    signature = {name: types.get(name, "constexpr") for name in names}
    exempt = {names[i] if isinstance(i, int) else i for i in getattr(kernel, "do_not_specialize", ())}
    values = dict(zip(runtime_names, args))
    aligned = [name for name in runtime_names if name not in exempt and (
        types[name].startswith("*") or (types[name] in ("i32", "i64") and values[name] % 16 == 0))]
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, warp_size), options=options)
    return CompiledInfo(name=kernel.__name__, target=f"cuda:{capability}", shared_bytes=int(compiled.metadata.shared),
                        num_warps=int(compiled.metadata.num_warps), asm=dict(compiled.asm))
