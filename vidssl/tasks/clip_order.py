"""VCOP's pretext (Xu et al., section 3): shuffle N non-overlapping clips, predict their order.

The target is the index of the permutation among all N! orders, enumerated as
``itertools.permutations(range(N))`` does (lexicographic: for N=3, 0 is (0,1,2), 1 is (0,2,1),
..., 5 is (2,1,0)). A shuffled tuple holds, at position i, the clip whose time order is perm[i].
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import ClipTuple, balanced_draw


def permutations(n: int) -> torch.Tensor:
    """All N! orders of N clips, ``(N!, N)``, in the fixed enumeration."""
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)


def permutation_index(perm) -> int:
    """Index of a permutation in the enumeration (its lexicographic rank)."""
    perm = list(perm)
    n, rank = len(perm), 0
    for i, p in enumerate(perm):
        smaller = sum(1 for q in perm[i + 1 :] if q < p)
        rank += smaller * math.factorial(n - 1 - i)
    return rank


class ClipOrderTask(nn.Module):
    """Clip order prediction. Head as the paper: every clip through the SAME backbone; for each pair
    i<j the concatenated features through a shared FC (2F -> F, 512 at full width) + ReLU; the pair
    vectors concatenated; dropout 0.5; FC -> N! logits."""

    name = "clip_order"

    def __init__(
        self, feature_dim: int, num_clips: int = 3, interval: int = 8, dropout: float = 0.5, head: str = "paper"
    ):
        super().__init__()
        if head not in ("paper", "centered"):
            raise ValueError(f"clip-order head must be 'paper' or 'centered', not {head!r}")
        self.head_kind = head
        if not 2 <= num_clips <= 5:
            raise ValueError(f"clip order takes 2 to 5 clips (VCOP), not {num_clips}")
        if interval < 0:
            raise ValueError(f"the interval between clips must be >= 0, not {interval}")
        self.num_clips, self.interval = num_clips, interval
        self.register_buffer("orders", permutations(num_clips), persistent=False)
        self.pairs = list(itertools.combinations(range(num_clips), 2))
        self.pair_fc = nn.Linear(2 * feature_dim, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(feature_dim * len(self.pairs), len(self.orders))

    def sampler(self, clip_length: int) -> ClipTuple:
        return ClipTuple(self.num_clips, clip_length, self.interval)

    @property
    def chance(self) -> float:
        return 1 / len(self.orders)

    def fixed_targets(self, index: torch.Tensor, seed: int) -> torch.Tensor:
        """Permutation indices for the videos at ``index``: fixed by (seed, video), every order
        equally often (validation: VCOP keeps the checkpoint of lowest validation loss)."""
        return balanced_draw(index, len(self.orders), seed)

    def make_batch(
        self, clips: torch.Tensor, g: torch.Generator, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ordered tuples ``(B, N, C, T, H, W)`` -> (shuffled tuples, permutation indices); the
        permutations are drawn from ``g`` unless ``targets`` gives them."""
        b, n = clips.shape[:2]
        if n != self.num_clips:
            raise ValueError(f"expected tuples of {self.num_clips} clips, got {n}")
        if targets is None:
            targets = torch.randint(len(self.orders), (b,), generator=g)
        targets = targets.to(clips.device)
        perms = self.orders[targets]  # (B, N)
        shuffled = clips[torch.arange(b, device=clips.device)[:, None], perms]
        return shuffled, targets

    def pair_features(self, backbone: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, P, F)`` activations of the pair layer (after ReLU)."""
        b, n = inputs.shape[:2]
        f = backbone(inputs.flatten(0, 1)).view(b, n, -1)  # the N clips as one batch of B*N
        if self.head_kind == "centered":  # remove what the clips share; keep how they differ
            f = f - f.mean(1, keepdim=True)
        pairs = torch.stack([torch.cat([f[:, i], f[:, j]], 1) for i, j in self.pairs], 1)
        return F.relu(self.pair_fc(pairs))

    def forward(self, backbone: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        h = self.pair_features(backbone, inputs)
        self._live = (h.detach() > 0).float().mean().item()  # collapse detector (dead pair units)
        return self.fc(self.dropout(h.flatten(1)))

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), targets)

    @torch.no_grad()
    def metrics(self, out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"acc": (out.argmax(1) == targets).float().mean().item(), "live_units": self._live}

    def step(self, backbone: nn.Module, clips: torch.Tensor, g: torch.Generator, targets=None):
        inputs, targets = self.make_batch(clips, g, targets)
        out = self.forward(backbone, inputs)
        return self.loss(out, targets), self.metrics(out, targets)
