"""Data-parallel training: ``mpiexec -n K python -m tinymlm.train ...`` runs K processes.

Every rank holds the whole model and builds the same global batch from the same seed (so the
masks and the order of the rows are the one-process run's), keeps its own slice of the rows,
and computes the gradient of its slice. The ranks then *sum* their gradients with an
all-reduce, and every rank takes the same optimizer step, so the models never drift apart.

**Why a sum, and of what.** An objective's loss is a mean over the tokens it predicts. Rank r
predicts c_r of the C = Σ c_r tokens of the global batch, and its mean loss is L_r = S_r / c_r
(S_r its summed token losses). The one-process loss is S / C = Σ S_r / C, so rank r
backpropagates L_r · c_r / C and the summed gradients are exactly the one-process gradient. A
plain average of the per-rank means, Σ L_r / K, equals it only when every c_r is C / K, which
masking 15% of the tokens at random does not give. So the counts c_r are all-reduced first
(``sum_counts``), before the forward pass, and the gradients after the backward pass
(``sum_gradients``).

**The all-reduce** runs over flat buckets of about ``BUCKET_BYTES``, the largest tensors
first: one message per bucket instead of one per tensor (a bert-base has ~200 tensors), and
all buckets in flight at once. On CPUs it is MPI's (mpi4py, MPICH's ``mpiexec``); with
``--device cuda`` each rank takes GPU ``local_rank`` and NCCL sums the buckets on the compute
stream, with no copy to the host (``NcclWorld``: written for a multi-GPU machine to confirm,
untested on this project's CPU-only CI).

**A rank that dies or hangs** must not leave the others waiting for ever: every collective is
started non-blocking and polled against a deadline (``TINYMLM_COLLECTIVE_TIMEOUT`` seconds,
default 300); past it the rank says so on stderr in one line and aborts the whole job. An
uncaught exception on any rank aborts the job too (mpi4py's advice), after its traceback.

A plain ``python -m tinymlm.train`` never imports mpi4py: the launcher is recognised from the
environment variables ``mpiexec`` sets (``launched_size``, ``launched_rank``).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from tinymlm import backend
from tinymlm.errors import UsageError

BUCKET_BYTES = 4 << 20  # a few MB: large enough to amortise a message, small enough to pipeline
DEFAULT_TIMEOUT_S = 300.0  # longer than any step or save of a run this project trains
POLL_S = 2e-4  # between tests of an unfinished collective (MPI progresses while we test)

# What MPI launchers put in each process's environment: MPICH and Intel MPI (PMI_*), Open MPI.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
INSTALL_HINT = ('pip install "tinymlm[distributed]" (mpi4py and the mpich wheel, which puts '
                "mpiexec next to python)")


def _from_environment(names) -> int | None:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def launched_size() -> int:
    """How many processes the MPI launcher started (1 without one)."""
    return _from_environment(SIZE_VARIABLES) or 1


def launched_rank() -> int:
    """This process's rank by the launcher's environment (0 without one)."""
    return _from_environment(RANK_VARIABLES) or 0


def collective_timeout() -> float:
    """Seconds a rank waits in a collective for the others (TINYMLM_COLLECTIVE_TIMEOUT)."""
    value = os.environ.get("TINYMLM_COLLECTIVE_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UsageError(f"TINYMLM_COLLECTIVE_TIMEOUT must be a positive number of seconds, "
                         f"got {value!r}")
    return seconds


def bucket_layout(tensors, limit: int = BUCKET_BYTES) -> list[list[int]]:
    """Indices of ``tensors`` ((nbytes, dtype) each) in buckets of one dtype and at most
    ``limit`` bytes (a bigger tensor is a bucket alone), the largest tensors first, so the
    longest messages are on the wire first. Ties keep the model's order (a stable sort), so
    every rank lays out the same. (Here all buckets start together after the backward; a
    trainer that overlaps them with the backward, as PyTorch's DDP does, fills them in the
    order the gradients become ready instead.)"""
    order = sorted(range(len(tensors)), key=lambda i: -tensors[i][0])
    layout, bucket, size = [], [], 0
    for i in order:
        nbytes, dtype = tensors[i]
        if bucket and (size + nbytes > limit or dtype != tensors[bucket[0]][1]):
            layout.append(bucket)
            bucket, size = [], 0
        bucket.append(i)
        size += nbytes
    return layout + [bucket] if bucket else layout


class World:
    """One process: the trainer's questions to its world, answered locally."""

    size, rank, local_rank = 1, 0, 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder, the logs and the progress bar."""
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        """Every rank takes batch_size / size rows of each global micro-batch."""
        if self.size > batch_size:
            raise UsageError(f"{self.size} processes for a --batch-size of {batch_size}: every "
                             "process needs at least one row; raise --batch-size or lower "
                             "mpiexec -n")
        if batch_size % self.size:
            raise UsageError(f"--batch-size {batch_size} does not split evenly over "
                             f"{self.size} processes; give a multiple of {self.size}")

    def shard(self, batch: dict) -> dict:
        """This rank's rows of a global batch (every value is (B, ...))."""
        if self.size == 1:
            return batch
        rows = len(next(iter(batch.values()))) // self.size
        start = self.rank * rows
        return {k: v[start:start + rows] for k, v in batch.items()}

    def decide(self, choose):
        """``choose()`` run on rank 0, its result (or its UsageError) on every rank: for what
        only one process may decide, such as the run folder's name and whether it is free."""
        return choose()

    def sum_counts(self, counts: np.ndarray) -> np.ndarray:
        """Element-wise sum over the ranks of an int64 array on the host."""
        return counts

    def sum_values(self, values):
        """Element-wise sum over the ranks of a small float array on the model's device."""
        return values

    def sum_gradients(self, params) -> None:
        """Replace every gradient by its sum over the ranks."""


class MpiWorld(World):
    """K processes under ``mpiexec``: MPI's all-reduce over host buffers."""

    def __init__(self, comm, timeout: float):
        from mpi4py import MPI

        self.MPI, self.comm, self.timeout = MPI, comm, timeout
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        # The rank among the processes of this machine: which GPU is this rank's.
        self.local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        self._layout = None  # the buckets of the last sum_gradients, reused while it fits
        self._abort_on_uncaught_exceptions()

    def _abort_on_uncaught_exceptions(self) -> None:
        # A rank that dies of a bug would leave the others in their next collective until the
        # timeout; after its traceback, end them all at once.
        previous = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            sys.stderr.flush()
            self.comm.Abort(1)

        sys.excepthook = hook

    # --- waiting with a deadline ---------------------------------------------------------------

    def wait(self, done, what: str) -> None:
        """Poll ``done()`` until it is true; past the deadline, end the whole job."""
        deadline = time.monotonic() + self.timeout
        while not done():
            if time.monotonic() > deadline:
                self.abort(f"rank {self.rank} of {self.size} waited {self.timeout:g} s for the "
                           f"other processes in {what}: one of them died or hung. Ending the "
                           "job; the last checkpoint is kept, continue with --resume")
            time.sleep(POLL_S)

    def abort(self, message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(3)

    def _sum_host(self, buffers: list, what: str) -> None:
        """Sum contiguous host arrays over the ranks, in place, all in flight at once."""
        MPI = self.MPI
        requests = [self.comm.Iallreduce(MPI.IN_PLACE, b, op=MPI.SUM) for b in buffers]
        self.wait(lambda: MPI.Request.Testall(requests), what)

    # --- the trainer's collectives -------------------------------------------------------------

    def decide(self, choose):
        answer = None
        if self.rank == 0:
            try:
                answer = ("ok", choose())
            except UsageError as e:
                answer = ("error", str(e))
        # Blocking, and only at the start: rank 0 answers whatever happens (a bug in choose
        # aborts the job through the exception hook).
        kind, value = self.comm.bcast(answer, root=0)
        if kind == "error":
            raise UsageError(value)
        return value

    def sum_counts(self, counts: np.ndarray) -> np.ndarray:
        counts = np.array(counts, dtype=np.int64)  # a fresh contiguous buffer
        self._sum_host([counts], "the count of predicted tokens")
        return counts

    def sum_values(self, values):
        values = np.array(values)  # on the CPU the model's device is the host
        self._sum_host([values.reshape(-1)], "the loss")
        return values

    def sum_gradients(self, params) -> None:
        buckets = self.buckets([p for p in params if p.grad is not None])
        flats = [self.flatten(bucket) for bucket in buckets]
        self._sum_flat(flats)
        for bucket, flat in zip(buckets, flats):
            self.unflatten(bucket, flat)

    def _sum_flat(self, flats: list) -> None:
        self._sum_host(flats, "the gradient all-reduce")

    # --- buckets -------------------------------------------------------------------------------

    def buckets(self, params) -> list[list]:
        """``bucket_layout`` of the gradients, kept while their shapes stay the same. The same
        on every rank: every rank runs the same model through the same code, so the same
        parameters have gradients."""
        key = [(p.grad.shape, p.grad.dtype) for p in params]
        if self._layout is None or self._layout[0] != key:
            self._layout = (key, bucket_layout([(p.grad.nbytes, p.grad.dtype) for p in params]))
        return [[params[i] for i in bucket] for bucket in self._layout[1]]

    @staticmethod
    def flatten(bucket):
        xp = backend.get_array_module(bucket[0].grad)
        return xp.concatenate([p.grad.reshape(-1) for p in bucket])  # (Σ sizes,)

    @staticmethod
    def unflatten(bucket, flat) -> None:
        # Views of the summed bucket: the optimizer drops the gradients after its step.
        start = 0
        for p in bucket:
            n = p.grad.size
            p.grad = flat[start:start + n].reshape(p.grad.shape)
            start += n


class NcclWorld(MpiWorld):
    """``--device cuda``: rank r takes GPU ``local_rank``; NCCL sums the gradient buckets on
    the compute stream, device to device. MPI still launches, broadcasts NCCL's unique id and
    sums the token counts (host integers, known before the forward pass).

    Written to the NCCL API CuPy wraps (``cupy.cuda.nccl``) and kept small; this project's CI
    has no GPUs, so a multi-GPU machine is what confirms it."""

    def __init__(self, comm, timeout: float):
        super().__init__(comm, timeout)
        cupy = backend.cupy_module()
        from cupy.cuda import nccl

        cupy.cuda.Device(self.local_rank).use()  # before the model allocates anything
        try:  # the Numba kernels launch on Numba's current device: make it the same one
            from numba import cuda as numba_cuda

            if numba_cuda.is_available():
                numba_cuda.select_device(self.local_rank)
        except ImportError:
            pass
        self.cupy, self.nccl = cupy, nccl
        uid = comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.communicator = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.nccl_types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                           np.dtype(np.float64): nccl.NCCL_FLOAT64,
                           np.dtype(np.float16): nccl.NCCL_FLOAT16}

    def _sum_device(self, flats: list, what: str) -> None:
        stream = self.cupy.cuda.get_current_stream()  # the compute stream: ordered after backward
        for flat in flats:
            self.communicator.allReduce(flat.data.ptr, flat.data.ptr, flat.size,
                                        self.nccl_types[flat.dtype], self.nccl.NCCL_SUM,
                                        stream.ptr)
        finished = stream.record()
        # Polled like MPI's requests, so that a dead peer ends the job instead of hanging it.
        self.wait(lambda: finished.done, what)

    def abort(self, message: str) -> None:
        self.communicator.abort()  # frees this GPU from the unfinished NCCL kernels
        super().abort(message)

    def _sum_flat(self, flats: list) -> None:
        self._sum_device(flats, "the NCCL gradient all-reduce")

    def sum_values(self, values):
        values = self.cupy.array(values).reshape(-1)  # a fresh buffer on this GPU
        self._sum_device([values], "the loss")
        return values


def init(mode: str = "auto", device: str = "cpu") -> World:
    """The world of this process: ``auto`` is the MPI world when launched by ``mpiexec`` with
    more than one process, else one process; ``none`` is always one process."""
    if mode not in ("auto", "none"):
        raise UsageError(f"--distributed must be auto or none, got {mode}")
    if mode == "none" or launched_size() == 1:
        return World()
    timeout = collective_timeout()
    try:
        from mpi4py import MPI
    except ImportError:
        raise UsageError(f"launched by mpiexec with {launched_size()} processes, but mpi4py is "
                         f"not installed: {INSTALL_HINT}") from None
    cls = NcclWorld if backend.normalize_device(device) == "cuda" else MpiWorld
    return cls(MPI.COMM_WORLD, timeout)
