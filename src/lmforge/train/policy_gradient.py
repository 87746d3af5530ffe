"""The arithmetic of RLHF's policy updates: PPO (clipped surrogate, GAE, value clipping) and the
critic-free GRPO and RLOO, on a batch of rollouts. No sampling and no bookkeeping here
(rlhf.py does those), so each piece can be checked against a hand computation.

Tensors over a batch of B responses are (B, R): response token k of row b at [b, k], right-
padded, with `mask` 1 on real tokens.

- PPO (Schulman et al. 2017), as InstructGPT (Ouyang et al. 2022) used it: the reward model's
  score arrives at a response's last token, every token pays -beta * (log pi - log pi_ref);
  advantages by GAE (Schulman et al. 2016) from a value head, whitened; the clipped ratio
  objective for the policy and a clipped squared error for the values.
- GRPO (Shao et al. 2024, DeepSeekMath): G answers per prompt; an answer's advantage is its
  reward standardized within its group; the KL to the reference is a loss term (the k3
  estimator, exp(r) - r - 1 with r = log pi_ref - log pi), not part of the reward.
- RLOO (Ahmadian et al. 2024): the baseline of each answer is the mean reward of the other
  G - 1 answers to its prompt; the KL penalty is in the (sequence-level) reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lmforge.model.transformer import Transformer


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens (padding stays 0)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns (advantages + values), both (B, R).

    delta_t = r_t + gamma V_{t+1} - V_t (V past a response's end is 0), and
    A_t = delta_t + gamma lam A_{t+1}, run backwards from each response's last token."""
    advantages = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        after = mask[:, t + 1] if t + 1 < width else torch.zeros_like(carry)
        next_value = values[:, t + 1] * after if t + 1 < width else torch.zeros_like(carry)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        carry = delta + gamma * lam * carry * after
        advantages[:, t] = carry
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def token_rewards(final: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
                  ) -> torch.Tensor:
    """PPO's per-token rewards: -beta * kl_t everywhere, plus the sequence's reward (its
    normalized score and penalties) at its last real token."""
    rewards = -beta * kl * mask
    last = mask.sum(dim=1).long() - 1
    rewards[torch.arange(len(final)), last] += final
    return rewards


def group_advantages(rewards: torch.Tensor, group: int, algo: str, eps: float = 1e-4
                     ) -> torch.Tensor:
    """(B,) sequence advantages, rows grouped `group` at a time (the answers to one prompt):
    GRPO standardizes within the group, RLOO subtracts the mean of the others."""
    r = rewards.view(-1, group)
    if algo == "grpo":
        std = r.std(dim=1, keepdim=True) if group > 1 else torch.ones_like(r[:, :1])
        return ((r - r.mean(dim=1, keepdim=True)) / (std + eps)).reshape(-1)
    if algo == "rloo":
        others = (r.sum(dim=1, keepdim=True) - r) / max(1, group - 1)
        return (r - others).reshape(-1)
    raise ValueError(f"no group baseline for {algo!r}")


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's policy loss, mean over real tokens, and the share of tokens whose ratio was
    clipped: max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))."""
    ratio = torch.exp(logp - old_logp)
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    clipped = ((ratio - 1).abs() > clip).float()
    return masked_mean(losses, mask), masked_mean(clipped, mask)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 max((V - G)^2, (V_clipped - G)^2), V_clipped within `clip` of the rollout's value."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    losses = 0.5 * torch.max((values - returns) ** 2, (clipped_values - returns) ** 2)
    return masked_mean(losses, mask), masked_mean(((values - old_values).abs() > clip).float(),
                                                  mask)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token: unbiased and never negative."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def adapt_kl_coef(beta: float, kl: float, target: float, samples: int, horizon: int) -> float:
    """Ziegler et al. (2019)'s adaptive KL controller: beta grows when the measured KL is above
    target and shrinks below it, by at most 20% of samples / horizon per update."""
    error = float(np.clip(kl / target - 1, -0.2, 0.2))
    return beta * (1 + error * samples / horizon)


@dataclass
class RunningMoments:
    """Mean and variance of every score seen so far (Chan et al.'s parallel update)."""
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean = x.numel(), float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / max(1, self.count - 1)) if self.count > 1 else 1.0


# ---- the model's side ---------------------------------------------------------------------


def response_stats(model: Transformer, ids: torch.Tensor, starts: torch.Tensor, width: int,
                   temperature: float, value_head: torch.nn.Module | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens, the policy's entropy there, and the value head's
    estimates, each (B, width). Response token k of row b is ids[b, starts[b] + k], chosen
    from the state whose last hidden state is at starts[b] + k - 1: only those positions go
    through the output head. Logits are divided by the sampling temperature, so log-probs are
    those of the distribution the answers were drawn from."""
    hidden = model.hidden(ids)
    last = ids.shape[1] - 2
    at = (starts[:, None] - 1 + torch.arange(width, device=ids.device)).clamp(max=last)
    states = hidden.gather(1, at[..., None].expand(-1, -1, hidden.shape[-1]))
    logprobs = (model.lm_head(states).float() / temperature).log_softmax(dim=-1)
    logp = logprobs.gather(-1, ids.gather(1, at + 1)[..., None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(dim=-1)
    values = value_head(states.float()).squeeze(-1) if value_head is not None else None
    return logp, entropy, values


@dataclass
class Rollouts:
    """A batch of sampled answers and what was measured on them at sampling time."""
    ids: torch.Tensor  # (B, L) prompt + answer, right-padded
    starts: torch.Tensor  # (B,) where each answer begins (the prompt's length)
    mask: torch.Tensor  # (B, R) 1 on answer tokens
    logp: torch.Tensor  # (B, R) the sampling policy's log-probs
    ref_logp: torch.Tensor  # (B, R) the frozen reference's
    values: torch.Tensor | None  # (B, R) the value head's (PPO)
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor | None  # (B, R) value targets (PPO)


def update(policy: Transformer, value_head: torch.nn.Module | None, ro: Rollouts,
           step_optimizers: Callable[[torch.Tensor], float], *, epochs: int, minibatches: int,
           clip: float, value_clip: float, vf_coef: float, kl_loss_coef: float,
           temperature: float, rng: np.random.Generator) -> dict[str, float]:
    """The whole policy step: `epochs` passes over the rollouts in `minibatches` shuffled
    parts, one optimizer step each. PPO passes its value head (clipped value loss beside the
    clipped surrogate); GRPO passes kl_loss_coef (its KL term); RLOO neither."""
    sums: dict[str, float] = {}
    for _ in range(epochs):
        for part in np.array_split(rng.permutation(len(ro.ids)), minibatches):
            idx = torch.as_tensor(part, device=ro.ids.device)
            mask = ro.mask[idx]
            logp, entropy, values = response_stats(policy, ro.ids[idx], ro.starts[idx],
                                                   mask.shape[1], temperature, value_head)
            pg_loss, clip_frac = clipped_surrogate(logp, ro.logp[idx], ro.advantages[idx],
                                                   mask, clip)
            loss, seen = pg_loss, {"policy_loss": pg_loss.item(), "clip_fraction": clip_frac}
            if value_head is not None:
                vf_loss, vf_clip = clipped_value_loss(values, ro.values[idx], ro.returns[idx],
                                                      mask, value_clip)
                loss = loss + vf_coef * vf_loss
                seen.update(value_loss=vf_loss.item(), value_clip_fraction=vf_clip)
            if kl_loss_coef:
                loss = loss + kl_loss_coef * masked_mean(k3_kl(logp, ro.ref_logp[idx]), mask)
            seen.update(loss=loss.item(), entropy=masked_mean(entropy.detach(), mask),
                        approx_kl=masked_mean(0.5 * (logp.detach() - ro.logp[idx]) ** 2, mask),
                        grad_norm=step_optimizers(loss))
            for name, value in seen.items():
                sums[name] = sums.get(name, 0.0) + float(value)
    return {name: total / (epochs * minibatches) for name, total in sums.items()}
