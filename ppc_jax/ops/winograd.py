"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3), in jnp (any dilation, stride 1).

Why: XLA:CPU's convolutions run close to what its Eigen kernels reach, and its oneDNN path is
not wired in, so fewer multiplications is what is left to gain on the CPU. F(2x2, 3x3) computes
each 2x2 block of outputs from a 4x4 block of inputs with 16 products per channel pair instead of
36, so the matrix products that remain carry 1/2.25 of the direct convolution's multiply-adds.
The transforms around them are additions only (and halvings of the kernel), which XLA fuses into
loops. For the 256- to 2048-channel convolutions of ResNet38's stages 3-7 that is faster than
XLA's convolutions, forward and forward + backward; below 256 channels the transforms cost more
than they save (`experiments/winograd.py`, docs/benchmarks.md).

The algorithm (Lavin & Gray 2016), per input channel c and output channel k, 1-D form:

  d = (d0, d1, d2, d3)  four inputs,  g = (g0, g1, g2)  the kernel taps,
  y_p = sum_a d_{p+a} g_a, p = 0, 1          (the direct form: 6 products)
  y = A^T [(G g) * (B^T d)]                  (Winograd: 4 products)

  B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
  G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
  A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

nested in two dimensions (4 x 4 = 16 products for 2 x 2 outputs) and summed over c, which turns the
16 products into 16 matrix products [tiles, C] x [C, K].

Dilation d: output row i = 2d*t + d*p + s (tile t, position p in {0, 1}, phase s in [0, d)) reads
input rows i + d*(a - 1), a = 0..2, i.e. the four rows 2d*t + s + d*u (u = 0..3) of the input
padded by d. With the padded rows reshaped to [t, 2, d] these are (t, 0, s), (t, 1, s), (t+1, 0, s)
and (t+1, 1, s): slices of a reshape, so a dilated convolution costs no gather or transpose.

Exactness: in exact arithmetic the result equals the direct convolution; in float32 it rounds
differently. The transforms' coefficients are 0, +-1, +-1/2 (halving is exact), so the extra
rounding is that of a few more additions per product: on random inputs the largest difference
from XLA's float32 convolution is below 1e-6 of the largest output (`experiments/winograd.py`, every
convolution shape of ResNet38), the order of the difference between two direct convolutions that
sum in another order (torch's oneDNN against XLA); `tests/test_winograd.py` checks it against
the algorithm's first-order rounding-error bound. The gradient is the autodiff of this function:
its products are again matrix products of the same reduced size.
"""

import jax.numpy as jnp
import numpy as np

# 1-D F(2, 3) kernel transform (the input and output transforms are written out below as sums).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _input_transform(z0, z1, z2, z3):
  """B^T z for four equally shaped arrays (z_u: the u-th input row or column of every tile)."""
  return z0 - z2, z1 + z2, z2 - z1, z1 - z3


def _output_transform(m0, m1, m2, m3):
  """A^T m: the two outputs of each tile from its four products."""
  return m0 + m1 + m2, m1 - m2 - m3


def kernel_transform(kernel):
  """G g G^T for every channel pair.

  Args:
    kernel: [3, 3, C, K] (HWIO, flax's layout).

  Returns:
    [4, 4, C, K], in the kernel's dtype.
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"kernel_transform needs a [3, 3, C, K] kernel, got shape {kernel.shape}")
  g = jnp.asarray(_G, kernel.dtype)
  return jnp.einsum("ia,abck,jb->ijck", g, kernel, g)


def conv3x3_winograd(x, kernel, dilation=1, precision=None):
  """A stride-1 3x3 convolution padded by `dilation` on each side (torch's `padding=dilation`).

  Equals `lax.conv_general_dilated(x, kernel, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))` up to float rounding (see the module docstring).

  Args:
    x: [N, H, W, C].
    kernel: [3, 3, C, K] (HWIO), the same dtype as x.
    dilation: the kernel's dilation d >= 1 (also the zero padding on each side).
    precision: passed to the 16 matrix products (None: JAX's default).

  Returns:
    [N, H, W, K], x's dtype.
  """
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
    raise ValueError(f"conv3x3_winograd needs x [N, H, W, C] and kernel [3, 3, C, K]; got "
                     f"{x.shape} and {kernel.shape}")
  if kernel.shape[2] != x.shape[3]:
    raise ValueError(f"kernel input channels {kernel.shape[2]} != x channels {x.shape[3]}")
  d = int(dilation)
  if d < 1:
    raise ValueError(f"dilation must be >= 1, got {dilation}")
  n, h, w, c = x.shape
  k = kernel.shape[3]
  # Tiles of 2d x 2d outputs (2 x 2 outputs in each of d x d phases) per spatial axis.
  th, tw = -(-h // (2 * d)), -(-w // (2 * d))
  # Pad by d on top / left (the convolution's padding) and up to 2d * (tiles + 1) rows / columns:
  # the zeros past the end only feed outputs that are cropped off.
  xp = jnp.pad(x, ((0, 0), (d, 2 * d * th + d - h), (d, 2 * d * tw + d - w), (0, 0)))
  xr = xp.reshape(n, th + 1, 2, d, 2 * d * (tw + 1), c)
  # Input rows 2d*t + s + d*u, u = 0..3, each [n, th, d, W', c].
  rows = (xr[:, :-1, 0], xr[:, :-1, 1], xr[:, 1:, 0], xr[:, 1:, 1])
  v = []  # v[i][j]: [n, th, d, tw, d, c], the (i, j) entry of B^T d B of every tile
  for r in _input_transform(*rows):
    rc = r.reshape(n, th, d, tw + 1, 2, d, c)
    cols = (rc[:, :, :, :-1, 0], rc[:, :, :, :-1, 1], rc[:, :, :, 1:, 0], rc[:, :, :, 1:, 1])
    v.append(_input_transform(*cols))
  u = kernel_transform(kernel)
  # 16 separate products rather than one batched product over a stacked [16, tiles, C] operand:
  # on XLA:CPU the 16-way concatenation that the stack needs is slower than the products it feeds.
  m = [[jnp.einsum("...c,ck->...k", v[i][j], u[i, j], precision=precision) for j in range(4)]
       for i in range(4)]
  # A^T m A: first over the row index i (-> p), then over the column index j (-> q).
  by_row = [_output_transform(*(m[i][j] for i in range(4))) for j in range(4)]  # [j][p]
  y = jnp.stack([jnp.stack(_output_transform(*(by_row[j][p] for j in range(4))), axis=4)
                 for p in range(2)], axis=2)  # [n, th, p, d, tw, q, d, k]
  return y.reshape(n, 2 * d * th, 2 * d * tw, k)[:, :h, :w]
