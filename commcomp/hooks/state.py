"""State shared by the commcomp DDP communication hooks: configuration, counters, RNG position,
error-feedback residuals and wire statistics. Everything a resume needs is in ``state_dict()``."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from ..codecs import CODINGS, canonical_coding
from ..quantizers import Quantizer
from ._bucket import ddp_named_parameters
from ._groups import GroupInfo, node_groups, private_copy, resolve_group
from ._hook_state import HookState
from ._params import ParameterKeys, ParamSlice
from ._payload import EliasChoice
from ._residuals import ParameterResiduals
from ._wire import BucketWire

__all__ = ["CompressionState", "CODINGS", "check_compression_state"]

logger = logging.getLogger("commcomp.hooks")
# Golden-ratio increment: spreads rank ids over the 63-bit Philox key space.
_RANK_KEY_STRIDE = 0x9E3779B97F4A7C15


class CompressionState(HookState):
    r"""Configuration and running state of :func:`allgather_hook` / :func:`allreduce_hook`.

    Args:
        quantizer: a :class:`~commcomp.quantizers.Quantizer` (``QSGD``, ``QSGDInf``, ``NUQSGD``,
            ``FixedLevels``) or an adaptive one (``ALQ``, ``AMQ``), which is refitted on its schedule.
        process_group: the group to communicate in (``None``: the default group).
        coding: symbol coding on the wire for :func:`allgather_hook`: ``"fixed"`` (bit packing) or
            ``"elias-gamma"`` / ``"elias-delta"`` / ``"elias-omega"`` (run-length + Elias;
            ``"elias"`` = ``"elias-gamma"``).
        seed: base seed of the Philox streams; each rank derives its own key from it, so
            quantization noise is independent across ranks and reproducible across runs.
        start_iter: iterations run with plain fp32 allreduce before compression starts (warm-up,
            as ``PowerSGDState.start_powerSGD_iter``).
        min_compression_numel: buckets with fewer elements go uncompressed (headers and norms
            would outweigh the savings).
        error_feedback: keep the quantization error and add it to the next gradient of the same
            parameters (biased but lower-variance). Residuals are kept per parameter, so DDP's
            bucket layout may change (it does after the first iteration, and on resume); they
            are checkpointed. :func:`reduce_scatter_hook` keeps a second residual for the chunk
            each rank re-quantizes (see its docstring).
        log_every: log wire statistics (and measure the quantization variance) every this many
            iterations; 0 disables.
        max_payload_bytes: largest payload a peer may announce for one bucket (variable-size
            codings); a larger announcement raises :class:`~commcomp.hooks.PeerPayloadError`
            naming that rank before anything is allocated. Default: the bucket's fp32 size plus
            4 KiB (no honest payload is larger).
        elias_min_saving: with an Elias coding, each parameter's payload is Elias-coded only where
            that is smaller than fixed width; a parameter whose code saved less than this share
            of the bytes is sent fixed-width for the next 100 iterations without trying.
        hierarchical: for :func:`reduce_scatter_hook`: reduce in fp32 inside each node and
            compress only across nodes. Nodes are ``local_world_size`` consecutive ranks
            (default: ``LOCAL_WORLD_SIZE``, which torchrun sets), or give
            ``intra_node_group`` / ``inter_node_group`` (this rank's node, and the ranks of
            the other nodes with its local rank) yourself.
        allow_wide_sums: for :func:`allreduce_hook`: accept integer sums that need int32 on the
            wire (``max level integer x world size > 127``): 4 bytes per coordinate, what fp32
            sends. Off by default: such a configuration is refused with a ``ValueError`` when the
            world size is known (:func:`hook_from_spec` in an initialized group,
            :func:`register_comm_hook`, or the hook's first call).

    Attributes:
        iteration: training iterations completed (advanced when the last bucket is reduced).
        residuals: the error-feedback residuals (:class:`ParameterResiduals`).
        bytes_sent: bytes this rank put on the wire in the last completed iteration (read after
            ``backward()``: every stage of it, those recorded from callbacks included).
        bytes_uncompressed: what fp32 allreduce would have sent for the same buckets.
        compression_ratio: ``bytes_uncompressed / bytes_sent`` of the last iteration.
        total_bytes_sent, total_bytes_uncompressed: the same, summed over all iterations.
        variance_estimate: last measured ``||Q(g) - g||^2 / ||g||^2`` of a compressed bucket.

    Example::

        >>> import torch, commcomp
        >>> from commcomp.hooks import CompressionState, allgather_hook
        >>> state = CompressionState(commcomp.NUQSGD(bits=4, bucket_size=512), coding="elias-gamma")
        >>> state.state_dict()["iteration"]
        0
        >>> # ddp_model.register_comm_hook(state, allgather_hook)
        >>> # state.bind(ddp_model.module)   # optional: residuals keyed by parameter name
    """

    __slots__ = (
        "quantizer",
        "coding",
        "seed",
        "start_iter",
        "min_compression_numel",
        "error_feedback",
        "log_every",
        "max_payload_bytes",
        "elias",
        "hierarchical",
        "local_world_size",
        "intra_node_group",
        "inter_node_group",
        "allow_wide_sums",
        "residuals",
        "parameters",
        "variance_estimate",
        "total_bytes_sent",
        "total_bytes_uncompressed",
        "_bytes_by_iteration",
    )

    def __init__(
        self,
        quantizer: Quantizer,
        process_group: dist.ProcessGroup | None = None,
        coding: str = "fixed",
        seed: int = 0,
        start_iter: int = 0,
        min_compression_numel: int = 1024,
        error_feedback: bool = False,
        log_every: int = 100,
        max_payload_bytes: int | None = None,
        elias_min_saving: float = 0.05,
        hierarchical: bool = False,
        local_world_size: int | None = None,
        intra_node_group: dist.ProcessGroup | None = None,
        inter_node_group: dist.ProcessGroup | None = None,
        allow_wide_sums: bool = False,
    ) -> None:
        if not isinstance(quantizer, Quantizer):
            raise ValueError(f"quantizer must be a commcomp Quantizer, got {type(quantizer).__name__}")
        coding = canonical_coding(coding)
        for name, value in (("seed", seed), ("start_iter", start_iter), ("min_compression_numel", min_compression_numel), ("log_every", log_every)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if max_payload_bytes is not None and (not isinstance(max_payload_bytes, int) or max_payload_bytes < 1):
            raise ValueError(f"max_payload_bytes must be a positive int or None, got {max_payload_bytes!r}")
        if local_world_size is not None and (not isinstance(local_world_size, int) or local_world_size < 1):
            raise ValueError(f"local_world_size must be a positive int or None, got {local_world_size!r}")
        if (intra_node_group is None) != (inter_node_group is None):
            raise ValueError("give both intra_node_group and inter_node_group, or neither")
        if not hierarchical and (local_world_size is not None or intra_node_group is not None):
            raise ValueError("local_world_size and intra/inter_node_group need hierarchical=True")
        if hierarchical and process_group is not None and intra_node_group is None:
            raise ValueError("hierarchical=True over a process_group needs explicit intra_node_group and inter_node_group")
        self.elias = EliasChoice(elias_min_saving)
        self.hierarchical = bool(hierarchical)
        self.local_world_size = local_world_size
        self.intra_node_group = intra_node_group
        self.inter_node_group = inter_node_group
        self.allow_wide_sums = bool(allow_wide_sums)
        self.quantizer = quantizer
        self.coding = coding
        self.seed = seed
        self.start_iter = start_iter
        self.min_compression_numel = min_compression_numel
        self.error_feedback = bool(error_feedback)
        self.log_every = log_every
        self.max_payload_bytes = max_payload_bytes
        self.residuals = ParameterResiduals()
        self.parameters = ParameterKeys()
        self.variance_estimate = float("nan")
        self.total_bytes_sent = 0
        self.total_bytes_uncompressed = 0
        self._bytes_by_iteration: dict[int, list[int]] = {}  # iteration -> [sent, uncompressed]
        super().__init__(process_group)  # last: creating the groups needs the options above

    def _make_send_groups(self) -> tuple[GroupInfo, ...]:
        """The hook's group; in hierarchical mode ``(intra, inter, everyone)``, node groups first."""
        everyone = private_copy(self.process_group)
        if not self.hierarchical:
            return (everyone,)
        if self.intra_node_group is None:  # created here, for commcomp alone
            intra, inter = node_groups(self.local_world_size)
            return resolve_group(intra), resolve_group(inter), everyone
        return private_copy(self.intra_node_group), private_copy(self.inter_node_group), everyone

    # -- helpers used by the hooks -------------------------------------------------------------
    def rank_seed(self, rank: int) -> int:
        """This rank's Philox key: distinct per rank, fixed by ``seed``."""
        return (self.seed + rank * _RANK_KEY_STRIDE) & ((1 << 63) - 1)

    def compressing(self, numel: int) -> bool:
        return self.iteration >= self.start_iter and numel >= self.min_compression_numel

    def bind(self, model: torch.nn.Module) -> None:
        """Key parameters (their residuals) by their names in ``model``: the DDP model or
        ``ddp_model.module``.

        Call before the first backward. Optional with DDP's bucket path: without it, parameters
        are keyed by the order in which the hook first sees them, which a resumed run reproduces
        as long as it builds DDP the same way. Needed under compiled autograd, where DDP hands
        the hook one parameter at a time (see :meth:`HookState.bind`).
        """
        super().bind(model)
        self.parameters.bind(ddp_named_parameters(model))

    def record(self, sent: int, uncompressed: int, iteration: int | None = None) -> None:
        """Count bytes put on the wire for ``iteration`` (default: the current one).

        A stage launched from a callback records with the iteration its hook body captured: the
        last bucket's body may already have ended that iteration.
        """
        counts = self._bytes_by_iteration.setdefault(self.iteration if iteration is None else iteration, [0, 0])
        counts[0] += sent
        counts[1] += uncompressed
        self.total_bytes_sent += sent
        self.total_bytes_uncompressed += uncompressed

    def _last_iteration_bytes(self) -> list[int]:
        # The iteration whose last body ran most recently: once backward() returned, DDP has waited
        # for every bucket of it, so all of its stages have recorded.
        return self._bytes_by_iteration.get(self.iteration - 1, [0, 0])

    @property
    def bytes_sent(self) -> int:
        return self._last_iteration_bytes()[0]

    @property
    def bytes_uncompressed(self) -> int:
        return self._last_iteration_bytes()[1]

    @property
    def compression_ratio(self) -> float:
        sent, uncompressed = self._last_iteration_bytes()
        return uncompressed / sent if sent else 1.0

    def measuring_variance(self) -> bool:
        return self.log_every > 0 and self.iteration % self.log_every == 0

    def parameter_slices(self, bucket: dist.GradBucket) -> list[ParamSlice]:
        """Where the bucket's parameters lie in its buffer; every hook body calls it (also in
        warm-up), so residual keys are assigned in the order of DDP's first iteration."""
        return self.parameters.slices(bucket)

    def with_residual(self, bucket: dist.GradBucket, slices: list[ParamSlice]) -> torch.Tensor:
        """The bucket's flat gradient plus its parameters' error-feedback residuals (if any)."""
        x = bucket.buffer()
        if not self.error_feedback:
            return x
        x = x.to(torch.float32, copy=True)
        self.residuals.add_to(x, slices, "local")
        return x

    def after_compression(
        self, slices: list[ParamSlice], sent: torch.Tensor, decoded: torch.Tensor, lo: int = 0, measure: bool = False
    ) -> None:
        """Keep the residual of what this rank sent (bucket coordinates ``[lo, lo + sent.numel())``)
        and, if ``measure`` (:meth:`measuring_variance`, read in the hook body), measure the
        quantization variance."""
        if self.error_feedback:
            self.residuals.store(sent.float() - decoded, slices, "local", lo)
        if measure:
            xf = sent.float()
            denom = float(xf.pow(2).sum())
            self.variance_estimate = float((decoded - xf).pow(2).sum()) / denom if denom > 0 else 0.0

    def wants_decoded_own(self) -> bool:
        """Whether :meth:`after_compression` needs this rank's own decoded bucket. Read it in the
        hook body: the iteration may end before a callback runs."""
        return self.error_feedback or self.measuring_variance()

    def observe(self, x: torch.Tensor, norms: torch.Tensor | None = None) -> None:
        """Feed adaptive quantizers (ALQ/AMQ) the statistics they refit from, on the iterations
        their schedule asks for (``norms``: the bucket norms, if already computed)."""
        should_observe = getattr(self.quantizer, "should_observe", None)
        if should_observe is not None and should_observe(self.iteration):
            self.quantizer.observe(x, norms)

    def node_groups(self) -> tuple[GroupInfo, GroupInfo, GroupInfo]:
        """``(intra, inter, world)`` groups of hierarchical mode (commcomp's own, made with the state)."""
        intra, inter, everyone = self.send_groups()
        return intra, inter, everyone

    def payload_cap(self, numel: int) -> int:
        """Largest payload accepted from a peer for a bucket of ``numel`` elements."""
        return self.max_payload_bytes if self.max_payload_bytes is not None else 4 * numel + 4096

    def _end_iteration(self, device: torch.device) -> torch.futures.Future | None:
        """Called by the wire layer in the body of an iteration's last bucket."""
        for old in [k for k in self._bytes_by_iteration if k < self.iteration - 1]:
            del self._bytes_by_iteration[old]  # kept: the previous iteration (complete) and this one
        if self.log_every and self.iteration % self.log_every == 0 and self.iteration > 0:
            # This iteration's callbacks may still be recording: report the previous one, complete.
            sent, uncompressed = self._bytes_by_iteration.get(self.iteration - 1, [0, 0])
            logger.info(
                "iteration %d: sent %d bytes (fp32 would send %d, ratio %.2fx), quantization variance %.4g",
                self.iteration - 1, sent, uncompressed, uncompressed / sent if sent else 1.0, self.variance_estimate,
            )
        should_observe = getattr(self.quantizer, "should_observe", None)
        if should_observe is None or not should_observe(self.iteration):
            return None
        # A refit iteration: every rank gets here, warm-up included. The statistics are summed on
        # the bucket's device (the process group's), in the launch order, and the levels refitted
        # on the communication thread; the next iteration starts with them.
        everyone = self.send_groups()[-1]
        wire = BucketWire(everyone, 1, device)
        summed = wire.all_reduce_sum(0, self.quantizer.take_statistics(device))
        return wire.chain(summed, self.quantizer.refit)

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs (no process group: that belongs to the new run)."""
        quantizer_state = getattr(self.quantizer, "state_dict", None)
        return {
            "coding": self.coding,
            "seed": self.seed,
            "start_iter": self.start_iter,
            "min_compression_numel": self.min_compression_numel,
            "error_feedback": self.error_feedback,
            "iteration": self.iteration,
            "residuals": self.residuals.state_dict(),
            "quantizer": quantizer_state() if quantizer_state is not None else None,
            "quantizer_repr": repr(self.quantizer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"iteration", "residuals", "seed"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        if state.get("quantizer_repr", repr(self.quantizer)) != repr(self.quantizer):
            raise ValueError(
                f"checkpoint was made with {state['quantizer_repr']}, this state uses {self.quantizer!r}"
            )
        self.coding = canonical_coding(state.get("coding", self.coding))
        self.seed = int(state["seed"])
        self.start_iter = int(state.get("start_iter", self.start_iter))
        self.min_compression_numel = int(state.get("min_compression_numel", self.min_compression_numel))
        self.error_feedback = bool(state.get("error_feedback", self.error_feedback))
        self.iteration = int(state["iteration"])
        self.residuals.load_state_dict(state["residuals"])
        if state.get("quantizer") is not None:
            self.quantizer.load_state_dict(state["quantizer"])


def check_compression_state(state: Any, hook: str) -> None:
    """Refuse, before anything is sent, a state ``hook`` (a compression hook's name) cannot use."""
    if not isinstance(state, CompressionState):
        raise ValueError(f"{hook} needs a commcomp.hooks.CompressionState, got {type(state).__name__}")
    if state.hierarchical and hook != "reduce_scatter_hook":
        raise ValueError(
            f"hierarchical=True is an option of reduce_scatter_hook ('rs-' specs); {hook} would ignore it"
        )
