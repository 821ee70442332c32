"""Our linear operators as deepinv physics with an exact SVD (for DDRM, DiffPIR, DPS).

Owns ``decompose`` and ``to_physics``; imports torch, deepinv and ``restore_core.errors`` (never the operator
classes: an operator is read only through its ``A``, so any linear task that has the
structure below decomposes, whatever module defines it).

DDRM (Kawar et al., "Denoising Diffusion Restoration Models", eq. 7-8) works in the
spectral domain of A = U Σ Vᵀ. Two structures cover every linear task we have:

* **Kronecker**: A = A_c ⊗ A_h ⊗ A_w, a channel map, a row map and a column map. Our SR
  and blur operators (separable filter, stride, truncated-renormalised boundary:
  A x = D S (k ⋆₀ x) with D an outer product) are I ⊗ A_h ⊗ A_w; colorize is
  [⅓ ⅓ ⅓] ⊗ I ⊗ I. The SVD is the product of three small SVDs (16 × 64 and 64 × 64
  for sr4 on 64²), exact for our boundary handling — unlike deepinv's own
  ``Downsampling``/``BlurFFT``, which assume circular boundaries and would not reproduce
  our y.
* **Diagonal**: A x = d ⊙ x (inpainting and compressed-sensing masks, denoising), U = V = I.

The factors are *measured* from ``operator.A`` (``_kronecker_factors``): with every axis
but one fixed to a positive random vector and that axis run over the unit vectors, each
output is a rank-one (axis × rest) matrix whose column factor is that axis's column of
its factor matrix. The decomposition is then checked against ``operator.A`` on a random
image (relative error ≤ 1e-5); an operator that fits neither structure, or a non-linear
one (jpeg), raises ``ConfigError`` naming the task, before any sampling starts.

Spectral layout (deepinv's convention): V x and Uᵀ y are tensors of the image's shape
(C, H, W); the singular values ``mask`` sit in the leading (c, h, w) block, zero elsewhere.
"""

from __future__ import annotations

import copy

import torch

from restore_core.errors import ConfigError

REL_TOL = 1e-5


def _apply(x: torch.Tensor, mats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(M_c ⊗ M_h ⊗ M_w) x for x of shape (B, C, H, W)."""
    mc, mh, mw = (m.to(x.dtype) for m in mats)
    x = torch.einsum("ci,bijk->bcjk", mc, x)
    x = torch.einsum("hj,bcjk->bchk", mh, x)
    return torch.einsum("wk,bchk->bchw", mw, x)


def _probe(operator, shape, axis: int, vecs) -> torch.Tensor:
    """A applied to the n images e_k (along ``axis``) ⊗ the fixed vectors (other axes)."""
    n = shape[axis]
    parts = [v[None, :].expand(n, -1) for v in vecs]
    parts[axis] = torch.eye(n, dtype=torch.float64)
    x = torch.einsum("bi,bj,bk->bijk", *parts)
    return operator.A(x)


def _kronecker_factors(operator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Factor matrices (c × C, h × H, w × W) with A ≈ A_c ⊗ A_h ⊗ A_w (checked by the caller)."""
    shape = tuple(operator.image_shape)
    g = torch.Generator().manual_seed(0)
    vecs = [torch.rand(n, generator=g, dtype=torch.float64) + 0.5 for n in shape]
    mats = []
    for axis in range(3):
        y = _probe(operator, shape, axis, vecs)  # (n, c', h', w')
        m = y.movedim(axis + 1, 1).reshape(y.shape[0], y.shape[axis + 1], -1)  # (n, out_axis, rest)
        rows = m.reshape(-1, m.shape[-1])  # every row is a multiple of the common rest factor
        rest = rows[rows.norm(dim=1).argmax()]
        rest = rest / rest.norm()
        mats.append((m @ rest).T)  # column k: the axis factor of image e_k
    x0 = torch.einsum("i,j,k->ijk", *vecs)[None]
    ref, fit = operator.A(x0), _apply(x0, tuple(mats))
    mats[0] = mats[0] * (ref * fit).sum() / (fit * fit).sum()  # the Kronecker product's one free scale
    return tuple(mats)


def _relative_error(operator, fn, g: torch.Generator) -> float:
    x = torch.randn((2,) + tuple(operator.image_shape), generator=g, dtype=torch.float64)
    ref = operator.A(x)
    return float((fn(x) - ref).norm() / ref.norm().clamp_min(1e-30))


def decompose(operator) -> tuple[str, object]:
    """The structure of ``operator``: ``("diagonal", d)`` or ``("kronecker", (A_c, A_h, A_w))``,
    checked against ``operator.A``; ``ConfigError`` naming the task when it has neither
    (module doc). Costs about a second on 64² (a few hundred probe images)."""
    name = getattr(operator, "task", operator.name)
    if not operator.is_linear:
        raise ConfigError(f"sampler ddrm/diffpir/dps needs a linear operator with an SVD; task {name!r} is "
                          "non-linear (use sampler=alg1 with a blind method, or diip / indi)")
    op = copy.deepcopy(operator).cpu()  # probed in float64 on the CPU; the caller's copy is untouched
    g = torch.Generator().manual_seed(1)
    shape = tuple(op.image_shape)
    d = op.A(torch.ones((1,) + shape, dtype=torch.float64))
    if tuple(d.shape[1:]) == shape and _relative_error(op, lambda x: d * x, g) <= REL_TOL:
        return "diagonal", d
    mats = _kronecker_factors(op)
    if _relative_error(op, lambda x: _apply(x, mats), g) > REL_TOL:
        raise ConfigError(f"task {name!r} has no SVD this tool can build (neither a mask nor a "
                          "separable channel/row/column map); use sampler=alg1")
    return "kronecker", mats


def to_physics(structure: tuple[str, object], image_shape, noise_sigma: float, device="cpu"):
    """A deepinv ``DecomposablePhysics`` for a ``decompose`` result on images of
    ``image_shape``, with Gaussian noise of std ``noise_sigma`` (the [0, 1] scale)."""
    from deepinv.physics import DecomposablePhysics, GaussianNoise

    kind, value = structure
    if kind == "diagonal":
        return DecomposablePhysics(mask=value.float().to(device), noise_model=GaussianNoise(noise_sigma),
                                   device=device)
    return _kronecker_physics(value, tuple(image_shape), noise_sigma, device)


def _kronecker_physics(mats, shape, noise_sigma: float, device):
    """DecomposablePhysics from the factor matrices: SVD of each, singular values placed in
    the leading block of the image-shaped spectral tensor."""
    from deepinv.physics import DecomposablePhysics, GaussianNoise

    svds = [torch.linalg.svd(m, full_matrices=True) for m in mats]
    us = tuple(s.U.float().to(device) for s in svds)
    vs = tuple(s.Vh.T.float().to(device) for s in svds)
    sing = [s.S for s in svds]
    out = tuple(m.shape[0] for m in mats)
    mask = torch.zeros((1,) + tuple(shape), dtype=torch.float64)
    mask[0, :out[0], :out[1], :out[2]] = torch.einsum("i,j,k->ijk", *sing)

    def U(z):  # spectral (B, C, H, W) -> measurement (B, c, h, w)
        return _apply(z[:, :out[0], :out[1], :out[2]], us)

    def U_adjoint(y):
        z = _apply(y, tuple(u.T for u in us))
        return torch.nn.functional.pad(z, (0, shape[2] - out[2], 0, shape[1] - out[1], 0, shape[0] - out[0]))

    def V(z):
        return _apply(z, vs)

    def V_adjoint(x):
        return _apply(x, tuple(v.T for v in vs))

    return DecomposablePhysics(U=U, U_adjoint=U_adjoint, V=V, V_adjoint=V_adjoint,
                               mask=mask.float().to(device), noise_model=GaussianNoise(noise_sigma), device=device)
