"""NCCL's rules, enforced on a CPU machine: the strict test mode.

No machine of this project has two GPUs, so NCCL never runs in the tests; Gloo hides the rules
NCCL imposes. In strict mode, every rank of a multi-process test (``_dist.run_ranks(...,
mode="strict")``) runs its DDP hooks as if the gradients lived on an accelerator and the process
group were NCCL:

* **The bucket is on a device.** Hooks receive their bucket (and, under compiled autograd, their
  gradient) as :class:`DeviceTensor` s, CPU tensors that stand for tensors on the accelerator
  ``DEVICE`` (``privateuseone:0``): ``.device`` says so inside a hook, a factory given that device
  makes one, and every op on one makes more. A factory without a device makes a host tensor, as
  on CUDA.
* **R1 completion at launch.** A collective launched from hook code waits inside the launch and
  returns a work (and future) already complete, as NCCL's future completes at enqueue: a callback
  attached to it runs inline, on the launching thread.
* **R2 devices.** Every collective tensor is a device tensor (never a host one), contiguous, of a
  dtype NCCL reduces; an op mixing device tensors with a host tensor of more than zero dimensions
  fails, as on CUDA.
* **R3 shapes** and **R4 one global launch order.** Every rank logs each launch of hook code
  (group, op, dtype, element counts, all-to-all splits); at the end of the rank's test function
  (:func:`finish`) the logs of every pair of ranks must agree on the groups they share, entry for
  entry: the same operations in the same order, all-gathers of equal inputs, all-to-all splits
  that match (what rank ``a`` sends ``b`` is what ``b`` expects from ``a``).
* **R5 host reads.** Reads of device data on the host (``item``, ``tolist``, ``bool``/``int``/
  ``float`` of a tensor, ``nonzero``, boolean-mask indexing, a copy to the host...) are counted per
  thread: on the thread running the hook body (what stalls backward) and on commcomp's
  communication thread (``commcomp-comm``, which may read), including the reads commcomp's own
  ops make inside C++ when their inputs are CUDA tensors (:data:`OP_HOST_READS`, from
  ``csrc/cuda/*_binding.cpp`` and ``csrc/composite/payload.cpp``). More than ``max_body_reads``
  (default 0) per backward pass on the hook thread is a violation.
* **R6 futures are joined by waiting.** ``torch.futures.collect_all``'s sub-futures have no stream
  synchronization: reading one's ``value()`` before ``wait()`` is a violation; so is reading a
  future's ``value()`` anywhere but in that future's own callback.
* **R7 no group creation** while hook code runs (a hook body, or the communication thread).
* **Streams.** Every op on device tensors in hook code runs inside ``on_comm_stream`` (commcomp's
  stream: ``commcomp/hooks/_streams.py``), where all its device work belongs.

A violation raises :class:`StrictNCCLViolation` where it happens and is recorded, so
:func:`finish` fails the rank even where hook code swallowed the exception.
``skew=True`` (the order tests) also delays the completion of each collective by a different,
rank-dependent time, so a launch order that depends on when data arrives differs between ranks.
"""
from __future__ import annotations

import datetime
import functools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

import commcomp.hooks._comm_thread as comm_thread_module
from commcomp.hooks._comm_thread import THREAD_NAME
from commcomp.hooks._streams import comm_device

__all__ = ["DEVICE", "DeviceTensor", "StrictNCCLViolation", "install", "finish", "current", "as_ddp_calls_it", "OP_HOST_READS"]

DEVICE = torch.device("privateuseone", 0)
_PEER_WAIT = datetime.timedelta(seconds=30)
NCCL_DTYPES = {torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32,
               torch.float64, torch.bool}


class StrictNCCLViolation(BaseException):
    """Hook code broke one of NCCL's rules (a ``BaseException``: no ``except Exception`` in the
    code under test swallows it)."""


class DeviceTensor(torch.Tensor):
    """A CPU tensor standing for one on :data:`DEVICE` (see the module docstring)."""

    __torch_function__ = torch._C._disabled_torch_function_impl


def _as_device(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(DeviceTensor) if type(t) is torch.Tensor else t


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, DeviceTensor) else t


def _is_device(x: Any) -> bool:
    if isinstance(x, torch.device):
        return x == DEVICE
    if isinstance(x, str):
        try:
            return torch.device(x) == DEVICE
        except RuntimeError:
            return False
    return False


def _is_host_device(x: Any) -> bool:
    if isinstance(x, (torch.device, str)):
        try:
            return torch.device(x).type == "cpu"
        except RuntimeError:
            return False
    return False


def _levels_dev(args: tuple, index: int) -> int:
    return int(len(args) > index and isinstance(args[index], DeviceTensor))


def _decode_payload_reads(args: tuple, out: Any) -> int:
    header = out[0]
    stream_bytes, coding = int(header[8]), int(header[0])
    levels = 1 if len(args) > 4 and isinstance(args[4], DeviceTensor) else 0
    return levels + 2 + (2 if coding != 0 else int(stream_bytes > 0))


# Host reads each commcomp op makes when its inputs are CUDA tensors: f(args, kwargs, output).
# Read off the CUDA bindings: level_table_from copies the level table to the host; given norms are
# checked with nonzero + all().item(); decodable norms with nonzero + min().item(); accumulate
# reads an error flag once; pack checks max().item(); Elias encode reads a flag and the total
# size, decode the bucket lengths and an error flag; the payload ops copy header, sections and
# (fixed width) the last byte to the host.
OP_HOST_READS: dict[str, Callable[[tuple, dict, Any], int]] = {
    "bucket_norms": lambda a, k, out: 0,
    "quantize": lambda a, k, out: _levels_dev(a, 1)
    + (1 if (len(a) > 6 and a[6] is not None) or not (len(a) > 7 and a[7]) else 0)
    + (2 if len(a) > 6 and a[6] is not None else 0),
    "dequantize": lambda a, k, out: _levels_dev(a, 2) + 3,
    "dequantize_accumulate": lambda a, k, out: _levels_dev(a, 3) + 2 * len(a[1]) + 1,
    "pack_symbols": lambda a, k, out: int(a[0].numel() > 0),
    "unpack_symbols": lambda a, k, out: 0,
    "elias_encode": lambda a, k, out: 2,
    "elias_decode": lambda a, k, out: 2,
    "level_stats": lambda a, k, out: 0,
    "read_payload_header": lambda a, k, out: 1,
    "decode_payload": lambda a, k, out: _decode_payload_reads(a, out),
}

# Tensor methods and functions that read device data on the host (a CUDA synchronization).
_HOST_READ_NAMES = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "numpy",
                    "nonzero", "argwhere", "equal", "allclose", "masked_select", "unique", "unique_consecutive",
                    "bincount", "__repr__", "__format__", "__str__", "cpu"}
# Ops that may take a host tensor beside device ones (a copy between devices).
_CROSS_DEVICE = {"copy_", "to", "__setitem__", "as_subclass", "data_ptr", "untyped_storage"}


@dataclass
class _Launch:
    group: str
    members: tuple[int, ...]
    op: str
    dtype: str
    numel: tuple[int, ...]
    splits: tuple[tuple[int, ...], tuple[int, ...]] | None
    step: int

    def key(self) -> tuple:
        return (self.group, self.op, self.dtype)


@dataclass
class _Strict:
    rank: int
    skew: bool
    max_body_reads: int | None
    check_group: Any = None
    launches: list[_Launch] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    body_reads: list[int] = field(default_factory=lambda: [0])  # per backward pass (index: step)
    comm_reads: list[int] = field(default_factory=lambda: [0])
    hook_calls: int = 0
    mode: Any = None
    store: Any = None
    per_group: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)

    # -- where hook code runs ------------------------------------------------------------------
    def in_hook_code(self) -> bool:
        return getattr(self.local, "body_depth", 0) > 0 or threading.current_thread().name == THREAD_NAME

    def step(self) -> int:
        return len(self.body_reads) - 1

    def violate(self, rule: str, message: str) -> None:
        text = f"strict NCCL mode, rank {self.rank}, {rule}: {message}"
        with self.lock:
            self.violations.append(text)
        raise StrictNCCLViolation(text)

    def count_read(self, what: str, n: int = 1) -> None:
        if n <= 0 or not self.in_hook_code():
            return
        over = None
        with self.lock:
            if threading.current_thread().name == THREAD_NAME:
                self.comm_reads[-1] += n
            else:
                self.body_reads[-1] += n
                if self.max_body_reads is not None and self.body_reads[-1] > self.max_body_reads:
                    over = self.body_reads[-1]
        if over is not None:
            self.violate("R5 host reads", f"{over} host reads of device data on the hook body's thread in step "
                         f"{self.step()} (budget {self.max_body_reads}; last: {what})")


_STATE: _Strict | None = None


def current() -> _Strict | None:
    """The strict mode of this process, if installed."""
    return _STATE


class _Mode(TorchFunctionMode):
    """Device tensors, host reads, mixed devices and the stream rule (see the module docstring)."""

    def __init__(self, strict: _Strict) -> None:
        super().__init__()
        self.strict = strict

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.device.__get__ or func == torch.Tensor.device.__get__:
            return DEVICE if isinstance(args[0], DeviceTensor) else func(*args)
        name = getattr(func, "__name__", None) or str(func)
        if name in ("__get__", "__set__"):  # other properties (dtype, shape, ...)
            return func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        on_device = any(isinstance(t, DeviceTensor) for t in leaves)
        to_device = _is_device(kwargs.get("device"))
        op_name = _commcomp_op(func)
        if name == "to" and any(_is_device(a) for a in args[1:]):
            to_device = True
        to_host = on_device and (name == "cpu" or (name == "to" and _targets_host(args, kwargs)))
        if to_device:
            kwargs = dict(kwargs, device="cpu") if "device" in kwargs else kwargs
            args = tuple("cpu" if _is_device(a) else a for a in args)
        strict = self.strict
        if on_device or to_device:
            if strict.in_hook_code() and comm_device() is None:
                strict.violate("streams", f"{name} on device tensors outside on_comm_stream (commcomp's stream)")
            if on_device and name not in _CROSS_DEVICE and op_name is None:
                for t in leaves:
                    if type(t) is torch.Tensor and t.dim() > 0:
                        strict.violate("R2 devices", f"{name} mixes device tensors with a host tensor of shape "
                                       f"{tuple(t.shape)} (CUDA refuses that)")
        if on_device and (name in _HOST_READ_NAMES or to_host or _masked(name, args)):
            strict.count_read(name)
        if name in ("copy_", "__setitem__") and type(args[0]) is torch.Tensor and isinstance(args[-1], DeviceTensor):
            strict.count_read(f"{name} to the host")
        if name == "repeat_interleave" and on_device and "output_size" not in kwargs:
            strict.count_read("repeat_interleave without output_size")
        out = func(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        if op_name is not None and on_device:
            strict.count_read(f"commcomp.{op_name}", OP_HOST_READS[op_name](args, kwargs, out))
        host_destination = name in ("copy_", "__setitem__") and type(args[0]) is torch.Tensor
        if (on_device or to_device) and not (to_host or host_destination):
            out = tree_map(_as_device, out)
        return out


def _targets_host(args: tuple, kwargs: dict) -> bool:
    return _is_host_device(kwargs.get("device")) or any(_is_host_device(a) for a in args[1:])


def _masked(name: str, args: tuple) -> bool:
    if name not in ("__getitem__", "__setitem__", "index_put_", "index_put"):
        return False
    leaves, _ = tree_flatten(args[1:2])
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in leaves)


def _commcomp_op(func: Any) -> str | None:
    if isinstance(func, (torch._ops.OpOverloadPacket, torch._ops.OpOverload)):
        qualified = func._qualified_op_name if isinstance(func, torch._ops.OpOverloadPacket) else func._schema.name
        namespace, _, op = qualified.partition("::")
        if namespace == "commcomp":
            if op not in OP_HOST_READS:
                raise StrictNCCLViolation(f"strict NCCL mode: commcomp::{op} has no entry in OP_HOST_READS")
            return op
    return None


# -- collectives -----------------------------------------------------------------------------
class _DoneWork:
    """What a collective returns in strict mode: already complete (R1), as NCCL's future is at
    enqueue."""

    def __init__(self, value: Any) -> None:
        self._future = torch.futures.Future()
        self._future.set_result(value)

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def get_future(self) -> torch.futures.Future:
        return self._future


def _collective(strict: _Strict, name: str, original: Callable, tensor_args: tuple[str, ...]) -> Callable:
    @functools.wraps(original)
    def strict_collective(*args, **kwargs):
        if not strict.in_hook_code():
            return original(*args, **kwargs)
        bound = _bind(original, args, kwargs)
        tensors = [bound[a] for a in tensor_args if a in bound]
        flat = [t for x in tensors for t in (x if isinstance(x, (list, tuple)) else [x])]
        for t in flat:
            if not isinstance(t, DeviceTensor):
                strict.violate("R2 devices", f"{name} got a host tensor ({t.dtype}, {tuple(t.shape)}): NCCL needs "
                               "every tensor on the process group's device")
            if not t.is_contiguous():
                strict.violate("R2 devices", f"{name} got a non-contiguous tensor of shape {tuple(t.shape)}")
            if t.dtype not in NCCL_DTYPES:
                strict.violate("R2 devices", f"{name} got dtype {t.dtype}, which NCCL does not reduce")
        group = bound.get("group") or dist.group.WORLD
        splits = None
        if name == "all_to_all_single":
            world = dist.get_world_size(group)
            out_n, in_n = bound["output"].numel(), bound["input"].numel()
            splits = (tuple(bound.get("input_split_sizes") or [in_n // world] * world),
                      tuple(bound.get("output_split_sizes") or [out_n // world] * world))
        launch = _Launch(
            group=group.group_name, members=tuple(dist.get_process_group_ranks(group)), op=name,
            dtype=str(flat[0].dtype) if flat else "", numel=tuple(t.numel() for t in flat), splits=splits,
            step=strict.step(),
        )
        with strict.lock:
            strict.launches.append(launch)
        _match_peers(strict, launch)  # before launching: a mismatch would hang the collective
        # NCCL's future holds the output tensors (the tensor itself for in-place collectives)
        outputs = [bound[tensor_args[0]]]
        plain_args = tuple(tree_map(_plain, a) for a in args)
        plain_kwargs = {k: tree_map(_plain, v) for k, v in kwargs.items()}
        with torch._C.DisableTorchFunction():
            work = original(*plain_args, **plain_kwargs)
            if work is not None:
                work.wait()  # R1: complete at launch
        if strict.skew:
            time.sleep(0.002 * ((len(strict.launches) * 7 + strict.rank * 3) % 5))
        return _DoneWork(outputs) if bound.get("async_op") else None

    return strict_collective


def _match_peers(strict: _Strict, launch: _Launch) -> None:
    """R3/R4 at launch time: this rank's k-th launch on a group must be every member's k-th launch
    on it (the same op, dtype and sizes). Descriptors go through the default store, so a mismatch
    is reported before the collective it would hang; a peer that never gets there (another order
    across groups) is reported after ``_PEER_WAIT``."""
    with strict.lock:
        k = strict.per_group.get(launch.group, 0)
        strict.per_group[launch.group] = k + 1
    store = strict.store
    key = f"{launch.group}/{k}"
    store.set(f"{key}/{strict.rank}", json.dumps(vars(launch)))
    peers = [p for p in launch.members if p != strict.rank]
    try:
        store.wait([f"{key}/{p}" for p in peers], _PEER_WAIT)
    except RuntimeError:
        strict.violate("R4 launch order", f"launch #{k} on group {launch.group} ({launch.op}, step {launch.step}): "
                       f"a peer of {peers} did not launch its #{k} there within {_PEER_WAIT.total_seconds():.0f} s "
                       "(another launch order across groups?)")
    for p in peers:
        theirs = _Launch(**json.loads(store.get(f"{key}/{p}")))
        problems = _compare_pair(strict.rank, [launch], p, [theirs])
        if problems:
            strict.violate("R4 launch order" if problems[0].startswith("R4") else "R3 shapes", problems[0])


def _bind(fn: Callable, args: tuple, kwargs: dict) -> dict:
    import inspect

    signature = inspect.signature(fn)
    bound = signature.bind(*args, **kwargs)
    return dict(bound.arguments)


_COLLECTIVES = {
    "all_gather_single": ("output_tensor", "input_tensor"),
    "all_gather_into_tensor": ("output_tensor", "input_tensor"),
    "all_to_all_single": ("output", "input"),
    "all_reduce": ("tensor",),
    "reduce_scatter_single": ("output", "input"),
    "reduce_scatter_tensor": ("output", "input"),
    "broadcast": ("tensor",),
    "all_gather": ("tensor_list", "tensor"),
    "all_to_all": ("output_tensor_list", "input_tensor_list"),
    "reduce_scatter": ("output", "input_list"),
}
_GROUP_FACTORIES = ("new_group", "new_subgroups", "new_subgroups_by_enumeration", "split_group")


def _no_group_creation(strict: _Strict, name: str, original: Callable) -> Callable:
    @functools.wraps(original)
    def strict_factory(*args, **kwargs):
        if strict.in_hook_code():
            strict.violate("R7 groups", f"dist.{name} called while hook code runs: create groups when the state is "
                           "constructed or bound, on every rank")
        return original(*args, **kwargs)

    return strict_factory


# -- futures ---------------------------------------------------------------------------------
class _SubFuture:
    """A sub-future of ``collect_all``: no stream synchronization, so ``wait()`` before reading."""

    def __init__(self, strict: _Strict, inner: torch.futures.Future) -> None:
        self._strict, self._inner, self._waited = strict, inner, False

    def wait(self) -> Any:
        self._waited = True
        return self._inner.wait()

    def value(self) -> Any:
        if not self._waited:
            self._strict.violate("R6 futures", "value() of a collect_all sub-future read before wait(): on CUDA it "
                                 "skips the stream synchronization (torch.futures.collect_all has no devices)")
        return self._inner.value()

    def done(self) -> bool:
        return self._inner.done()


def _install_futures(strict: _Strict) -> list[tuple[Any, str, Any]]:
    futures = torch.futures
    originals = [(futures, "collect_all", futures.collect_all), (futures.Future, "value", futures.Future.value),
                 (futures.Future, "add_done_callback", futures.Future.add_done_callback),
                 (futures.Future, "then", futures.Future.then)]
    collect_all, value = futures.collect_all, futures.Future.value
    add_done_callback, then = futures.Future.add_done_callback, futures.Future.then

    def strict_collect_all(futs):
        joined = collect_all(futs)
        if not strict.in_hook_code():
            return joined
        wrapped = torch.futures.Future()
        joined.add_done_callback(lambda f: wrapped.set_result([_SubFuture(strict, x) for x in f.wait()]))
        return wrapped

    def own(callback):
        @functools.wraps(callback)
        def run(fut):
            stack = strict.local.__dict__.setdefault("callbacks", [])
            stack.append(id(fut))
            try:
                return callback(fut)
            finally:
                stack.pop()

        return run

    def strict_value(self):
        if strict.in_hook_code() and id(self) not in strict.local.__dict__.get("callbacks", []):
            strict.violate("R6 futures", "Future.value() outside that future's own callback: join futures with "
                           "wait(), which synchronizes the current stream with the future's")
        return value(self)

    futures.collect_all = strict_collect_all
    futures.Future.value = strict_value
    futures.Future.add_done_callback = lambda self, cb: add_done_callback(self, own(cb))
    futures.Future.then = lambda self, cb: then(self, own(cb))
    return originals


# -- hooks -----------------------------------------------------------------------------------
class _DeviceBucket:
    """DDP's bucket with its buffer and gradients on :data:`DEVICE`."""

    def __init__(self, bucket: dist.GradBucket) -> None:
        self._bucket = bucket
        self._buffer = _as_device(bucket.buffer())

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def gradients(self) -> list[torch.Tensor]:
        return [_as_device(g) for g in self._bucket.gradients()]

    def parameters(self) -> list[torch.Tensor]:
        return self._bucket.parameters()  # identity only: hooks key residuals by them

    def index(self) -> int:
        return self._bucket.index()

    def is_last(self) -> bool:
        return self._bucket.is_last()


def _strict_hook(strict: _Strict, mode: _Mode, hook: Callable) -> Callable:
    @functools.wraps(hook)
    def run(state, bucket):
        if strict.skew and strict.rank % 2:
            time.sleep(0.015)  # odd ranks reach each body later: their follow-ups run first
        strict.local.body_depth = getattr(strict.local, "body_depth", 0) + 1
        strict.hook_calls += 1
        try:
            with torch._C.DisableTorchFunction():
                if isinstance(bucket, tuple):  # DDP's python reducer: (grad, param)
                    device_bucket = (_as_device(bucket[0]), bucket[1])
                else:
                    device_bucket = _DeviceBucket(bucket)
            with mode:
                fut = hook(state, device_bucket)
            last = not isinstance(bucket, tuple) and bucket.is_last()
            if last:
                with strict.lock:
                    strict.body_reads.append(0)
                    strict.comm_reads.append(0)
            return fut
        finally:
            strict.local.body_depth -= 1

    return run


def as_ddp_calls_it(hook: Callable) -> Callable:
    """``hook`` as DDP calls a registered hook in this process: for tests that call a hook by hand
    (as DDP's python reducer does); itself outside strict mode."""
    strict = _STATE
    return hook if strict is None else _strict_hook(strict, strict.mode, hook)


def install(rank: int, skew: bool = False, max_body_reads: int | None = 0) -> _Strict:
    """Switch this process to strict mode (right after ``init_process_group``, before any hook
    state is built). ``max_body_reads``: host reads of device data allowed per backward pass on
    the hook body's thread (``None``: count only)."""
    global _STATE
    strict = _STATE = _Strict(rank=rank, skew=skew, max_body_reads=max_body_reads)
    strict.check_group = dist.new_group(backend="gloo")  # finish()'s own exchange, outside the rules
    strict.store = dist.PrefixStore("strict_nccl/", dist.distributed_c10d._get_default_store())
    mode = strict.mode = _Mode(strict)
    for name, tensor_args in _COLLECTIVES.items():
        if hasattr(dist, name):
            setattr(dist, name, _collective(strict, name, getattr(dist, name), tensor_args))
    for name in _GROUP_FACTORIES:
        if hasattr(dist, name):
            setattr(dist, name, _no_group_creation(strict, name, getattr(dist, name)))
    _install_futures(strict)
    register = torch.nn.parallel.DistributedDataParallel.register_comm_hook

    @functools.wraps(register)
    def strict_register(self, state, hook):
        return register(self, state, _strict_hook(strict, mode, hook))

    torch.nn.parallel.DistributedDataParallel.register_comm_hook = strict_register
    main = comm_thread_module._thread_main

    def strict_thread_main(owner):
        with mode:
            main(owner)

    comm_thread_module._thread_main = strict_thread_main
    return strict


def finish() -> None:
    """Fail this rank on any recorded violation, and compare every rank's launch log (R3, R4).

    Call on every rank at the end of its test function (``_dist.run_ranks`` does)."""
    strict = _STATE
    if strict is None:
        return
    world = dist.get_world_size()
    logs: list[Any] = [None] * world
    dist.all_gather_object(logs, [vars(e) for e in strict.launches], group=strict.check_group)
    problems = list(strict.violations)
    problems += _compare_logs([[_Launch(**e) for e in log] for log in logs])
    if problems:
        raise AssertionError("\n".join(problems[:10]) + (f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""))


def _compare_logs(logs: list[list[_Launch]]) -> list[str]:
    """Every pair of ranks' launches on the groups both belong to: the same, entry for entry."""
    return [p for a in range(len(logs)) for b in range(a + 1, len(logs)) for p in _compare_pair(a, logs[a], b, logs[b])]


def _compare_pair(a: int, log_a: list[_Launch], b: int, log_b: list[_Launch]) -> list[str]:
    problems = []
    mine = [e for e in log_a if b in e.members]
    theirs = [e for e in log_b if a in e.members]
    for k, (x, y) in enumerate(zip(mine, theirs)):
        if x.key() != y.key():
            problems.append(f"R4 launch order: ranks {a} and {b} differ at their shared launch {k} (step {x.step}"
                            f"/{y.step}): {x.op} on group {x.group} vs {y.op} on group {y.group}")
            break
        if x.op in ("all_gather_single", "all_gather_into_tensor", "all_reduce", "broadcast") and x.numel[-1] != y.numel[-1]:
            problems.append(f"R3 shapes: {x.op} #{k} on group {x.group}: rank {a} sends {x.numel[-1]} elements, "
                            f"rank {b} {y.numel[-1]}")
        if x.splits is not None:
            ia, ib = list(x.members).index(a), list(x.members).index(b)
            if x.splits[0][ib] != y.splits[1][ia] or y.splits[0][ia] != x.splits[1][ib]:
                problems.append(f"R3 shapes: all_to_all #{k} on group {x.group}: splits of ranks {a} and {b} "
                                f"do not match ({x.splits} vs {y.splits})")
    if len(mine) != len(theirs):
        problems.append(f"R4 launch order: rank {a} launched {len(mine)} collectives shared with rank {b}, "
                        f"which launched {len(theirs)}")
    return problems
