"""Traces of a network's input Jacobian from Jacobian-vector products.

For a batch ``y`` of shape [N, ...] and a function ``fn`` that maps each point independently,
:func:`quadratic_forms` returns ``fn(y)`` and, for every probe ``v``, the per-point quadratic
form ``vᵀ J_n v`` (J_n the Jacobian of point n's output with respect to its input). Summing the
forms over the D basis probes gives the exact trace; averaging them over random Rademacher or
Gaussian probes gives Hutchinson's unbiased estimate.

Two differentiation modes exist. Reverse mode runs one forward pass and then one
vector-Jacobian product per probe (vectorised over a chunk of probes with ``torch.vmap``);
forward mode runs Jacobian-vector products (``torch.func.jvp``). On CPUs reverse mode is the
faster of the two, and some layers (e.g. CPU attention kernels) have no forward-mode rule, so
"auto" uses reverse mode and falls back to forward mode only if reverse mode fails. Where a
model cannot be vectorised with ``torch.vmap``, probes are looped over instead.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor

Mode = Literal["auto", "reverse", "forward"]
MODES: tuple[str, ...] = ("auto", "reverse", "forward")

__all__ = ["Mode", "MODES", "basis_probes", "indexed_probes", "mix64", "quadratic_forms"]


def basis_probes(batch_shape: torch.Size, chunk: int, *, dtype, device) -> Iterator[Tensor]:
    """Yield the D standard basis probes for every point, ``chunk`` probes at a time.

    Args:
        batch_shape: shape of the batch, [N, ...]; D is the product of the trailing sizes.
        chunk: probes per yielded tensor.

    Yields:
        Tensors of shape [k, N, ...] with k ≤ chunk; probe j of the whole sequence is e_j for
        every point.
    """
    n, dims = batch_shape[0], batch_shape[1:]
    total = dims.numel()
    for start in range(0, total, chunk):
        k = min(chunk, total - start)
        probes = torch.zeros(k, n, total, dtype=dtype, device=device)
        index = torch.arange(k, device=device)
        probes[index, :, start + index] = 1
        yield probes.reshape(k, n, *dims)


#: Random bits taken from each 64-bit hash (the low 62; the top bits carry the sign).
_BITS_PER_WORD = 62
# Multipliers of the splitmix64 finaliser and a Weyl increment, as signed 64-bit integers.
_MIX_1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX_2 = 0x94D049BB133111EB - 2**64
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64


def _shift_right(values: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 values (torch's ``>>`` is arithmetic)."""
    return (values >> bits) & ((1 << (64 - bits)) - 1)


def mix64(values: Tensor) -> Tensor:
    """The splitmix64 finaliser, element-wise on an int64 tensor (arithmetic wraps modulo 2^64).

    A bijection of 64-bit integers whose outputs look independent for consecutive inputs: the
    counter-based random numbers behind :func:`indexed_probes`.
    """
    values = values ^ _shift_right(values, 30)
    values = values * _MIX_1
    values = values ^ _shift_right(values, 27)
    values = values * _MIX_2
    return values ^ _shift_right(values, 31)


def _point_keys(seed: int, indices: Tensor) -> Tensor:
    """One 64-bit key per point [N] from the seed and the points' global indices."""
    seed_key = mix64(torch.tensor([seed % 2**64 - (2**64 if seed % 2**64 >= 2**63 else 0)], dtype=torch.int64))
    return mix64(seed_key.to(indices.device) + indices.to(torch.int64) * _GOLDEN)


def _hashes(keys: Tensor, first_probe: int, k: int, width: int) -> Tensor:
    """Hashes [k, N, width]: entry (j, n, w) depends only on keys[n], probe first_probe + j and w."""
    counters = torch.arange(first_probe * width, (first_probe + k) * width, device=keys.device, dtype=torch.int64)
    counters = counters.reshape(k, 1, width) + 1
    return mix64(keys.reshape(1, -1, 1) + counters * _GOLDEN)


def _rademacher_bits(hashes: Tensor, per_probe: int) -> Tensor:
    """±1 entries from 62 bits of each hash: [k, N, words] -> [k, N, per_probe] int64 in {0, 1}."""
    shifts = torch.arange(_BITS_PER_WORD, device=hashes.device)
    bits = (hashes[..., None] >> shifts).bitwise_and_(1)
    return bits.reshape(*hashes.shape[:2], -1)[..., :per_probe]


def _standard_normal(hashes: Tensor) -> Tensor:
    """Standard normal draws (float64) from pairs of uniforms made from each hash (Box-Muller)."""
    scale = 2.0**-53
    u1 = (_shift_right(hashes, 11).to(torch.float64) + 0.5) * scale
    u2 = (_shift_right(mix64(hashes ^ _GOLDEN), 11).to(torch.float64) + 0.5) * scale
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def indexed_probes(
    batch_shape: torch.Size,
    n_probes: int,
    chunk: int,
    *,
    distribution: Literal["rademacher", "gaussian"],
    seed: int,
    indices: Tensor,
    dtype,
    device,
) -> Iterator[Tensor]:
    """Yield ``n_probes`` random probes per point, ``chunk`` at a time, as [k, N, ...] tensors.

    Probe j of point n is a fixed function of ``(seed, indices[n], j)`` (counter-based hashing,
    :func:`mix64`), so a point's probes do not depend on the batch it is in, on the batch size,
    on the chunking of probes, on the device, or on any global random state. Rademacher probes
    have independent ±1 entries, Gaussian probes standard normal entries; both satisfy
    E[v vᵀ] = I, so E[vᵀ J v] = tr J.

    Args:
        batch_shape: [N, ...]; D is the product of the trailing sizes.
        indices: [N] int64 global indices of the points.
    """
    n, dims = batch_shape[0], batch_shape[1:]
    per_probe = dims.numel()
    if indices.shape != (n,):
        raise ValueError(f"indices must have shape [N] = [{n}]; got {tuple(indices.shape)}.")
    keys = _point_keys(seed, indices.to(device))
    for start in range(0, n_probes, chunk):
        k = min(chunk, n_probes - start)
        if distribution == "rademacher":
            words = -(-per_probe // _BITS_PER_WORD)
            values = _rademacher_bits(_hashes(keys, start, k, words), per_probe).to(dtype).mul_(2).sub_(1)
        else:
            values = _standard_normal(_hashes(keys, start, k, per_probe)).to(dtype)
        yield values.reshape(k, n, *dims)


def _contract(probes: Tensor, products: Tensor) -> Tensor:
    """Per-probe, per-point dot products of two [k, N, ...] tensors -> [k, N]."""
    return torch.linalg.vecdot(probes.flatten(2), products.flatten(2))


class _RejectedOutput(Exception):
    """Carries an error raised by ``check_output``: bad input, never a reason to fall back."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


# Errors that mean "this differentiation strategy is unsupported here", as opposed to bad input.
_UNSUPPORTED = (RuntimeError, NotImplementedError, TypeError)


def _pull_back(vjp_fn: Callable, chunk: Tensor, strategy: str) -> Tensor:
    """Vector-Jacobian products [k, N, ...] of a probe chunk [k, N, ...] by one strategy."""
    if strategy == "vmap":
        return torch.vmap(vjp_fn)(chunk)[0]
    if strategy == "vmap_with_grad":
        with torch.enable_grad():
            return torch.vmap(vjp_fn)(chunk)[0].detach()
    return torch.stack([vjp_fn(probe)[0] for probe in chunk])


#: Fragments of torch's errors when a model takes a tensor that autograd follows out of torch
#: (``.numpy()``, a raw data pointer under ``torch.func``).
_LEFT_TORCH_ERRORS = ("numpy()", "to numpy", "data pointer", "doesn't have storage")

LEFT_TORCH_MESSAGE = (
    "The model's forward pass takes its input out of torch (it calls .numpy() on it, or on "
    "something computed from it, or hands it to code autograd cannot follow), so its Jacobian, "
    "hence the LID, cannot be computed. Keep the forward pass in differentiable torch "
    "operations (e.g. torch.tanh, not numpy.tanh; no .numpy(), .detach(), .tolist() or .item() "
    "on the input)."
)


def _left_torch(error: BaseException) -> ValueError | None:
    """The error to raise instead of ``error`` if it says the model left torch, else None."""
    if isinstance(error, RuntimeError) and any(fragment in str(error) for fragment in _LEFT_TORCH_ERRORS):
        return ValueError(f"{LEFT_TORCH_MESSAGE} (torch: {' '.join(str(error).split())})")
    return None


def _guarded(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` whose own failures are marked as bad input: no other mode could help."""

    def call(inputs: Tensor) -> Tensor:
        try:
            return fn(inputs)
        except Exception as error:
            if (replacement := _left_torch(error)) is not None:
                raise _RejectedOutput(replacement) from None
            error.add_note(
                f"The model failed on a batch of shape {tuple(inputs.shape)}; check that x has the "
                "shape and dtype the model expects and that it accepts model(y, t) with t of shape [N]."
            )
            raise _RejectedOutput(error) from None

    return call


INDEPENDENT_OUTPUT_MESSAGE = (
    "The model's output does not depend on its input: its forward pass runs under torch.no_grad() "
    "(or torch.inference_mode()), detaches its input or takes it out of torch (.numpy(), .tolist()), "
    "so the Jacobian is lost and the trace, hence the LID, cannot be computed (it would come out "
    "as the ambient dimension). Remove the no_grad/detach from the model's forward and keep it in "
    "differentiable torch operations; flipd switches gradients off where it can itself."
)


def _independent_output() -> ValueError:
    return ValueError(INDEPENDENT_OUTPUT_MESSAGE)


def _check_depends_on_input(fn: Callable[[Tensor], Tensor], y: Tensor, products: Tensor) -> None:
    """Raise if ``fn``'s output does not depend on its input, judged when the first products of
    a call are all exactly zero (they never are for a real network, so the common path pays one
    count of non-zeros): then one plain autograd pass tells a lost graph from a zero Jacobian."""
    if torch.count_nonzero(products) > 0:
        return
    with torch.enable_grad():
        leaf = y.detach().requires_grad_()
        output = fn(leaf)
        if not output.requires_grad:
            raise _independent_output()
        (gradient,) = torch.autograd.grad(output.sum(), leaf, allow_unused=True)
    if gradient is None:
        raise _independent_output()


def _reverse_one_at_a_time(fn: Callable[[Tensor], Tensor], y: Tensor, probes: Iterable[Tensor], check):
    # Plain autograd for probes that come one at a time outside differentiable mode: with a
    # single probe there is nothing to vectorise, and torch.autograd.grad has less overhead per
    # product than torch.func.vjp (compare the "autograd floor" of flipd.bench.speed).
    with torch.enable_grad():
        leaf = y.detach().requires_grad_()
        output = _guarded(fn)(leaf)
    check(output)
    if not output.requires_grad:  # computed under no_grad, or from a detached input
        raise _independent_output()
    forms = []
    chunk = next(iter_probes := iter(probes), None)
    while chunk is not None:
        following = next(iter_probes, None)
        # Keep the graph only while probes remain: a freed graph lets the backward pass reuse
        # the memory of the activations it no longer needs.
        (product,) = torch.autograd.grad(
            output, leaf, chunk[0], retain_graph=following is not None, allow_unused=True
        )
        if product is None:  # the output does not depend on the input (e.g. it detaches it)
            raise _independent_output()
        forms.append(_contract(chunk, product[None]))
        chunk = following
    return output.detach(), forms


def _reverse(fn: Callable[[Tensor], Tensor], y: Tensor, probes: Iterable[Tensor], check):
    probes = iter(probes)
    first = next(probes, None)
    probes = itertools.chain([] if first is None else [first], probes)
    if first is not None and len(first) == 1 and not torch.is_grad_enabled():
        return _reverse_one_at_a_time(fn, y, probes, check)
    # One forward pass, then one vector-Jacobian product per probe; only input gradients are
    # formed. Under torch.no_grad the products build no graph.
    output, vjp_fn = torch.func.vjp(_guarded(fn), y)
    check(output)
    # Strategies for a chunk of probes, tried in order; a failed one is not tried again. Some
    # backward kernels (e.g. GroupNorm's, in every diffusers UNet) have no batching rule when
    # autograd is off, while their differentiable formulas, used when it is on, vmap fine.
    # Layers without any batching rule fall back to a loop over the probes.
    strategies = ["vmap", "loop"] if torch.is_grad_enabled() else ["vmap", "vmap_with_grad", "loop"]
    forms = []
    for chunk in probes:
        if len(chunk) == 1:  # a single probe needs no vectorisation
            products = vjp_fn(chunk[0])[0][None]
        else:
            while True:
                try:
                    products = _pull_back(vjp_fn, chunk, strategies[0])
                    break
                except _UNSUPPORTED:
                    if len(strategies) == 1:
                        raise
                    strategies.pop(0)
        if not forms:
            _check_depends_on_input(fn, y, products)
        forms.append(_contract(chunk, products))
    return output, forms


def _forward(fn: Callable[[Tensor], Tensor], y: Tensor, probes: Iterable[Tensor], check):
    output = _guarded(fn)(y)
    check(output)

    def tangent(probe: Tensor) -> Tensor:
        try:
            return torch.func.jvp(fn, (y,), (probe,))[1]
        except RuntimeError as error:
            if (replacement := _left_torch(error)) is not None:
                raise _RejectedOutput(replacement) from None
            raise

    forms, vectorise = [], True
    for chunk in probes:
        if len(chunk) == 1:
            products = tangent(chunk[0])[None]
        else:
            if vectorise:
                try:
                    products = torch.vmap(tangent)(chunk)
                except _UNSUPPORTED:
                    vectorise = False
            if not vectorise:
                products = torch.stack([tangent(probe) for probe in chunk])
        if not forms:
            _check_depends_on_input(fn, y, products)
        forms.append(_contract(chunk, products))
    return output, forms


def quadratic_forms(
    fn: Callable[[Tensor], Tensor],
    y: Tensor,
    probes: Callable[[], Iterable[Tensor]],
    *,
    mode: Mode = "auto",
    check_output: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, Tensor, str]:
    """Evaluate ``fn(y)`` and the quadratic forms ``vᵀ J v`` of its Jacobian for every probe.

    Args:
        fn: maps a batch [N, ...] to outputs of the same shape, each point independently.
        y: input batch [N, ...].
        probes: a callable returning a fresh iterable of probe chunks [k, N, ...] (called again
            if a mode fails and the next one is tried).
        mode: "reverse", "forward", or "auto" (reverse, then forward on failure).
        check_output: called on fn(y) before any probe is used; errors it raises (e.g. a
            ``ValueError`` for a wrongly shaped output) propagate without a fallback.

    Returns:
        ``(output, forms, mode_used)``: ``output`` is fn(y) [N, ...]; ``forms`` is [K, N]
        with one row per probe, K the total number of probes.

    Gradients flow through the result when autograd is enabled and ``y`` requires grad.

    Raises:
        ValueError: ``fn``'s output does not depend on its input (a forward pass under
            ``torch.no_grad()`` or one that detaches its input), which would make every form 0.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown differentiation mode {mode!r}; use one of {MODES}.")
    order = {"auto": ("reverse", "forward"), "reverse": ("reverse",), "forward": ("forward",)}
    def check(output: Tensor) -> None:
        if check_output is not None:
            try:
                check_output(output)
            except Exception as error:
                raise _RejectedOutput(error) from None

    first_error: Exception | None = None
    for attempt in order[mode]:
        try:
            runner = _reverse if attempt == "reverse" else _forward
            output, forms = runner(fn, y, probes(), check)
            return output, torch.cat(forms, dim=0), attempt
        except _RejectedOutput as rejected:
            raise rejected.error from None
        except _UNSUPPORTED as error:
            if first_error is None:
                first_error = error
            if attempt != order[mode][-1]:
                warnings.warn(
                    f"{attempt}-mode differentiation failed ({type(error).__name__}: {error}); "
                    "falling back to forward mode.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    assert first_error is not None
    raise first_error
